"""The traffic of a whole fleet at the agent's default intervals, offered open-loop from a few processes.

A ``FleetPlan`` says how many stores, how often each polls its assignment and posts a heartbeat (the
agent's defaults: ``poll_interval_seconds`` and ``heartbeat_interval_seconds``, 60 s each, in
``agent/config.py`` and ``configs/agent.toml``), and over how long the nightly scoring's burst spreads:
every store posts one accuracy and one drift report at a random moment of ``burst_seconds`` (15 minutes in
a chain, divided by ``time_scale`` so that a run fits minutes), and a share of them (``resend_share``) sends
its accuracy report a second time with the same report id, as an agent does when the answer was lost.

The stores are enrolled first, through the real API (``POST /v1/stores``, ``POST /v1/enroll``), many at a
time; then the clock starts. The stores are split between ``processes`` generator processes, each one
``httpx.AsyncClient`` over many connections sending every request at its scheduled moment whether or not
earlier ones were answered (open loop: a slow server does not slow the offer down). Polls carry the ETag
the store holds (``If-None-Match``, ``304`` once it has it); heartbeats carry a fresh ``Idempotency-Key``.
A ``429`` is honoured as the agent does: wait ``Retry-After`` (with up to 50 % jitter) and send again.

A request's latency runs from its scheduled moment to its final answer (waits after a ``429`` included),
so neither the generator's lag nor a deferral hides a slow answer; on a machine the generator shares with
the server the latencies are an upper bound.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import httpx

MODEL = "demand"
TIMEOUT_SECONDS = 30.0  # the agent's request_timeout_seconds
GRACE_SECONDS = 120.0  # answers still awaited after the last scheduled request


@dataclass(frozen=True)
class FleetPlan:
    """What a fleet offers: stores, the agent's intervals and the nightly burst's window."""

    stores: int
    poll_seconds: float = 60.0
    heartbeat_seconds: float = 60.0
    burst_seconds: float = 900.0
    time_scale: float = 1.0
    resend_share: float = 0.1
    processes: int = 3
    connections: int = 256  # per generator process

    @property
    def seconds(self) -> float:
        """How long the run offers traffic: the burst window, compressed by ``time_scale``."""
        return self.burst_seconds / self.time_scale

    def offered_per_second(self) -> float:
        """Requests per second this plan offers: polls and heartbeats at their intervals plus every store's
        accuracy and drift report and the resends, spread over the (compressed) burst window."""
        steady = self.stores / self.poll_seconds + self.stores / self.heartbeat_seconds
        reports = self.stores * (2 + self.resend_share)
        return steady + reports / self.seconds


@dataclass
class ShardResult:
    """What one generator process offered, got answered and sent (for the counts after the run)."""

    offered: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    deferred: int = 0  # 429 answers (each sent again after Retry-After)
    errors: list[str] = field(default_factory=list)
    heartbeat_keys: int = 0
    accuracy_sent: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    drift_sent: Counter[str] = field(default_factory=Counter)
    duplicates_acknowledged: int = 0
    last_answer_wall: float = 0.0  # time.time() of the last answer

    def merge(self, other: ShardResult) -> None:
        self.offered.update(other.offered)
        self.answered.update(other.answered)
        for route, values in other.latencies.items():
            self.latencies[route].extend(values)
        self.statuses.update(other.statuses)
        self.deferred += other.deferred
        self.errors.extend(other.errors)
        self.heartbeat_keys += other.heartbeat_keys
        for store, sent in other.accuracy_sent.items():
            self.accuracy_sent[store].extend(sent)
        self.drift_sent.update(other.drift_sent)
        self.duplicates_acknowledged += other.duplicates_acknowledged
        self.last_answer_wall = max(self.last_answer_wall, other.last_answer_wall)


@dataclass
class FleetRun:
    """The whole fleet's run: the merged shards, its length (from the start to the last answer, at least
    the window) and the server's CPU time."""

    plan: FleetPlan
    result: ShardResult
    seconds: float
    server_cpu_seconds: float | None = None

    @property
    def offered(self) -> int:
        return sum(self.result.offered.values())

    @property
    def answered(self) -> int:
        return sum(self.result.answered.values())

    def p99_ms(self) -> float:
        values = sorted(v for route in self.result.latencies.values() for v in route)
        if not values:
            return 0.0
        return 1000.0 * values[min(len(values) - 1, int(0.99 * len(values)))]


def accuracy_report(store_id: str, report_id: str, n: int) -> dict[str, Any]:
    today = date.today().isoformat()
    row = {
        "category": "food",
        "horizon_bucket": "1-7",
        "n": n,
        "abs_err_sum": 2.0 * n,
        "abs_y_sum": 10.0 * n,
        "err_sum": 0.5 * n,
    }
    return {
        "report_id": report_id,
        "store_id": store_id,
        "model_name": MODEL,
        "version": 1,
        "period_start": today,
        "period_end": today,
        "created_at": datetime.now(UTC).isoformat(),
        "rows": [row],
    }


