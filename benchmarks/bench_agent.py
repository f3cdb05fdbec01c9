"""Store agent: memory, start time, per-item forecast throughput and whole-store exports.

Every figure comes from a real ``shelfcast agent run`` process on loopback, serving a scored run of a
whole store (20,000 series x 28 days in full size) with an active model, its server unreachable
(an offline store: what it must survive anyway).

Baselines, measured in the same run:
- ``bare_litestar_rps``: a bare Litestar app returning constant bytes, under the same uvicorn settings
  (httptools, uvloop) and the same load generator; ``forecast_item_rps`` / ``bare_litestar_rps`` is what
  the agent's own work per request costs (target >= 0.5).
- Memory and start time have absolute targets from the issue (<= 150 MB idle RSS, <= 2 s to READY=1).

The load generator is ``wrk`` when installed (32 connections, random item ids), else a small asyncio
client in this process (slower: it competes for the same cores, so its figures are lower bounds).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import polars as pl
import psutil
import pytest

# series, horizon
SHAPES = {"full": (20_000, 28), "tiny": (200, 7)}
LOAD_SECONDS = {"full": 4, "tiny": 1}
ROUNDS = {"full": 3, "tiny": 1}
CONNECTIONS = 32

BARE_APP = """
import sys, uvicorn, uvloop, asyncio
from litestar import Litestar, get, Response

@get("/v1/forecasts/{item_id:str}")
async def constant(item_id: str) -> Response[bytes]:
    return Response(b'{"item_id":"x","rows":[]}', media_type="application/json")

app = Litestar([constant], logging_config=None)
config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                        lifespan="off", http="httptools", server_header=False)
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(uvicorn.Server(config).serve())
"""

WRK_SCRIPT = """
math.randomseed(7)
request = function()
  return wrk.format("GET", string.format("{path}I%05d", math.random(1, {items})))
end
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _store_frame(items: int, horizon: int) -> pl.DataFrame:
    n = items * horizon
    steps = np.tile(np.arange(horizon), items)
    base = np.repeat(np.arange(items, dtype=np.float64) % 40, horizon) + steps * 0.1
    item_ids = pl.Series([f"I{i + 1:05d}" for i in range(items)]).gather(np.repeat(np.arange(items), horizon))
    start = date(2026, 1, 1)
    return pl.DataFrame(
        {
            "store_id": pl.Series(["S001"]).gather(np.zeros(n, dtype=np.int64)),
            "item_id": item_ids,
            "category": pl.Series([f"cat{c}" for c in range(8)]).gather(
                np.repeat(np.arange(items) % 8, horizon)
            ),
            "ds": pl.Series([start + timedelta(days=int(d)) for d in range(horizon)]).gather(steps),
            "forecast": base,
            "forecast-lo-80": base - 1,
            "forecast-hi-80": base + 1,
            "forecast-lo-95": base - 2,
            "forecast-hi-95": base + 2,
            "model": pl.Series(["AutoETS", "SeasonalNaive"]).gather(np.repeat(np.arange(items) % 2, horizon)),
        }
    )


def _prepare_state(state_dir: Path, items: int, horizon: int) -> None:
    """An agent state with v1 committed as active and a finished scoring run of the whole store."""
    from agent.record import Record, VersionRef
    from agent.serving import ServingPointer, write_serving_index

    run_id = "20260101T000000Z-v1-bench"
    run_dir = state_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    frame = _store_frame(items, horizon)
    frame.write_parquet(run_dir / "forecasts.parquet")
    write_serving_index(run_dir, run_dir / "forecasts.parquet")  # what the scoring child writes
    (state_dir / "versions" / "demand-1").mkdir(parents=True)
    (state_dir / "current").symlink_to("versions/demand-1")
    record = Record(active=VersionRef("demand", 1), highest_version=1, last_sync_at=datetime.now(UTC))
    (state_dir / "lifecycle.json").write_bytes(msgspec.json.encode(record))
    pointer = ServingPointer(
        run_id=run_id,
        model_name="demand",
        version=1,
        path=f"runs/{run_id}/forecasts.parquet",
        scored_at=datetime.now(UTC),
        n_series=items,
        n_rows=frame.height,
    )
    (state_dir / "serving.json").write_bytes(msgspec.json.encode(pointer))


