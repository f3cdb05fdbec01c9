"""Central server under a fleet: 200 simulated agents polling and reporting for 60 s, with nothing lost.

One real ``shelfcast server run`` process (one worker, as deployed) on loopback. Each simulated agent is an
asyncio task with its own ``httpx.AsyncClient`` and its own enrolled store credential. Every round (every
10 s in the ``paced`` run, every second in the ``saturated`` one, jittered by +-50 %) an agent polls its
assignment with the ETag it holds (``304`` once it has it) and posts a
heartbeat with a fresh ``Idempotency-Key``; every fifth round it also posts an accuracy report, every tenth
a drift report, and every seventh it re-sends its last heartbeat and last accuracy report unchanged, as an
agent does when an answer is lost (the server must answer ``duplicate`` and count nothing twice).

Figures: p50 and p99 latency per route (ms), requests per second over the whole run, errors (any answer
not in the expected set, any transport error or timeout: target 0) and lost or doubled reports (target 0),
counted twice after the run: through the API (accuracy ``reports`` and pooled ``n`` per store must equal
what the agents sent) and in the server's DuckDB file once the server has stopped (``report_keys`` rows
per heartbeat key, ``monitoring_reports`` per report id, ``accuracy_rows`` per row sent).

The load generator shares the two cores with the server; it is one Python process, so its own CPU use
inflates the latencies a little; they are an upper bound of what the server alone would show.
``tests/server/test_fleet_load.py`` runs the same generator with 50 agents for 10 s.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fleet_traffic import (  # noqa: E402 - after making the project importable
    MODEL,
    FleetPlan,
    FleetRun,
    ShardResult,
    accuracy_report,
    drift_report,
    enroll_stores,
    offer_fleet,
)
from benchmarks.route_cpu import route_costs  # noqa: E402
from shelfcast.procs import ServiceProcess  # noqa: E402

AGENTS = {"full": 200, "tiny": 10}
SECONDS = {"full": 60.0, "tiny": 3.0}
# Seconds between an agent's rounds (jittered +-50 %): "paced" is 6x the agent's default 60 s poll and
# heartbeat intervals (200 agents offer what 1,200 would at the defaults), "saturated" asks more than one
# server process can write, so answers queue and the run shows what overload costs (nothing may be lost).
PACES = {"paced": 10.0, "saturated": 1.0}
ADMIN = "sca_bench-admin-token-0123456789"
ROUTES = ("poll", "heartbeat", "accuracy", "drift", "resend")
# A chain of 10,000 stores at the agent's default intervals (60 s polls and heartbeats) with the nightly
# burst's 15 minutes compressed fivefold (a 3-minute run); tiny: 20 stores a second apart for 4 s.
FLEET10K = {
    "full": FleetPlan(stores=10_000, time_scale=5.0, processes=3),
    "tiny": FleetPlan(
        stores=20, poll_seconds=1.0, heartbeat_seconds=1.0, burst_seconds=4.0, processes=2, connections=16
    ),
}


# Each hot route alone: stores enrolled, requests per second offered, requests measured per route.
ROUTE_CPU = {"full": (200, 150.0, 600), "tiny": (5, 20.0, 20)}


@dataclass
class FleetLoad:
    """What the simulated fleet did and saw."""

    agents: int
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    heartbeat_keys: int = 0
    accuracy_sent: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # store: [n]
    drift_sent: Counter[str] = field(default_factory=Counter)
    duplicates_acknowledged: int = 0
    server_cpu_seconds: float | None = None  # CPU time of the server process during the run (Linux)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def percentile_ms(self, route: str, q: float) -> float:
        values = sorted(self.latencies[route])
        if not values:
            return 0.0
        return 1000.0 * values[min(len(values) - 1, int(q * len(values)))]


async def _agent(
    client: httpx.AsyncClient, store_id: str, deadline: float, load: FleetLoad, round_seconds: float
) -> None:
    """One store agent: poll, heartbeat, sometimes reports, sometimes a resend of the last ones."""
    async with client:

        async def call(route: str, method: str, path: str, expect: int, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                response = await client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                load.errors.append(f"{route} {store_id}: {type(exc).__name__}: {exc}")
                return None
            load.latencies[route].append(time.perf_counter() - began)
            load.statuses[f"{route} {response.status_code}"] += 1
            if response.status_code != expect and not (route == "poll" and response.status_code == 304):
                load.errors.append(f"{route} {store_id}: {response.status_code} {response.text[:200]}")
                return None
            return response

        await asyncio.sleep(random.uniform(0, round_seconds))
        etag: str | None = None
        last_beat: tuple[str, bytes] | None = None
        last_accuracy: dict[str, Any] | None = None
        i = 0
        while time.perf_counter() < deadline:
            extra = {"If-None-Match": etag} if etag else {}
            polled = await call("poll", "GET", f"/v1/stores/{store_id}/assignment", 200, headers=extra)
            if polled is not None:
                etag = polled.headers.get("etag", etag)
            key = f"{store_id}-hb-{i}"
            beat = {
                "store_id": store_id,
                "state": "serving",
                "model_name": MODEL,
                "active_version": 1,
                "sent_at": datetime.now(UTC).isoformat(),
            }
            body = json.dumps(beat).encode()
            sent = await call(
                "heartbeat",
                "POST",
                "/v1/heartbeats",
                202,
                content=body,
                headers={"Idempotency-Key": key, "Content-Type": "application/json"},
            )
            if sent is not None:
                load.heartbeat_keys += 1
                last_beat = (key, body)
            if i % 5 == 0:
                n = 5 + i % 4
                report = accuracy_report(store_id, f"{store_id}-acc-{i}", n)
                if await call("accuracy", "POST", "/v1/accuracy", 202, json=report) is not None:
                    load.accuracy_sent[store_id].append(n)
                    last_accuracy = report
            if i % 10 == 1:
                drift = drift_report(store_id, f"{store_id}-drift-{i}")
                if await call("drift", "POST", "/v1/drift", 202, json=drift) is not None:
                    load.drift_sent[store_id] += 1
            if i % 7 == 2 and last_beat is not None and last_accuracy is not None:
                again = await call(
                    "resend",
                    "POST",
                    "/v1/heartbeats",
                    202,
                    content=last_beat[1],
                    headers={"Idempotency-Key": last_beat[0], "Content-Type": "application/json"},
                )
                if again is not None and again.json().get("duplicate"):
                    load.duplicates_acknowledged += 1
                again = await call("resend", "POST", "/v1/accuracy", 202, json=last_accuracy)
                if again is not None and again.json().get("duplicate"):
                    load.duplicates_acknowledged += 1
            i += 1
            await asyncio.sleep(round_seconds * random.uniform(0.5, 1.5))


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (``/proc``; None elsewhere)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def simulate_fleet(
    url: str,
    admin_token: str,
    agents: int,
    seconds: float,
    region: str,
    round_seconds: float = 1.0,
    server_pid: int | None = None,
) -> FleetLoad:
    """Enrol ``agents`` stores of ``region``, then run them all for ``seconds``, each doing a round about
    every ``round_seconds``; what happened (with the server's CPU time when its pid is given)."""
    stores = [f"{region}-{i:04d}" for i in range(agents)]
    tokens = asyncio.run(enroll_stores(url, admin_token, stores, region, concurrency=16))
    load = FleetLoad(agents=agents)

    async def run() -> None:
        # Clients first (one TLS context shared by all: building one per client blocks the event loop),
        # then the clock starts.
        context = ssl.create_default_context()
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
        clients = {
            s: httpx.AsyncClient(
                base_url=url,
                headers={"Authorization": f"Bearer {tokens[s]}"},
                timeout=30,
                limits=limits,
                verify=context,
            )
            for s in stores
        }
        cpu_before = process_cpu_seconds(server_pid) if server_pid else None
        began = time.perf_counter()
        deadline = began + seconds
        await asyncio.wait_for(
            asyncio.gather(*(_agent(clients[s], s, deadline, load, round_seconds) for s in stores)),
            timeout=seconds + 120,
        )
        load.seconds = time.perf_counter() - began
        cpu_after = process_cpu_seconds(server_pid) if server_pid else None
        if cpu_before is not None and cpu_after is not None:
            load.server_cpu_seconds = cpu_after - cpu_before

    asyncio.run(run())
    return load


def counted_through_api(url: str, admin_token: str, load: FleetLoad | ShardResult) -> list[str]:
    """Differences between what the agents sent and what the accuracy/drift queries count (none: [])."""
    problems: list[str] = []
    headers = {"Authorization": f"Bearer {admin_token}"}
    params = {"group_by": "store_id", "period": "year", "model": MODEL}
    accuracy = httpx.get(f"{url}/v1/accuracy", params=params, headers=headers, timeout=60).json()
    got = {g["store_id"]: (g["reports"], g["n"]) for g in accuracy}
    for store_id, sent in load.accuracy_sent.items():
        if got.get(store_id) != (len(sent), sum(sent)):
            problems.append(
                f"accuracy {store_id}: sent {(len(sent), sum(sent))}, counted {got.get(store_id)}"
            )
    drift = httpx.get(f"{url}/v1/drift", params=params, headers=headers, timeout=60).json()
    got_drift = {g["store_id"]: g["reports"] for g in drift}
    for store_id, sent_drift in load.drift_sent.items():
        if got_drift.get(store_id) != sent_drift:
            problems.append(f"drift {store_id}: sent {sent_drift}, counted {got_drift.get(store_id)}")
    return problems


def counted_in_database(state_dir: Path, load: FleetLoad | ShardResult, stores_prefix: str) -> list[str]:
    """The same count in the stopped server's DuckDB file: rows per heartbeat key, report and row."""
    import duckdb

    database = next(state_dir.rglob("*.duckdb"))
    con = duckdb.connect(str(database), read_only=True)
    like = [f"{stores_prefix}-%"]
    try:
        keys = con.execute("SELECT count(*) FROM report_keys WHERE store_id LIKE ?", like).fetchone()
        reports = dict(
            con.execute(
                "SELECT kind, count(*) FROM monitoring_reports WHERE store_id LIKE ? GROUP BY kind", like
            ).fetchall()
        )
        rows = con.execute("SELECT count(*) FROM accuracy_rows WHERE store_id LIKE ?", like).fetchone()
    finally:
        con.close()
    sent_accuracy = sum(len(v) for v in load.accuracy_sent.values())
    sent_drift = sum(load.drift_sent.values())
    problems = []
    if keys is None or keys[0] != load.heartbeat_keys:
        problems.append(f"heartbeat keys: sent {load.heartbeat_keys}, stored {keys}")
    if reports.get("accuracy", 0) != sent_accuracy or reports.get("drift", 0) != sent_drift:
        problems.append(f"reports: sent accuracy {sent_accuracy}, drift {sent_drift}; stored {reports}")
    if rows is None or rows[0] != sent_accuracy:
        problems.append(f"accuracy rows: sent {sent_accuracy}, stored {rows}")
    return problems


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def publish_champion(url: str, admin_token: str, tmp: Path) -> None:
    """A signed v1 of the model (a real Parquet payload, which the server checks), published and made
    champion (the assignment every agent polls)."""
    import io

    import polars as pl

    from forecasting.bundle.format import Manifest, pack_archive, write_bundle

    key = tmp / "keys" / "signing.key"
    manifest = Manifest(model_name=MODEL, version=1, created_at=datetime.now(UTC))
    table = io.BytesIO()
    pl.DataFrame({"blob": [b"0" * 4096]}).write_parquet(table, compression="uncompressed", statistics=False)
    bundle = write_bundle(tmp / "demand-v1", manifest, {"series.parquet": table.getvalue()}, key)
    archive = tmp / "demand-v1.tar"
    pack_archive(bundle, archive)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60) as admin:
        admin.post(f"/v1/models/{MODEL}/versions", content=archive.read_bytes()).raise_for_status()
        admin.put(f"/v1/models/{MODEL}/aliases/champion", json={"version": 1}).raise_for_status()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real server with the model's champion published; stopped by the test (to count in its file)."""
    from forecasting.bundle.signing import generate_key_files

    tmp = tmp_path
    _, pub, _ = generate_key_files(tmp / "keys" / "signing.key")
    port = _free_port()
    process = ServiceProcess(
        "server",
        ["server", "run", "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(tmp / "state")],
        log_path=tmp / "server.log",
        env={
            "SHELFCAST_SERVER__ADMIN_TOKEN": ADMIN,
            "SHELFCAST_SERVER__TRUSTED_KEYS": f'["{pub}"]',
            "SHELFCAST_LOGGING__LEVEL": "warning",
            "SHELFCAST_LOGGING__FORMAT": "json",
        },
    )
    with process:
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/readyz")
        publish_champion(url, ADMIN, tmp)
        yield {"url": url, "process": process, "state_dir": tmp / "state"}


@pytest.mark.parametrize("pace", list(PACES))
def test_fleet_polls_and_reports(
    benchmark: Any, figures: Any, bench_size: str, server: dict[str, Any], pace: str
) -> None:
    """200 agents for 60 s: latency per route, throughput, zero errors, every report counted once."""
    agents, seconds = AGENTS[bench_size], SECONDS[bench_size]
    figures.timing(None)
    load: FleetLoad = benchmark.pedantic(
        simulate_fleet,
        args=(server["url"], ADMIN, agents, seconds, "LOAD", PACES[pace], server["process"].proc.pid),
        rounds=1,
        iterations=1,
    )
    api_problems = counted_through_api(server["url"], ADMIN, load)
    server["process"].stop()
    db_problems = counted_in_database(server["state_dir"], load, "LOAD")
    for route in ROUTES:
        if load.latencies[route]:
            figures.value(f"{pace}_{route}_p50", load.percentile_ms(route, 0.50), "ms")
            target = "value <= 500" if pace == "paced" else None
            figures.value(f"{pace}_{route}_p99", load.percentile_ms(route, 0.99), "ms", target=target)
    figures.value(f"{pace}_agents", agents, "agents")
    figures.value(f"{pace}_round_seconds", PACES[pace], "s")
    figures.value(f"{pace}_requests_per_second", load.requests / load.seconds, "req/s")
    figures.value(f"{pace}_requests", load.requests, "requests")
    figures.value(f"{pace}_errors", len(load.errors), "errors", target="value <= 0")
    figures.value(
        f"{pace}_reports_miscounted", len(api_problems) + len(db_problems), "stores", target="value <= 0"
    )
    figures.value(f"{pace}_duplicates_acknowledged", load.duplicates_acknowledged, "resends")
    if load.server_cpu_seconds is not None and load.requests:
        cpu_ms = 1000 * load.server_cpu_seconds / load.requests
        figures.value(f"{pace}_server_cpu_per_request", cpu_ms, "cpu-ms")
    assert load.errors == [], load.errors[:10]
    assert api_problems == [] and db_problems == [], (api_problems[:10], db_problems)


@pytest.mark.timeout(1800)  # enrolling 10,000 stores, then a 3-minute run
def test_fleet10k(benchmark: Any, figures: Any, bench_size: str, server: dict[str, Any]) -> None:
    """A 10,000-store fleet's traffic at the defaults with the nightly burst: throughput, p99 over all
    routes, zero errors, every report counted once (in the API and in the stopped server's file)."""
    plan = FLEET10K[bench_size]
    stores = [f"F10K-{i:05d}" for i in range(plan.stores)]
    tokens = asyncio.run(enroll_stores(server["url"], ADMIN, stores, "F10K"))
    pid = server["process"].proc.pid
    figures.timing(None)
    run: FleetRun = benchmark.pedantic(
        offer_fleet,
        args=(server["url"], tokens, plan, lambda: process_cpu_seconds(pid)),
        rounds=1,
        iterations=1,
    )
    api_problems = counted_through_api(server["url"], ADMIN, run.result)
    server["process"].stop()
    db_problems = counted_in_database(server["state_dir"], run.result, "F10K")
    offered_rate = plan.offered_per_second()
    figures.value("fleet10k_stores", plan.stores, "stores")
    figures.value("fleet10k_time_scale", plan.time_scale, "x")
    figures.value("fleet10k_offered_per_second", offered_rate, "req/s")
    figures.value("fleet10k_offered", run.offered, "requests")
    figures.value("fleet10k_answered", run.answered, "requests")
    figures.value(
        "fleet10k_requests_per_second",
        run.answered / run.seconds,
        "req/s",
        target=f"value >= {0.95 * offered_rate:.1f}",
    )
    figures.value("fleet10k_p99", run.p99_ms(), "ms", target="value <= 250")
    figures.value("fleet10k_errors", len(run.result.errors), "errors", target="value <= 0")
    figures.value(
        "fleet10k_reports_miscounted", len(api_problems) + len(db_problems), "stores", target="value <= 0"
    )
    figures.value("fleet10k_deferred", run.result.deferred, "429 answers")
    figures.value("fleet10k_duplicates_acknowledged", run.result.duplicates_acknowledged, "resends")
    if run.server_cpu_seconds is not None and run.answered:
        cpu_ms = 1000 * run.server_cpu_seconds / run.answered
        figures.value("fleet10k_server_cpu_per_request", cpu_ms, "cpu-ms", target="value <= 1.5")
    assert run.result.errors == [], run.result.errors[:10]
    assert run.answered == run.offered, (run.result.offered, run.result.answered)
    assert api_problems == [] and db_problems == [], (api_problems[:10], db_problems)


def test_route_cpu(benchmark: Any, figures: Any, bench_size: str, server: dict[str, Any]) -> None:
    """The server's CPU time per request of each hot route on its own, at a rate one process keeps up with."""
    stores, rate, requests = ROUTE_CPU[bench_size]
    names = [f"ROUTE-{i:04d}" for i in range(stores)]
    tokens = asyncio.run(enroll_stores(server["url"], ADMIN, names, "ROUTE", concurrency=16))
    pid = server["process"].proc.pid
    figures.timing(None)
    costs = benchmark.pedantic(
        route_costs,
        args=(server["url"], tokens, rate, requests, lambda: process_cpu_seconds(pid)),
        rounds=1,
        iterations=1,
    )
    figures.value("route_cpu_stores", stores, "stores")
    figures.value("route_cpu_rate", rate, "req/s")
    for cost in costs:
        if cost.cpu_ms is not None:
            figures.value(f"route_cpu_{cost.route}", cost.cpu_ms, "cpu-ms")
    assert [e for cost in costs for e in cost.errors] == []