def drift_report(store_id: str, report_id: str) -> dict[str, Any]:
    today = date.today().isoformat()
    test = {"name": "psi", "statistic": 0.01, "threshold": 0.2, "verdict": "ok", "n_current": 50}
    category = {
        "category": "food",
        "comparison": "seasonal",
        "drifted": False,
        "score": 0.01,
        "tests": [test],
    }
    return {
        "report_id": report_id,
        "store_id": store_id,
        "model_name": MODEL,
        "version": 1,
        "period_start": today,
        "period_end": today,
        "created_at": datetime.now(UTC).isoformat(),
        "categories": [category],
    }


async def enroll_stores(
    url: str, admin_token: str, stores: list[str], region: str, concurrency: int = 32
) -> dict[str, str]:
    """Create and enrol every store through the API, ``concurrency`` at a time: store id -> credential."""
    tokens: dict[str, str] = {}
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(store_id: str) -> None:
            async with gate:
                created = await client.post(
                    "/v1/stores",
                    json={"store_id": store_id, "model_name": MODEL, "region": region},
                    headers={"Authorization": f"Bearer {admin_token}"},
                )
                created.raise_for_status()
                enrollment = {"store_id": store_id, "enrollment_token": created.json()["enrollment_token"]}
                answer = await client.post("/v1/enroll", json=enrollment)
                answer.raise_for_status()
                tokens[store_id] = answer.json()["token"]

        await asyncio.gather(*(one(s) for s in stores))
    return tokens