class Agent:
    """A running agent process and how long it took to send READY=1."""

    def __init__(
        self, root: Path, items: int, horizon: int, prepare: Callable[[Path, int, int], None] | None = None
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        state = root / "state"
        (prepare or _prepare_state)(state, items, horizon)
        config = root / "agent.toml"
        config.write_text(
            "[agent]\n"
            f'server_url = "http://127.0.0.1:{_free_port()}"\n'
            'store_id = "S001"\n'
            "poll_interval_seconds = 3600.0\n"
            "heartbeat_interval_seconds = 3600.0\n"
            "[api]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            "[logging]\n"
            'level = "warning"\n'
        )
        notify_path = str(root / "notify.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(notify_path)
        listener.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": notify_path}
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shelfcast",
                "agent",
                "run",
                "--config",
                str(config),
                "--state-dir",
                str(state),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            while "READY=1" not in listener.recv(4096).decode():
                pass
        finally:
            listener.close()
        self.ready_seconds = time.perf_counter() - started
        cpu = psutil.Process(self.proc.pid).cpu_times()
        self.ready_cpu_seconds = cpu.user + cpu.system
        deadline = time.monotonic() + 60
        while httpx.get(f"{self.url}/readyz", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("agent never became ready")
            time.sleep(0.02)
        self.serving_seconds = time.perf_counter() - started

    def rss_mb(self) -> float:
        process = psutil.Process(self.proc.pid)
        rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
        return float(rss) / (1024 * 1024)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def agent(bench_size: str) -> Iterator[Agent]:
    """One agent process serving a whole store (module-wide: start-up is measured once, here)."""
    items, horizon = SHAPES[bench_size]
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        running = Agent(Path(tmp), items, horizon)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def bare_url() -> Iterator[str]:
    """The bare Litestar baseline app."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/forecasts/x", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bare Litestar app did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _wrk(url: str, seconds: int, items: int, path: str) -> tuple[float, float]:
    """Requests/s and p99 latency (ms) from wrk with random item ids."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.replace("{items}", str(items)).replace("{path}", path))
    try:
        out = subprocess.run(
            [shutil.which("wrk") or "wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s",
             script.name, url],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
    finally:
        Path(script.name).unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    match = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert match, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    if "Non-2xx" in out:
        raise AssertionError(out)
    return rps, float(match.group(1)) * scale


async def _python_load(url: str, seconds: float, items: int, prefix: str) -> tuple[float, float]:
    """Fallback load generator: 32 keep-alive connections, raw HTTP/1.1, random item ids."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < deadline:
            path = f"{prefix}I{rng.randint(1, items):05d}"
            began = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(CONNECTIONS)))
    elapsed = time.perf_counter() - began
    return len(latencies) / elapsed, float(np.percentile(latencies, 99) * 1000)


def _load(url: str, seconds: int, items: int, path: str = "/v1/forecasts/") -> tuple[float, float]:
    """Requests/s and p99 latency (ms) of ``GET <path><item id>`` for random items of the store."""
    if shutil.which("wrk"):
        return _wrk(url, seconds, items, path)
    return asyncio.run(_python_load(url, seconds, items, path))


def test_idle_memory_and_start(agent: Agent, figures: Any, benchmark: Any) -> None:
    """Idle RSS with an active model and a whole store scored; start to READY=1 and to /readyz."""
    figures.timing(None)
    time.sleep(2.0)
    benchmark.pedantic(agent.rss_mb, rounds=1, iterations=1)
    figures.value("agent_idle_rss", agent.rss_mb(), "MB", target="value <= 150")
    figures.value("agent_start_to_ready", agent.ready_seconds, "s", target="value <= 2")
    figures.value("agent_start_to_serving", agent.serving_seconds, "s")
    # CPU time of the agent process up to READY=1: what start-up costs when the cores are not shared.
    figures.value("agent_start_cpu", agent.ready_cpu_seconds, "cpu-s", target="value <= 2")


def test_forecast_item_throughput(
    agent: Agent, bare_url: str, figures: Any, benchmark: Any, bench_size: str
) -> None:
    """GET /v1/forecasts/{item_id} JSON at 32 connections, against a bare Litestar constant endpoint."""
    items, _horizon = SHAPES[bench_size]
    seconds = LOAD_SECONDS[bench_size]
    figures.timing(None)
    _load(agent.url, 1, items)  # warm-up (connections, caches)
    # Alternate short rounds of the baseline and the agent (best of each): on shared cores the load of
    # other work drifts, and measuring one after the other would charge that drift to the ratio.
    bare: list[tuple[float, float]] = []
    ours: list[tuple[float, float]] = []

    def run() -> None:
        for _ in range(ROUNDS[bench_size]):
            bare.append(_load(bare_url, seconds, items))
            ours.append(_load(agent.url, seconds, items))

    benchmark.pedantic(run, rounds=1, iterations=1)
    bare_rps, bare_p99 = max(r for r, _ in bare), min(p for _, p in bare)
    result = {"rps": max(r for r, _ in ours), "p99": min(p for _, p in ours)}
    figures.value("bare_litestar_rps", bare_rps, "req/s")
    figures.value("bare_litestar_p99", bare_p99, "ms")
    figures.value("forecast_item_rps", result["rps"], "req/s", target="value >= 5000")
    figures.value(
        "forecast_item_rps_vs_bare",
        result["rps"],
        "req/s",
        baseline="bare_litestar_rps",
        target="ratio >= 0.5",
    )
    figures.value("forecast_item_p99", result["p99"], "ms", target="value <= 10")


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_whole_store_export(agent: Agent, figures: Any, benchmark: Any, fmt: str, bench_size: str) -> None:
    """GET /v1/forecasts?format=arrow|parquet of every series and day, parsed back."""
    items, horizon = SHAPES[bench_size]
    figures.timing(f"export_{fmt}", target="value <= 1")
    client = httpx.Client(timeout=60)

    def export() -> int:
        response = client.get(f"{agent.url}/v1/forecasts", params={"format": fmt})
        response.raise_for_status()
        return len(response.content)

    size = benchmark.pedantic(export, rounds=3, iterations=1, warmup_rounds=1)
    client.close()
    figures.value(f"export_{fmt}_bytes", size, "bytes")
    frame = pl.read_ipc_stream(httpx.get(f"{agent.url}/v1/forecasts?format=arrow", timeout=60).content)
    assert frame.height == items * horizon
