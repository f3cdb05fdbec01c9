"""The group-committed write path of a real server: counted once, failures alone, 429 when full, durable."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx

from tests.server.conftest import RunningServer, create_store, enroll, launch, unique

MODEL = "writes"


def accuracy(store_id: str, report_id: str, n: int) -> dict[str, Any]:
    today = date.today().isoformat()
    row = {"category": "food", "horizon_bucket": "1-7", "n": n, "abs_err_sum": 2.0 * n,
           "abs_y_sum": 10.0 * n, "err_sum": 0.5 * n}  # fmt: skip
    return {"report_id": report_id, "store_id": store_id, "model_name": MODEL, "version": 1,
            "period_start": today, "period_end": today, "created_at": datetime.now(UTC).isoformat(),
            "rows": [row]}  # fmt: skip


def heartbeat(store_id: str) -> dict[str, Any]:
    return {"store_id": store_id, "state": "serving", "model_name": MODEL, "active_version": 1,
            "sent_at": datetime.now(UTC).isoformat()}  # fmt: skip


def stores(running: RunningServer, count: int) -> dict[str, str]:
    """``count`` enrolled stores: store id -> its agent credential."""
    tokens = {}
    with running.admin() as admin:
        for _ in range(count):
            store_id = unique("ws")
            tokens[store_id] = enroll(running.url, store_id, create_store(admin, store_id, MODEL))
    return tokens


async def post_all(url: str, posts: list[tuple[str, str, dict[str, Any], dict[str, str]]]) -> list[Any]:
    """Send every ``(token, path, body, headers)`` at once; the responses in order."""
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=200)
    ) as client:
        return await asyncio.gather(
            *(
                client.post(path, json=body, headers={"Authorization": f"Bearer {token}", **headers})
                for token, path, body, headers in posts
            )
        )


def in_file(state_dir: Path, sql: str) -> Any:
    con = duckdb.connect(str(state_dir / "registry.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def write_stats(running: RunningServer) -> tuple[float, float]:
    """(transactions, requests) of the group writer, from ``/metrics``."""
    with running.admin() as admin:
        text = admin.get("/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith(("shelfcast_write_batches_total ", "shelfcast_write_requests_total ")):
            name, value = line.split()
            values[name] = float(value)
    return values["shelfcast_write_batches_total"], values["shelfcast_write_requests_total"]


def test_concurrent_reports_are_each_counted_once_in_the_file(tmp_path: Path, signing_key: Path) -> None:
    """120 reports and 40 heartbeats sent at once (every report twice): all acknowledged, the resends as
    duplicates, fewer commits than requests, and the stopped server's file holds each report once."""
    running = launch(tmp_path, signing_key.with_name(signing_key.name + ".pub"),
                     {"SHELFCAST_WRITES__MAX_WAIT_MS": "20"})  # fmt: skip
    try:
        tokens = stores(running, 8)
        posts = []
        for i in range(120):
            store_id = list(tokens)[i % 8]
            report = accuracy(store_id, f"{store_id}-r{i}", 1 + i % 5)
            posts += [(tokens[store_id], "/v1/accuracy", report, {})] * 2
        for i in range(40):
            store_id = list(tokens)[i % 8]
            posts.append(
                (tokens[store_id], "/v1/heartbeats", heartbeat(store_id), {"Idempotency-Key": f"k{i}"})
            )
        answers = asyncio.run(post_all(running.url, posts))
        batches, requests = write_stats(running)
    finally:
        running.process.stop()
    assert [a.status_code for a in answers] == [202] * len(posts)
    reports = [a.json() for a in answers[:240]]
    assert sum(r["duplicate"] for r in reports) == 120
    assert requests >= 280 and batches < requests
    assert in_file(
        running.state_dir, "SELECT count(*), count(DISTINCT report_id) FROM monitoring_reports"
    ) == [(120, 120)]
    expected_n = sum(1 + i % 5 for i in range(120))
    assert in_file(running.state_dir, "SELECT count(*), sum(n) FROM accuracy_rows") == [(120, expected_n)]
    assert in_file(running.state_dir, "SELECT count(*) FROM report_keys") == [(40,)]


def test_a_bad_request_fails_alone_while_its_batch_mates_are_stored(
    tmp_path: Path, signing_key: Path
) -> None:
    """An admin heartbeat naming an unknown store fails inside its batch (404); the reports and heartbeats
    committed with it are all stored."""
    running = launch(tmp_path, signing_key.with_name(signing_key.name + ".pub"),
                     {"SHELFCAST_WRITES__MAX_WAIT_MS": "200"})  # fmt: skip
    try:
        tokens = stores(running, 4)
        posts = []
        for i in range(40):
            store_id = list(tokens)[i % 4]
            posts.append((tokens[store_id], "/v1/accuracy", accuracy(store_id, f"{store_id}-b{i}", 2), {}))
        bad = (running.admin_token, "/v1/heartbeats", heartbeat("no-such-store"), {"Idempotency-Key": "bad"})
        posts.insert(20, bad)
        answers = asyncio.run(post_all(running.url, posts))
        batches, _ = write_stats(running)
    finally:
        running.process.stop()
    statuses = [a.status_code for a in answers]
    assert statuses[20] == 404 and answers[20].headers["content-type"] == "application/problem+json"
    assert statuses[:20] + statuses[21:] == [202] * 40
    assert batches < 40  # the bad one shared a batch
    assert in_file(running.state_dir, "SELECT count(*) FROM monitoring_reports") == [(40,)]
    assert in_file(running.state_dir, "SELECT count(*) FROM report_keys") == [(0,)]


