"""Central server: assignment polls answered ``304 Not Modified`` from a warm ETag, in requests per second.

One real ``shelfcast server run`` process (one worker, as deployed) holds an enrolled store whose model has a
champion; the load generator polls ``GET /v1/stores/{id}/assignment`` with the store's credential and the
ETag it already has, as 10,000 agents polling every minute would (167 requests/s).

Baseline, measured in the same run, interleaved with the server: ``bare_litestar_rps``, a Litestar app
with one endpoint returning constant bytes, under the same uvicorn settings (httptools, uvloop, one
process). ``assignment_304_rps / bare_litestar_rps`` is the price of authentication, the scope check, the
metrics middleware and the ETag comparison.

Load comes from ``wrk`` (one thread, 32 connections) when it is installed (``apt-get install wrk``);
otherwise from an asyncio + httpx generator, which saturates before the server does (the message says so),
so its figures are lower bounds.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shelfcast.procs import ServiceProcess  # noqa: E402 - after making the project importable

SECONDS = {"full": 6.0, "tiny": 1.0}
ROUNDS = {"full": 3, "tiny": 1}
CONNECTIONS = 32
ADMIN = "sca_bench-admin-token-0123456789"
STORE = "S0001"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_bare(port: int) -> None:
    """The baseline app: one Litestar endpoint returning constant bytes, same uvicorn settings."""
    import uvicorn
    from litestar import Litestar, get

    @get("/bare", media_type="application/json")
    async def bare() -> bytes:
        return b'{"ok":true}'

    uvicorn.run(
        Litestar([bare]),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
        server_header=False,
    )


def _make_bundle(tmp: Path) -> tuple[Path, Path]:
    from datetime import UTC, datetime

    from forecasting.bundle.format import Manifest, pack_archive, write_bundle
    from forecasting.bundle.signing import generate_key_files

    key, pub, _ = generate_key_files(tmp / "keys" / "signing.key")
    manifest = Manifest(model_name="demand", version=1, created_at=datetime.now(UTC))
    bundle = write_bundle(tmp / "demand-v1", manifest, {"series.parquet": b"0" * 4096}, key)
    archive = tmp / "demand-v1.tar"
    pack_archive(bundle, archive)
    return archive, pub


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real server with a store to poll, and the bare baseline app; both stopped afterwards."""
    tmp = tmp_path_factory.mktemp("bench-server")
    archive, pub = _make_bundle(tmp)
    port, bare_port = _free_port(), _free_port()
    server = ServiceProcess(
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
    bare = ServiceProcess("bare", [], log_path=tmp / "bare.log")
    bare.args = [sys.executable, str(Path(__file__).resolve()), "--bare-port", str(bare_port)]
    with server, bare:
        server.wait_http(f"http://127.0.0.1:{port}/readyz")
        bare.wait_http(f"http://127.0.0.1:{bare_port}/bare")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as admin:
            enrollment = admin.post("/v1/stores", json={"store_id": STORE, "model_name": "demand"})
            enrollment.raise_for_status()
            token = httpx.post(
                f"{url}/v1/enroll",
                json={"store_id": STORE, "enrollment_token": enrollment.json()["enrollment_token"]},
            ).json()["token"]
            admin.post("/v1/models/demand/versions", content=archive.read_bytes()).raise_for_status()
            admin.put("/v1/models/demand/aliases/champion", json={"version": 1}).raise_for_status()
        poll_url = f"{url}/v1/stores/{STORE}/assignment"
        auth = {"Authorization": f"Bearer {token}"}
        etag = httpx.get(poll_url, headers=auth).headers["etag"]
        warm = httpx.get(poll_url, headers={**auth, "If-None-Match": etag})
        assert warm.status_code == 304, warm.text
        yield {
            "poll_url": poll_url,
            "poll_headers": {**auth, "If-None-Match": etag},
            "bare_url": f"http://127.0.0.1:{bare_port}/bare",
        }


def wrk(url: str, headers: dict[str, str], seconds: float) -> float:
    """Requests/s from wrk (one thread, CONNECTIONS connections); fails on any non-2xx/3xx answer."""
    args = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    assert "Non-2xx or 3xx responses" not in out, out
    found = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    assert found, out
    return float(found.group(1))


async def _httpx_load(url: str, headers: dict[str, str], seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await client.get(url)
                assert response.status_code in (200, 304), response.text
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        return done / (time.perf_counter() - started)


def load(url: str, headers: dict[str, str], seconds: float) -> float:
    if shutil.which("wrk"):
        return wrk(url, headers, seconds)
    return asyncio.run(_httpx_load(url, headers, seconds))


def test_assignment_304_polls(benchmark: Any, figures: Any, bench_size: str, targets: dict[str, Any]) -> None:
    """Warm-ETag assignment polls per second, against a bare Litestar endpoint measured alternately."""
    if not shutil.which("wrk"):
        print(
            "bench_server: wrk not found (apt-get install wrk); using the httpx load generator, "
            "which saturates first: the figures are lower bounds"
        )
    seconds = SECONDS[bench_size]

    def interleaved() -> tuple[float, float]:
        best_poll = best_bare = 0.0
        for _ in range(ROUNDS[bench_size]):
            best_bare = max(best_bare, load(targets["bare_url"], {}, seconds))
            best_poll = max(best_poll, load(targets["poll_url"], targets["poll_headers"], seconds))
        return best_poll, best_bare

    figures.timing(None)
    poll, bare = benchmark.pedantic(interleaved, rounds=1, iterations=1)
    figures.value("assignment_304_rps", poll, "req/s", baseline="bare_litestar_rps", target="value >= 3000")
    figures.value("bare_litestar_rps", bare, "req/s")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-port":
        serve_bare(int(sys.argv[2]))
    else:
        sys.exit("usage: bench_server.py --bare-port PORT (the suite itself runs under benchmarks/run.py)")
