"""A truncated or garbled DuckDB write-ahead log at server start: never a silent loss.

A real server writes reports it has not checkpointed yet and is SIGKILLed, leaving its write-ahead log;
the log is then damaged byte by byte before the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import pytest

from shelfcast.procs import ServiceProcess
from tests.conftest import free_port
from tests.server.conftest import ADMIN_TOKEN, RunningServer, create_store, enroll, launch

pytestmark = pytest.mark.slow

KEYS = [f"wal-{i:03d}" for i in range(24)]


def _beat() -> dict[str, object]:
    return {"store_id": "S-WAL", "state": "idle", "sent_at": datetime.now(UTC).isoformat()}


@pytest.fixture(scope="module")
def crashed_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A state folder whose server was SIGKILLed with 24 acknowledged heartbeats only in its WAL."""
    from forecasting.bundle.signing import generate_key_files

    root = tmp_path_factory.mktemp("wal")
    _, public, _ = generate_key_files(root / "signing.key")
    server = launch(root / "crashed", public)
    try:
        with server.admin() as admin:
            token = enroll(server.url, "S-WAL", create_store(admin, "S-WAL", "demand"))
        with server.client(token) as agent:
            for key in KEYS:
                answer = agent.post("/v1/heartbeats", json=_beat(), headers={"Idempotency-Key": key})
                assert answer.status_code == 202 and not answer.json()["duplicate"]
    finally:
        server.process.kill()
    wal = server.state_dir / "registry.duckdb.wal"
    assert wal.stat().st_size > 0, "the reports should still be in the write-ahead log"
    return server.state_dir, public


def _copy(crashed: Path, dest: Path) -> Path:
    shutil.copytree(crashed, dest / "state")
    return dest / "state"


def _stored_keys(state: Path) -> list[str]:
    db = duckdb.connect(str(state / "registry.duckdb"), read_only=True)
    try:
        rows = db.execute("SELECT idempotency_key FROM report_keys WHERE store_id = 'S-WAL'").fetchall()
    finally:
        db.close()
    return sorted(key for (key,) in rows)


def _entries(wal: Path) -> list[tuple[int, int]]:
    """(offset, payload size) of every entry after the header, walked as the server walks them."""
    from server.db import _wal_header_end

    data = wal.read_bytes()
    verdict, pos = _wal_header_end(data[:4096])
    assert verdict == "ok"
    found = []
    while pos + 16 <= len(data):
        size = int.from_bytes(data[pos : pos + 8], "little")
        found.append((pos, size))
        pos += 16 + size
    assert pos == len(data)
    return found


def _log_events(server: RunningServer, name: str) -> list[dict[str, object]]:
    lines = server.process.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if f'"event": "{name}"' in line]


def _start(state: Path, public: Path, *extra_args: str) -> RunningServer:
    """``shelfcast server run`` on ``state`` (with ``extra_args``), answering /readyz."""
    port = free_port()
    env = {
        "SHELFCAST_SERVER__ADMIN_TOKEN": ADMIN_TOKEN,
        "SHELFCAST_SERVER__TRUSTED_KEYS": json.dumps([str(public)]),
        "SHELFCAST_LOGGING__FORMAT": "json",
    }
    args = ["server", "run", "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state)]
    process = ServiceProcess("server", [*args, *extra_args], log_path=state.parent / "server.log", env=env)
    process.start()
    try:
        process.wait_http(f"http://127.0.0.1:{port}/readyz", timeout_seconds=60)
    except BaseException:
        process.stop()
        raise
    return RunningServer(f"http://127.0.0.1:{port}", state, process, public, port=port)


def _digest(*files: Path) -> list[str]:
    return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]


def test_intact_wal_after_a_crash_is_replayed_whole(crashed_state: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL left a whole log: the restarted server holds every acknowledged report and says so."""
    crashed, public = crashed_state
    state = _copy(crashed, tmp_path)
    server = _start(state, public)
    server.process.stop()
    assert _stored_keys(state) == KEYS
    replayed = _log_events(server, "db_wal_replayed")
    assert replayed and replayed[0]["level"] == "warning"
    assert not (state / "registry.duckdb.wal").exists()
    assert not (state / "wal-recovery").exists()


def test_truncated_wal_starts_from_the_last_complete_entry_loudly(
    crashed_state: tuple[Path, Path], tmp_path: Path
) -> None:
    """Log cut inside its last entries: start from the last whole entry, error line, log kept, no holes."""
    crashed, public = crashed_state
    state = _copy(crashed, tmp_path)
    wal = state / "registry.duckdb.wal"
    original = wal.read_bytes()
    entries = _entries(wal)
    cut_at = entries[len(entries) * 2 // 3][0] + 20  # inside an entry two thirds of the way in
    wal.write_bytes(original[:cut_at])
    server = _start(state, public)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        assert admin.get("/v1/stores/S-WAL").status_code == 200  # the checkpointed state is there
    server.process.stop()
    keys = _stored_keys(state)
    assert 0 < len(keys) < len(KEYS)
    assert keys == KEYS[: len(keys)], "a prefix of what was written: the last consistent state"
    [event] = _log_events(server, "db_wal_incomplete_tail")
    assert event["level"] == "error"
    assert event["bytes_replayed"] + event["bytes_not_replayed"] == cut_at
    kept = Path(str(event["kept_at"]))
    assert kept.parent == state / "wal-recovery" and kept.read_bytes() == original[:cut_at]


def test_garbled_wal_is_refused_clearly_then_discarded_on_request(
    crashed_state: tuple[Path, Path], tmp_path: Path
) -> None:
    """A checksum mismatch: the server refuses to start and says what to do; --discard-damaged-wal starts."""
    crashed, public = crashed_state
    state = _copy(crashed, tmp_path)
    wal, db_file = state / "registry.duckdb.wal", state / "registry.duckdb"
    data = bytearray(wal.read_bytes())
    offset, size = _entries(wal)[len(_entries(wal)) // 2]
    data[offset + 16 + size // 2] ^= 0xFF  # one byte inside an entry's payload
    wal.write_bytes(bytes(data))
    before = _digest(db_file, wal)
    command = [sys.executable, "-m", "shelfcast", "server", "run", "--host", "127.0.0.1", "--port",
               str(free_port()), "--state-dir", str(state)]  # fmt: skip
    env = {**os.environ, "SHELFCAST_SERVER__ADMIN_TOKEN": ADMIN_TOKEN}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert refused.returncode == 1, refused.stderr
    assert "cannot be replayed" in refused.stderr and "--discard-damaged-wal" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _digest(db_file, wal) == before, "a refused start changes nothing"

    server = _start(state, public, "--discard-damaged-wal")
    server.process.stop()
    [event] = _log_events(server, "db_wal_discarded")
    assert event["level"] == "error" and "checksum" in str(event["reason"])
    assert Path(str(event["kept_at"])).read_bytes() == bytes(data)
    assert _stored_keys(state) == [], "started from the last checkpoint (the store, none of the reports)"


def test_wal_that_is_not_a_log_is_refused(crashed_state: tuple[Path, Path], tmp_path: Path) -> None:
    """A log overwritten from its first byte (DuckDB alone would skip it silently) is refused too."""
    crashed, _ = crashed_state
    state = _copy(crashed, tmp_path)
    wal = state / "registry.duckdb.wal"
    wal.write_bytes(b"\0" * 512 + wal.read_bytes()[512:])
    command = [sys.executable, "-m", "shelfcast", "server", "init", "--state-dir", str(state)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "does not start with a DuckDB log header" in refused.stderr, refused
    assert wal.is_file()