def test_a_full_queue_answers_429_with_retry_after_and_stores_nothing_of_it(
    tmp_path: Path, signing_key: Path
) -> None:
    """With a queue of one, a burst of reports is partly refused (429, Retry-After, problem+json); exactly
    the acknowledged ones are stored, and the refused ones are stored once sent again."""
    running = launch(
        tmp_path,
        signing_key.with_name(signing_key.name + ".pub"),
        {"SHELFCAST_WRITES__MAX_QUEUE": "1", "SHELFCAST_WRITES__MAX_BATCH": "1",
         "SHELFCAST_WRITES__RETRY_AFTER_SECONDS": "7"},
    )  # fmt: skip
    try:
        tokens = stores(running, 4)
        posts = []
        for i in range(120):
            store_id = list(tokens)[i % 4]
            posts.append((tokens[store_id], "/v1/accuracy", accuracy(store_id, f"{store_id}-q{i}", 1), {}))
        answers = asyncio.run(post_all(running.url, posts))
        refused = [p for p, a in zip(posts, answers, strict=True) if a.status_code == 429]
        accepted = sum(a.status_code == 202 for a in answers)
        assert refused and accepted + len(refused) == len(posts)
        sample = next(a for a in answers if a.status_code == 429)
        assert sample.headers["retry-after"] == "7"
        assert sample.headers["content-type"] == "application/problem+json"
        assert sample.json()["status"] == 429
        with running.admin() as admin:
            counted = admin.get("/v1/accuracy", params={"group_by": "model_name", "model": MODEL}).json()
        assert counted[0]["reports"] == accepted
        again = [asyncio.run(post_all(running.url, [p]))[0] for p in refused]
        assert {a.status_code for a in again} == {202}
        assert not any(a.json()["duplicate"] for a in again)
    finally:
        running.process.stop()
    assert in_file(running.state_dir, "SELECT count(*) FROM monitoring_reports") == [(120,)]


def test_acknowledged_reports_survive_a_kill_of_the_server(tmp_path: Path, signing_key: Path) -> None:
    """Reports stream in from 16 senders; the server is killed (SIGKILL) mid-stream; after a restart every
    report acknowledged before the kill is in the database."""
    running = launch(tmp_path, signing_key.with_name(signing_key.name + ".pub"),
                     {"SHELFCAST_WRITES__MAX_WAIT_MS": "5"})  # fmt: skip
    tokens = stores(running, 16)
    acknowledged: list[str] = []
    lock = threading.Lock()

    def sender(store_id: str) -> None:
        with httpx.Client(base_url=running.url, timeout=10,
                          headers={"Authorization": f"Bearer {tokens[store_id]}"}) as client:  # fmt: skip
            for i in range(10_000):
                report_id = f"{store_id}-k{i}"
                try:
                    answer = client.post("/v1/accuracy", json=accuracy(store_id, report_id, 1))
                except httpx.HTTPError:
                    return
                if answer.status_code == 202:
                    with lock:
                        acknowledged.append(report_id)

    threads = [threading.Thread(target=sender, args=(s,)) for s in tokens]
    for thread in threads:
        thread.start()
    try:
        while True:
            with lock:
                if len(acknowledged) >= 300:
                    break
            threading.Event().wait(0.02)
        assert running.process.proc is not None
        running.process.proc.kill()
        running.process.proc.wait()
        for thread in threads:
            thread.join(30)
        running.restart()
        with running.admin() as admin:
            counted = admin.get("/v1/accuracy", params={"group_by": "store_id", "model": MODEL}).json()
    finally:
        running.process.stop()
    stored = {r[0] for r in in_file(running.state_dir, "SELECT report_id FROM monitoring_reports")}
    assert set(acknowledged) <= stored
    assert sum(g["reports"] for g in counted) == len(stored)


def test_a_report_of_many_rows_is_stored_whole(tmp_path: Path, signing_key: Path) -> None:
    """A 1,201-row accuracy report (several multi-row inserts) is stored with every row, in one commit."""
    running = launch(tmp_path, signing_key.with_name(signing_key.name + ".pub"))
    try:
        tokens = stores(running, 1)
        store_id = next(iter(tokens))
        report = accuracy(store_id, f"{store_id}-big", 1)
        row = report["rows"][0]
        report["rows"] = [{**row, "category": f"c{i:04d}", "n": 1 + i % 3} for i in range(1201)]
        answer = asyncio.run(post_all(running.url, [(tokens[store_id], "/v1/accuracy", report, {})]))[0]
        assert answer.status_code == 202 and answer.json()["rows"] == 1201
    finally:
        running.process.stop()
    expected = sum(1 + i % 3 for i in range(1201))
    assert in_file(
        running.state_dir, "SELECT count(*), sum(n), count(DISTINCT category) FROM accuracy_rows"
    ) == [(1201, expected, 1201)]
