"""Reports against a real server: SIGKILL mid-write, redelivery, duplicate and concurrent deliveries.

Every report is counted exactly once: a report the server acknowledged survives a crash whole, a
report it did not acknowledge is either whole or absent, and delivering any of them again (one after
the other, or from many connections at the same instant) stores nothing twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from tests.server.conftest import RunningServer, create_store, enroll, launch, make_bundle, publish

pytestmark = pytest.mark.slow

STORE = "S-REP"
ROWS_PER_REPORT = 40


def accuracy_report(report_id: str, rows: int = ROWS_PER_REPORT) -> dict[str, Any]:
    """An accuracy report of ``rows`` rows (one transaction of many inserts on the server)."""
    return {
        "report_id": report_id,
        "store_id": STORE,
        "model_name": "demand",
        "version": 1,
        "period_start": str(date(2026, 1, 1)),
        "period_end": str(date(2026, 1, 7)),
        "created_at": datetime.now(UTC).isoformat(),
        "rows": [
            {"category": f"c{i % 50}", "horizon_bucket": f"h{i // 50}", "n": 7, "abs_err_sum": 3.5,
             "abs_y_sum": 70.0, "err_sum": -1.0}
            for i in range(rows)
        ],
    }  # fmt: skip


def stored(state: Path) -> dict[str, int]:
    """Accuracy rows per report the (stopped) server recorded as received; no rows outside of them."""
    db = duckdb.connect(str(state / "registry.duckdb"), read_only=True)
    try:
        claimed = [
            report_id
            for (report_id,) in db.execute(
                "SELECT report_id FROM monitoring_reports WHERE kind = 'accuracy' AND store_id = ?", [STORE]
            ).fetchall()
        ]
        rows = dict(
            db.execute(
                "SELECT report_id, count(*) FROM accuracy_rows WHERE store_id = ? GROUP BY report_id", [STORE]
            ).fetchall()
        )
    finally:
        db.close()
    assert len(claimed) == len(set(claimed))
    assert set(rows) <= set(claimed), "accuracy rows of a report the server never recorded"
    return {report_id: int(rows.get(report_id, 0)) for report_id in claimed}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RunningServer, str, Path]]:
    """A fresh server with one enrolled store: (server, agent token, private signing key)."""
    from forecasting.bundle.signing import generate_key_files

    private, public, _ = generate_key_files(tmp_path / "signing.key")
    running = launch(tmp_path / "srv", public)
    try:
        with running.admin() as admin:
            token = enroll(running.url, STORE, create_store(admin, STORE, "demand"))
        yield running, token, private
    finally:
        running.process.stop()


def restart(server: RunningServer) -> None:
    from tests.server.conftest import start_process

    server.process = start_process(server.state_dir, server.port, server.trusted_key, server.extra_env)


def test_sigkill_mid_write_leaves_whole_reports_and_redelivery_counts_each_once(
    server: tuple[RunningServer, str, Path],
) -> None:
    """Killed while four connections write reports: acked ones whole, none half; resent, each stored once."""
    running, token, _ = server
    acked: set[str] = set()
    sent: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with running.client(token) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                report_id = f"acc-{n}-{i:05d}"
                with lock:
                    sent.append(report_id)
                try:
                    answer = client.post("/v1/accuracy", json=accuracy_report(report_id))
                except httpx.HTTPError:
                    return  # the server is gone
                if answer.status_code in (200, 201, 202):
                    with lock:
                        acked.add(report_id)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(writer, n) for n in range(4)]
        deadline = time.monotonic() + 30
        while len(acked) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        running.process.kill()  # SIGKILL while the writers are mid-request
        stop.set()
        for future in futures:
            future.result(timeout=30)
    assert len(acked) >= 6 and len(sent) > len(acked)

    counts = stored(running.state_dir)
    assert acked <= set(counts), "every acknowledged report survives the crash"
    assert set(counts.values()) == {ROWS_PER_REPORT}, "no report is stored half-written"

    restart(running)
    with running.client(token) as client:
        answers = {rid: client.post("/v1/accuracy", json=accuracy_report(rid)).json() for rid in sent}
    running.process.stop()
    assert all(answers[rid]["duplicate"] for rid in counts), "stored before the crash: a duplicate now"
    assert not any(answers[rid]["duplicate"] for rid in set(sent) - set(counts))
    final = stored(running.state_dir)
    assert set(final) == set(sent) and set(final.values()) == {ROWS_PER_REPORT}


def test_duplicate_and_concurrent_deliveries_are_counted_once(
    server: tuple[RunningServer, str, Path],
) -> None:
    """The same report (and heartbeat) sent from 16 connections at the same instant is stored once."""
    running, token, _ = server
    barrier = threading.Barrier(16)
    report = accuracy_report("acc-concurrent")
    beat = {"store_id": STORE, "state": "idle", "sent_at": datetime.now(UTC).isoformat()}

    def deliver(_: int) -> tuple[bool, bool]:
        with running.client(token) as client:
            barrier.wait(10)
            first = client.post("/v1/accuracy", json=report)
            again = client.post("/v1/heartbeats", json=beat, headers={"Idempotency-Key": "hb-concurrent"})
            assert first.status_code in (200, 201, 202) and again.status_code == 202, (first.text, again.text)
            return bool(first.json()["duplicate"]), bool(again.json()["duplicate"])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(deliver, range(16)))
    assert [dup for dup, _ in results].count(False) == 1, "exactly one delivery stores the report"
    assert [dup for _, dup in results].count(False) == 1, "exactly one delivery stores the heartbeat"
    running.process.stop()
    assert stored(running.state_dir) == {"acc-concurrent": ROWS_PER_REPORT}
    db = duckdb.connect(str(running.state_dir / "registry.duckdb"), read_only=True)
    try:
        keys = db.execute(
            "SELECT count(*) FROM report_keys WHERE idempotency_key = 'hb-concurrent'"
        ).fetchone()
    finally:
        db.close()
    assert keys == (1,)


def test_sigkill_mid_upload_registers_nothing_and_the_upload_can_be_repeated(
    server: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    """Killed while a bundle streams in: no version, no partial blob; after a restart the upload works."""
    running, _, private = server
    archive = make_bundle(tmp_path, private, "crashy", 1, payload=b"p" * 300_000)
    data = archive.read_bytes()
    half_sent = threading.Event()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        half_sent.set()
        release.wait(30)
        yield data[len(data) // 2 :]

    def upload() -> None:
        with running.admin() as admin, pytest.raises(httpx.HTTPError):
            admin.post(
                "/v1/models/crashy/versions", content=body(), headers={"Content-Type": "application/x-tar"}
            )

    thread = threading.Thread(target=upload)
    thread.start()
    assert half_sent.wait(30)
    time.sleep(0.3)  # the server is reading the body
    running.process.kill()
    release.set()
    thread.join(30)
    blobs_before = sorted(p.name for p in (running.state_dir / "blobs" / "sha256").glob("*/*"))
    restart(running)
    with running.admin() as admin:
        versions = admin.get("/v1/models/crashy/versions")
        assert versions.status_code == 404 or versions.json()["items"] == [], versions.text
        assert not list((running.state_dir / "tmp").glob("upload-*")), "partial uploads are cleared at start"
        assert blobs_before == []
        answer = publish(admin, archive, "crashy")
        assert answer.status_code == 201, answer.text
        assert answer.json()["version"] == 1
