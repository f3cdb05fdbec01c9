"""The group writer on a real DuckDB file: batches, a failing job alone, a full queue, the flush."""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from server.db import Database
from server.errors import NotFoundError, OverloadedError
from server.writer import GroupWriter


class Held:
    """A flush holding numbers in memory, written to table ``held`` with the next batch."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.values: list[int] = []
        self.fail = False

    def drain(self) -> list[int] | None:
        values, self.values = self.values, []
        return values or None

    def write(self, held: list[int]) -> None:
        if self.fail:
            raise RuntimeError("flush broken")
        for value in held:
            self.db.execute("INSERT INTO held VALUES (?)", [value])

    def restore(self, held: list[int]) -> None:
        self.values.extend(held)


@pytest.fixture
def db(tmp_path: Path) -> Any:
    database = Database.open(tmp_path / "writer.duckdb", migrate=False)
    database.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    database.execute("CREATE TABLE held (value INTEGER)")
    yield database
    database.close()


def writer_over(db: Database, flush: Held | None = None, **settings: Any) -> GroupWriter:
    options: dict[str, Any] = {
        "max_batch": 64,
        "max_wait_seconds": 0.2,
        "max_queue": 256,
        "retry_after_seconds": 3,
        "flush_every_seconds": 0.1,
        **settings,
    }
    writer = GroupWriter(db, flush=flush, **options)
    writer.start()
    return writer


def insert(db: Database, value: int) -> Any:
    def work() -> int:
        db.execute("INSERT INTO items VALUES (?)", [value])
        return value

    return work


def ids(db: Database) -> list[int]:
    return [r["id"] for r in db.fetch_all("SELECT id FROM items ORDER BY id")]


def test_concurrent_jobs_share_commits_and_each_gets_its_result(db: Database) -> None:
    """Forty concurrent jobs are committed in fewer transactions than jobs, each answered with its result."""
    writer = writer_over(db)
    try:
        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(lambda i: writer.submit(insert(db, i)), range(40)))
    finally:
        writer.stop()
    assert results == list(range(40))
    assert ids(db) == list(range(40))
    assert writer.jobs == 40 and writer.batches < 40


def test_a_failing_job_fails_alone_and_its_batch_mates_commit(db: Database) -> None:
    """A job breaking a constraint (DuckDB aborts the transaction) and one raising a server error each get
    their own error; every other job of their batches is committed once."""
    db.execute("INSERT INTO items VALUES (1000)")
    writer = writer_over(db)

    def not_found() -> None:
        db.execute("INSERT INTO items VALUES (2000)")
        raise NotFoundError("no such store")

    jobs = [insert(db, i) for i in range(10)] + [insert(db, 1000), not_found]
    outcomes: list[Any] = [None] * len(jobs)

    def run(index: int) -> None:
        try:
            outcomes[index] = writer.submit(jobs[index])
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        writer.stop()
    assert outcomes[:10] == list(range(10))
    assert "constraint" in str(outcomes[10]).lower()
    assert isinstance(outcomes[11], NotFoundError)
    assert ids(db) == [*range(10), 1000]
    assert writer.batches < 10


def test_grouped_jobs_run_once_per_batch_and_a_failing_one_fails_alone(db: Database) -> None:
    """Thirty grouped requests (one of them breaking a constraint) and plain jobs between them: the group
    runs with many items per call (one statement for them all); its failing call runs each item again
    alone, so only the breaking request fails and every other one is committed once."""
    db.execute("INSERT INTO items VALUES (1000)")
    writer = writer_over(db)
    calls: list[list[int]] = []

    def insert_all(values: list[int]) -> list[int]:
        calls.append(values)
        db.execute(f"INSERT INTO items VALUES {', '.join('(?)' for _ in values)}", values)
        return [-v for v in values]

    async def offer() -> list[Any]:
        grouped = [writer.run_grouped(insert_all, i) for i in [*range(15), 1000, *range(15, 29)]]
        plain = [writer.run(insert(db, i)) for i in range(100, 105)]
        return await asyncio.gather(*grouped, *plain, return_exceptions=True)

    try:
        outcomes = asyncio.run(offer())
    finally:
        writer.stop()
    assert outcomes[:15] == [-i for i in range(15)]
    assert "constraint" in str(outcomes[15]).lower()
    assert outcomes[16:30] == [-i for i in range(15, 29)]
    assert outcomes[30:] == list(range(100, 105))
    assert ids(db) == [*range(29), *range(100, 105), 1000]
    assert max(len(c) for c in calls) > 1  # many requests' items in one call
    assert [1000] in calls  # the failing call's items ran again alone


def test_a_full_queue_refuses_at_once_and_writes_nothing(db: Database) -> None:
    """With the writer held inside a batch and the queue full, a new job is refused with Retry-After."""
    release = threading.Event()
    entered = threading.Event()
    writer = writer_over(db, max_queue=1, max_batch=1, max_wait_seconds=0.0)

    def held_open() -> None:
        entered.set()
        release.wait(10)

    try:
        first = threading.Thread(target=writer.submit, args=(held_open,))
        first.start()
        assert entered.wait(10)
        queued = threading.Thread(target=writer.submit, args=(insert(db, 1),))
        queued.start()
        while writer.queued < 1:
            release.wait(0.01)
        with pytest.raises(OverloadedError) as refused:
            writer.submit(insert(db, 2))
        assert refused.value.retry_after_seconds == 3
        release.set()
        first.join()
        queued.join()
    finally:
        release.set()
        writer.stop()
    assert ids(db) == [1]


def test_the_flush_rides_with_the_next_batch_or_commits_when_idle(db: Database) -> None:
    """Held values are written with the next batch once due, or alone when no batch comes; a broken flush
    is dropped without failing the jobs it rode with."""
    held = Held(db)
    writer = writer_over(db, held, flush_every_seconds=0.0)
    try:
        held.values.extend([1, 2])
        writer.submit(insert(db, 7))
        assert sorted(r["value"] for r in db.fetch_all("SELECT value FROM held")) == [1, 2]
        held.values.append(3)
        for _ in range(200):
            if db.scalar("SELECT count(*) FROM held") == 3:
                break
            threading.Event().wait(0.01)
        assert db.scalar("SELECT count(*) FROM held") == 3
        held.fail = True
        held.values.append(4)
        assert writer.submit(insert(db, 8)) == 8
    finally:
        writer.stop()
    assert ids(db) == [7, 8]
    assert db.scalar("SELECT count(*) FROM held") == 3


def test_reads_do_not_wait_for_a_batch_in_progress(db: Database) -> None:
    """While the writer holds its transaction open, another thread reads the last committed state."""
    db.execute("INSERT INTO items VALUES (1)")
    release = threading.Event()
    entered = threading.Event()
    writer = writer_over(db)

    def slow() -> None:
        db.execute("INSERT INTO items VALUES (2)")
        entered.set()
        release.wait(10)

    try:
        job = threading.Thread(target=writer.submit, args=(slow,))
        job.start()
        assert entered.wait(10)
        seen: list[list[int]] = []
        reader = threading.Thread(target=lambda: seen.append(ids(db)))
        reader.start()
        reader.join(5)
        assert seen == [[1]]
        release.set()
        job.join()
    finally:
        release.set()
        writer.stop()
    assert ids(db) == [1, 2]


def test_a_thread_s_connection_goes_with_the_thread(db: Database) -> None:
    """Threads that read and end leave no connection behind (a server's worker threads come and go)."""
    before = db.open_connections
    for _ in range(20):
        thread = threading.Thread(target=ids, args=(db,))
        thread.start()
        thread.join()
    gc.collect()
    assert db.open_connections == before