class _Shard:
    """One generator process's stores, their schedule and what came back."""

    def __init__(self, url: str, plan: FleetPlan, tokens: dict[str, str], seed: int) -> None:
        self.url = url
        self.plan = plan
        self.tokens = tokens
        self.rng = random.Random(seed)
        self.result = ShardResult()
        self.etags: dict[str, str] = {}
        self.beats: Counter[str] = Counter()
        self.acknowledged: dict[str, asyncio.Event] = {}  # store -> its accuracy report was acknowledged
        self.reports: dict[str, dict[str, Any]] = {}
        # Requests in flight at most (one a connection): httpx's pool slows down with every request
        # waiting in it, so the rest wait here, where waiting costs nothing.
        self.gate = asyncio.Semaphore(plan.connections)

    def schedule(self) -> list[tuple[float, str, str]]:
        """(seconds after the start, what, store), sorted: polls and heartbeats every interval from a
        random phase, one accuracy and one drift report per store at random moments of the window, and for
        ``resend_share`` of the stores a resend of the accuracy report 0.5 to 2 s after it (all inside the
        window)."""
        events: list[tuple[float, str, str]] = []
        seconds = self.plan.seconds
        for store in self.tokens:
            for kind, every in (("poll", self.plan.poll_seconds), ("heartbeat", self.plan.heartbeat_seconds)):
                at = self.rng.uniform(0, every)
                while at < seconds:
                    events.append((at, kind, store))
                    at += every
            reported = self.rng.uniform(0, max(0.0, seconds - 2.0))
            events.append((reported, "accuracy", store))
            if self.rng.random() < self.plan.resend_share:
                events.append((reported + self.rng.uniform(0.5, 2.0), "resend", store))
            events.append((self.rng.uniform(0, seconds), "drift", store))
        events.sort()
        return events

    async def send(
        self, client: httpx.AsyncClient, route: str, store: str, due: float, method: str, path: str, **kw: Any
    ) -> httpx.Response | None:
        """Send until answered (again after each 429's Retry-After); the final answer, None on a transport
        error. The latency counts from ``due``, the scheduled moment."""
        headers = {"Authorization": f"Bearer {self.tokens[store]}", **kw.pop("headers", {})}
        self.result.offered[route] += 1
        while True:
            try:
                async with self.gate:
                    response = await client.request(method, path, headers=headers, **kw)
            except httpx.HTTPError as exc:
                self.result.errors.append(f"{route} {store}: {type(exc).__name__}: {exc}")
                return None
            self.result.statuses[f"{route} {response.status_code}"] += 1
            if response.status_code != 429:
                self.result.latencies[route].append(time.perf_counter() - due)
                self.result.last_answer_wall = time.time()
                return response
            self.result.deferred += 1
            wait = float(response.headers.get("retry-after", "1"))
            await asyncio.sleep(wait * self.rng.uniform(1.0, 1.5))

    def expect(self, route: str, store: str, response: httpx.Response | None, *codes: int) -> bool:
        if response is None:
            return False
        if response.status_code not in codes:
            self.result.errors.append(f"{route} {store}: {response.status_code} {response.text[:200]}")
            return False
        self.result.answered[route] += 1
        return True

    async def poll(self, client: httpx.AsyncClient, store: str, due: float) -> None:
        extra = {"If-None-Match": self.etags[store]} if store in self.etags else {}
        path = f"/v1/stores/{store}/assignment"
        response = await self.send(client, "poll", store, due, "GET", path, headers=extra)
        if (
            self.expect("poll", store, response, 200, 304)
            and response is not None
            and "etag" in response.headers
        ):
            self.etags[store] = response.headers["etag"]

    async def heartbeat(self, client: httpx.AsyncClient, store: str, due: float) -> None:
        self.beats[store] += 1
        beat = {
            "store_id": store,
            "state": "serving",
            "model_name": MODEL,
            "active_version": 1,
            "sent_at": datetime.now(UTC).isoformat(),
        }
        headers = {"Idempotency-Key": f"{store}-hb-{self.beats[store]}", "Content-Type": "application/json"}
        response = await self.send(
            client,
            "heartbeat",
            store,
            due,
            "POST",
            "/v1/heartbeats",
            content=json.dumps(beat),
            headers=headers,
        )
        if self.expect("heartbeat", store, response, 202):
            self.result.heartbeat_keys += 1

    async def accuracy(self, client: httpx.AsyncClient, store: str, due: float) -> None:
        n = 5 + self.rng.randrange(4)
        report = accuracy_report(store, f"{store}-acc", n)
        self.reports[store] = report
        acknowledged = self.acknowledged.setdefault(store, asyncio.Event())
        response = await self.send(client, "accuracy", store, due, "POST", "/v1/accuracy", json=report)
        if self.expect("accuracy", store, response, 202):
            self.result.accuracy_sent[store].append(n)
            acknowledged.set()

    async def resend(self, client: httpx.AsyncClient, store: str, due: float) -> None:
        """The accuracy report again, unchanged, once its first copy was acknowledged (as after a lost
        answer): the server must answer ``duplicate``."""
        acknowledged = self.acknowledged.setdefault(store, asyncio.Event())
        await acknowledged.wait()
        again = await self.send(
            client, "resend", store, due, "POST", "/v1/accuracy", json=self.reports[store]
        )
        if self.expect("resend", store, again, 202) and again is not None:
            if again.json().get("duplicate"):
                self.result.duplicates_acknowledged += 1
            else:
                self.result.errors.append(f"resend {store}: a resent report was not answered duplicate")

    async def drift(self, client: httpx.AsyncClient, store: str, due: float) -> None:
        report = drift_report(store, f"{store}-drift")
        response = await self.send(client, "drift", store, due, "POST", "/v1/drift", json=report)
        if self.expect("drift", store, response, 202):
            self.result.drift_sent[store] += 1

    async def run(self, start_wall: float) -> ShardResult:
        """Offer the schedule from the wall-clock moment ``start_wall``; what came back."""
        events = self.schedule()
        limits = httpx.Limits(
            max_connections=self.plan.connections, max_keepalive_connections=self.plan.connections
        )
        handlers = {
            "poll": self.poll,
            "heartbeat": self.heartbeat,
            "accuracy": self.accuracy,
            "resend": self.resend,
            "drift": self.drift,
        }
        async with httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT_SECONDS, limits=limits) as client:
            await asyncio.sleep(max(0.0, start_wall - time.time()))
            began = time.perf_counter()
            tasks = set()
            for at, kind, store in events:
                delay = began + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(handlers[kind](client, store, began + at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=GRACE_SECONDS)
                for task in pending:
                    task.cancel()
                    self.result.errors.append("a request was still unanswered after the grace period")
        return self.result


def _run_shard(
    url: str, plan: FleetPlan, tokens: dict[str, str], seed: int, start_wall: float
) -> ShardResult:
    return asyncio.run(_Shard(url, plan, tokens, seed).run(start_wall))


def offer_fleet(
    url: str,
    tokens: dict[str, str],
    plan: FleetPlan,
    server_cpu: Any = None,
) -> FleetRun:
    """Offer ``plan``'s traffic for the enrolled stores (``tokens``) from ``plan.processes`` processes
    started together; ``server_cpu`` (a callable giving the server's CPU seconds) measures its CPU time."""
    stores = sorted(tokens)
    shards = max(1, min(plan.processes, len(stores)))
    size = math.ceil(len(stores) / shards)
    parts = [{s: tokens[s] for s in stores[i * size : (i + 1) * size]} for i in range(shards)]
    start_wall = time.time() + 2.0 + 0.0005 * len(stores)  # every process has built its schedule by then
    context = multiprocessing.get_context("fork")
    with context.Pool(shards) as pool:
        pending = [
            pool.apply_async(_run_shard, (url, plan, part, seed, start_wall))
            for seed, part in enumerate(parts)
        ]
        cpu_before = server_cpu() if server_cpu else None
        results = [p.get(timeout=plan.seconds + GRACE_SECONDS + 120) for p in pending]
        cpu_after = server_cpu() if server_cpu else None
    merged = ShardResult()
    for result in results:
        merged.merge(result)
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    seconds = max(plan.seconds, merged.last_answer_wall - start_wall)
    return FleetRun(plan=plan, result=merged, seconds=seconds, server_cpu_seconds=cpu)
