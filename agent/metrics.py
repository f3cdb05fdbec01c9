"""The agent's Prometheus metrics, served at ``/metrics``: one registry per runtime, never the global one
(a fleet simulation or a test runs several agents in one process).

Counters count what the work loop and the API did; the gauges read the runtime when scraped; two
histograms time the inventory API's requests (by route template and status) and the scoring runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from forecasting.common.version import shelfcast_version

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORING_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)


class AgentMetrics:
    """The registry of one agent, its counters and histograms, and the gauges read from ``gauges``.

    ``gauges`` maps each gauge name (after ``shelfcast_agent_``) to a function that reads its value when
    scraped; see :data:`GAUGES` for the names and their help.
    """

    def __init__(self, store_id: str, gauges: dict[str, Callable[[], float]]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry

        def counter(name: str, help_text: str) -> Counter:
            return Counter(f"shelfcast_agent_{name}", help_text, registry=registry)

        info = Gauge(
            "shelfcast_agent_info", "Agent build and identity.", ["version", "store_id"], registry=registry
        )
        info.labels(shelfcast_version(), store_id).set(1)
        self.requests = Counter(
            "shelfcast_agent_http_requests_total",
            "Inventory API requests by route.",
            ["route"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "shelfcast_agent_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and status.",
            ["route", "status"],
            registry=registry,
            buckets=HTTP_BUCKETS,
        )
        self.scoring_duration = Histogram(
            "shelfcast_agent_scoring_duration_seconds",
            "Time to score the store (served and shadow version), by trigger and outcome.",
            ["trigger", "outcome"],
            registry=registry,
            buckets=SCORING_BUCKETS,
        )
        self.scoring_runs = counter("scoring_runs_total", "Completed scoring runs.")
        self.scoring_failures = counter("scoring_failures_total", "Failed scoring runs.")
        self.shadow_runs = counter(
            "shadow_scoring_runs_total", "Completed scoring runs of the shadow version."
        )
        self.shadow_failures = counter(
            "shadow_scoring_failures_total", "Failed scoring runs of the shadow version."
        )
        self.sync_failures = counter("sync_failures_total", "Failed lifecycle runs (unreachable or refused).")
        self.activations = counter("activations_total", "Model versions activated.")
        self.rollbacks = counter("rollbacks_total", "Rollbacks (failed updates and operator rollbacks).")
        self.reports_queued = counter("reports_queued_total", "Reports queued in the outbox.")
        self.reports_delivered = counter("reports_delivered_total", "Outbox reports delivered.")
        self.rows_ingested = counter("sales_rows_ingested_total", "Sales rows accepted.")
        self.rows_quarantined = counter("sales_rows_quarantined_total", "Sales rows quarantined.")
        for name, help_text in GAUGES.items():
            Gauge(f"shelfcast_agent_{name}", help_text, registry=registry).set_function(gauges[name])

    def hit(self, route: str) -> None:
        """Count one inventory API request of ``route``."""
        self.requests.labels(route).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Times every HTTP request into ``shelfcast_agent_http_request_duration_seconds``."""
        histogram = self.request_duration

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            kind: str = scope["type"]  # compared as text: importing litestar here would slow the CLI
            if kind != "http":
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
            finally:  # an exception the app did not answer is a 500
                route = scope.get("path_template") or "unmatched"
                histogram.labels(route, str(status[0])).observe(time.perf_counter() - started)

        return measured


# The gauges read when scraped (the name after ``shelfcast_agent_``, and its help).
GAUGES = {
    "active_version": "Active model version (0: none).",
    "served_version": "Model version of the served forecasts (0: none).",
    "last_scored_timestamp_seconds": "When the served forecasts were scored.",
    "last_sync_timestamp_seconds": "Last successful assignment poll.",
    "outbox_reports": "Reports waiting in the outbox.",
    "ready": "1 when a model is active and scored.",
}
