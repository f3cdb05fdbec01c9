"""The server's CPU time per request of each hot route on its own: polls, heartbeats, reports, resends.

Each route is offered alone, open loop, at a fixed rate from enrolled stores taken in turn, and the server
process's CPU time over the phase (``/proc``) is divided by the requests it answered. The stores first poll,
beat and report once each (not measured), so the phases see what a running fleet sends: polls carrying the
ETag they hold (``304``), heartbeats that change nothing but their time (each with a fresh
``Idempotency-Key``), new accuracy and drift reports, and resends of each store's last accuracy report
(answered ``duplicate``). How many requests a write batch holds depends on the rate, so the figures hold
for the rate they were measured at.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from benchmarks.fleet_traffic import MODEL, accuracy_report, drift_report

ROUTES = ("poll", "heartbeat", "accuracy", "drift", "resend")


@dataclass
class RouteTraffic:
    """What the stores hold between phases: ETags, heartbeat and report counters, last accuracy reports."""

    tokens: dict[str, str]
    etags: dict[str, str] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)
    last_accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)

    def request(self, route: str, store: str) -> tuple[str, str, dict[str, Any]]:
        """Method, path and httpx arguments of the store's next request of ``route``."""
        headers = {"Authorization": f"Bearer {self.tokens[store]}"}
        self.sent[f"{route} {store}"] += 1
        n = self.sent[f"{route} {store}"]
        if route == "poll":
            if store in self.etags:
                headers["If-None-Match"] = self.etags[store]
            return "GET", f"/v1/stores/{store}/assignment", {"headers": headers}
        if route == "heartbeat":
            beat = {"store_id": store, "state": "serving", "model_name": MODEL, "active_version": 1,
                    "sent_at": datetime.now(UTC).isoformat()}  # fmt: skip
            headers |= {"Idempotency-Key": f"{store}-hb-{n}", "Content-Type": "application/json"}
            return "POST", "/v1/heartbeats", {"content": json.dumps(beat), "headers": headers}
        if route == "accuracy":
            self.last_accuracy[store] = accuracy_report(store, f"{store}-acc-{n}", 6)
            return "POST", "/v1/accuracy", {"json": self.last_accuracy[store], "headers": headers}
        if route == "drift":
            return (
                "POST",
                "/v1/drift",
                {"json": drift_report(store, f"{store}-drift-{n}"), "headers": headers},
            )
        return "POST", "/v1/accuracy", {"json": self.last_accuracy[store], "headers": headers}


@dataclass(frozen=True)
class RouteCost:
    route: str
    requests: int
    cpu_ms: float | None  # server CPU per request (None off Linux)
    errors: list[str]


async def offer_route(
    url: str,
    traffic: RouteTraffic,
    route: str,
    rate: float,
    requests: int,
    server_cpu: Callable[[], float | None],
) -> RouteCost:
    """``requests`` of ``route`` at ``rate`` a second (open loop, 64 in flight at most); the server's CPU per
    request (``server_cpu`` gives its CPU seconds so far)."""
    stores = sorted(traffic.tokens)
    errors: list[str] = []
    gate = asyncio.Semaphore(64)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    expected = {"poll": (200, 304)}.get(route, (202,))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(store: str) -> None:
            method, path, kwargs = traffic.request(route, store)
            async with gate:
                response = await client.request(method, path, **kwargs)
            if response.status_code not in expected:
                errors.append(f"{route} {store}: {response.status_code} {response.text[:200]}")
            elif route == "poll":
                traffic.etags[store] = response.headers.get("etag", "")
            elif route == "resend" and not response.json().get("duplicate"):
                errors.append(f"resend {store}: not answered duplicate")

        before = server_cpu()
        began = time.perf_counter()
        tasks = []
        for i in range(requests):
            await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(stores[i % len(stores)])))
        await asyncio.gather(*tasks)
        after = server_cpu()
    cpu = None if before is None or after is None else 1000 * (after - before) / requests
    return RouteCost(route=route, requests=requests, cpu_ms=cpu, errors=errors)


def route_costs(
    url: str, tokens: dict[str, str], rate: float, requests: int, server_cpu: Callable[[], float | None]
) -> list[RouteCost]:
    """Every route's cost in turn, after one poll, heartbeat and accuracy report of each store."""
    traffic = RouteTraffic(tokens)

    async def run() -> list[RouteCost]:
        for route in ("poll", "heartbeat", "accuracy"):
            await offer_route(url, traffic, route, rate, len(tokens), server_cpu)
        return [await offer_route(url, traffic, route, rate, requests, server_cpu) for route in ROUTES]

    return asyncio.run(run())
