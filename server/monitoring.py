"""Prometheus metrics: request duration histograms (ASGI middleware) and fleet gauges read at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.errors import InvalidInputError, ServerError

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def status_of(exc: Exception) -> int:
    """The status the app's exception handlers answer ``exc`` with (``server.app``)."""
    if isinstance(exc, ValidationException):
        return InvalidInputError.status_code
    if isinstance(exc, ServerError | HTTPException):
        return exc.status_code
    return 500


class FleetCollector(Collector):
    """Fleet gauges (stores, stores by active version, stale agents), computed when scraped."""

    def __init__(self, gauges: Callable[[], dict[str, Any]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        data = self._gauges()
        stores = GaugeMetricFamily("shelfcast_stores", "Enrolled (not revoked) stores")
        stores.add_metric([], data["stores"])
        yield stores
        stale = GaugeMetricFamily("shelfcast_stale_agents", "Stores whose agent has not reported recently")
        stale.add_metric([], data["stale"])
        yield stale
        by_version = GaugeMetricFamily(
            "shelfcast_stores_by_version",
            "Stores by the model version their agent reports active",
            labels=["model_name", "version"],
        )
        for row in data["by_version"]:
            by_version.add_metric([row["model_name"], row["version"]], row["n"])
        yield by_version
        writes = data.get("writes")
        if writes is not None:
            batches = CounterMetricFamily("shelfcast_write_batches", "Group-writer transactions committed")
            batches.add_metric([], writes["batches"])
            yield batches
            jobs = CounterMetricFamily("shelfcast_write_requests", "Requests answered by the group writer")
            jobs.add_metric([], writes["jobs"])
            yield jobs
            queued = GaugeMetricFamily("shelfcast_write_queue", "Requests waiting for the group writer")
            queued.add_metric([], writes["queued"])
            yield queued


class Metrics:
    """One registry per app (nothing global), the request histogram and the fleet collector."""

    def __init__(self, gauges: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "shelfcast_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=BUCKETS,
        )
        self.registry.register(FleetCollector(gauges))

    def middleware(self, app: ASGIApp) -> ASGIApp:
        histogram = self.requests

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = [500]

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            except Exception as exc:
                # A refusal raised by a middleware (401, 403, 413) is answered further out, after this
                # one: count the status its handler sends, not a crash.
                status[0] = status_of(exc)
                raise
            finally:
                route = scope.get("path_template") or "unmatched"
                histogram.labels(scope.get("method", ""), route, str(status[0])).observe(
                    time.perf_counter() - started
                )

        return measured

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
