"""Group commit: one thread writes the hot-path requests, many of them per transaction.

DuckDB commits a file's transactions one after the other, each with a sync of its write-ahead log, so a
server committing every heartbeat and report on its own tops out at a few hundred commits a second. The
``GroupWriter`` owns the writing: requests hand it their work (a function running the request's
statements) through a bounded queue; its thread takes every job waiting at that moment (at most
``max_batch``, waiting at most ``max_wait_seconds`` for more) and runs them all in one transaction. Each
request is answered only once the commit holding its work is done, so an acknowledged write is durable.

A job that raises fails alone: the transaction is rolled back and the other jobs of the batch run again
without it, in a new transaction; the failing request gets its own error. A commit that fails as a whole
is retried with each job in a transaction of its own. When the queue is full a new job is refused at
once with ``OverloadedError`` (HTTP 429 with ``Retry-After``): nothing of it was written.

Work that is cheaper done for many requests at once (one idempotency lookup for every key of the batch:
each statement costs the database a fixed overhead of milliseconds) is a *grouped* job (``run_grouped``):
the batch calls the group's function once with the items of all its requests that named it. When that
call raises for several items, they are taken out of the batch and run again one by one, each in its own
transaction, so a failing request still fails alone.

The writer also carries a ``Flush``: writes kept in memory (such as the last contact of polling stores)
that it writes at most every ``flush_every_seconds``, in the transaction of the first batch after that
time, or on its own when no batch comes; and once more when it stops.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from forecasting.common.logs import get_logger
from server.errors import OverloadedError, ServerError
from server.storage import SqlStore

log = get_logger("server.writer")

T = TypeVar("T")
Item = TypeVar("Item")


class Flush(Protocol):
    """Writes held in memory and written with the next batch."""

    def drain(self) -> Any:
        """Take what is held (None when nothing is)."""

    def write(self, held: Any) -> None:
        """Write what ``drain`` took (inside the batch's transaction)."""

    def restore(self, held: Any) -> None:
        """Hold again what ``drain`` took, when its transaction did not commit."""


Group = Callable[[list[Any]], list[Any]]  # the items of a batch's requests -> one result per item


@dataclass(eq=False)
class _Job:
    work: Callable[[], Any] | None
    group: Group | None = None
    item: Any = None
    future: Future[Any] = field(default_factory=Future)


class _FlushFailedError(Exception):
    """The flush's write raised: the batch runs again without it (what it held is dropped, logged)."""


class _JobFailedError(Exception):
    """One job of a batch raised: roll back, answer it with its error, run the others again."""

    def __init__(self, job: _Job, error: BaseException) -> None:
        super().__init__()
        self.job = job
        self.error = error


class _GroupFailedError(Exception):
    """A grouped call for several jobs raised: roll back, run the others, then each of these alone."""

    def __init__(self, jobs: list[_Job]) -> None:
        super().__init__()
        self.jobs = jobs


_STOP = object()


class GroupWriter:
    """The server's one writer: commits queued jobs in batches, answers each after its commit."""

    def __init__(
        self,
        db: SqlStore,
        *,
        max_batch: int,
        max_wait_seconds: float,
        max_queue: int,
        retry_after_seconds: int,
        flush_every_seconds: float,
        flush: Flush | None = None,
    ) -> None:
        self.db = db
        self.max_batch = max(1, max_batch)
        self.max_wait_seconds = max(0.0, max_wait_seconds)
        self.retry_after_seconds = retry_after_seconds
        self.flush_every_seconds = flush_every_seconds
        self._flushed_at = time.monotonic()
        self.flush = flush
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, max_queue))
        self._thread: threading.Thread | None = None
        self._running = False
        self.batches = 0  # committed transactions, for the metrics
        self.jobs = 0  # jobs answered

    # --- requests ---------------------------------------------------------------------------------

    def submit(self, work: Callable[[], T]) -> T:
        """Run ``work`` in the next batch and wait for its commit; its result, or its error."""
        result: T = self._enqueue(work).future.result()
        return result

    async def run(self, work: Callable[[], T]) -> T:
        """``submit`` for a coroutine: the event loop keeps serving while the batch commits."""
        result: T = await asyncio.wrap_future(self._enqueue(work).future)
        return result

    async def run_grouped(self, group: Callable[[list[Item]], list[T]], item: Item) -> T:
        """Have ``group`` called with ``item`` and the items of every other request of the batch that names
        the same ``group`` (in their order; it returns one result per item); this item's result, after
        the commit."""
        result: T = await asyncio.wrap_future(self._enqueue(None, group, item).future)
        return result

    def _enqueue(self, work: Callable[[], Any] | None, group: Group | None = None, item: Any = None) -> _Job:
        if not self._running:
            raise ServerError("the server's writer is not running")
        job = _Job(work, group, item)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise OverloadedError(
                f"the server's write queue is full ({self._queue.maxsize} requests waiting); nothing of "
                f"this request was stored: send it again in {self.retry_after_seconds} s",
                self.retry_after_seconds,
            ) from None
        return job

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # --- the writing thread -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="shelfcast-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Refuse new jobs, commit every queued one (and the flush), then end the thread."""
        if self._thread is None:
            return
        self._running = False
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            until_flush = self._flushed_at + self.flush_every_seconds - time.monotonic()
            try:
                first = self._queue.get(timeout=max(until_flush, 0.001))
            except queue.Empty:
                self._commit([])
                continue
            batch: list[_Job] = []
            if first is _STOP:
                stopping = True
            else:
                batch.append(first)
                stopping = self._gather(batch)
            self._commit(batch, flush_now=stopping)
        while True:  # jobs queued after the stop sentinel (a racing submit) are still answered
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not _STOP:
                self._commit([late])

    def _gather(self, batch: list[_Job]) -> bool:
        """Add the jobs waiting now (and arriving within the wait) to ``batch``; True on the stop sentinel."""
        deadline = time.monotonic() + self.max_wait_seconds
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _commit(self, batch: list[_Job], *, flush_now: bool = False) -> None:
        """Run ``batch`` (and the flush, when due) in one transaction; a failing job fails alone."""
        held = self._take_flush(flush_now=flush_now)
        if not batch and held is None:
            return
        pending = list(batch)
        alone: list[_Job] = []  # jobs of a failed group call: each runs again in a transaction of its own
        while pending or held is not None:
            try:
                results = self._transaction(pending, held)
            except _FlushFailedError:
                log.exception("write_flush_failed", detail="what it held is dropped")
                held = None
                continue
            except _JobFailedError as abort:
                pending.remove(abort.job)
                self._answer(abort.job, error=abort.error)
                continue
            except _GroupFailedError as abort:
                log.warning("write_group_failed", jobs=len(abort.jobs), detail="each runs again alone")
                for job in abort.jobs:
                    pending.remove(job)
                alone.extend(abort.jobs)
                continue
            except Exception as exc:  # the commit itself failed: each job on its own
                if self.flush is not None and held is not None:
                    self.flush.restore(held)
                log.exception("write_batch_failed", jobs=len(pending), error_type=type(exc).__name__)
                if len(pending) == 1:
                    self._answer(pending[0], error=exc)
                else:
                    alone.extend(pending)
                break
            self.batches += 1
            for job, result in zip(pending, results, strict=True):
                self._answer(job, result=result)
            break
        for job in alone:
            self._commit([job])

    def _take_flush(self, *, flush_now: bool) -> Any:
        """What the flush holds, when it is due (or ``flush_now``); None otherwise."""
        if self.flush is None:
            return None
        if not flush_now and time.monotonic() < self._flushed_at + self.flush_every_seconds:
            return None
        self._flushed_at = time.monotonic()
        return self.flush.drain()

    def _transaction(self, jobs: list[_Job], held: Any) -> list[Any]:
        results: dict[_Job, Any] = {}
        groups: dict[Group, list[_Job]] = {}
        for job in jobs:
            if job.group is not None:
                groups.setdefault(job.group, []).append(job)
        with self.db.transaction():
            if held is not None and self.flush is not None:
                try:
                    self.flush.write(held)
                except Exception as exc:
                    raise _FlushFailedError from exc
            for job in jobs:
                if job.work is not None:
                    try:
                        results[job] = job.work()
                    except Exception as exc:
                        raise _JobFailedError(job, exc) from exc
                elif job.group in groups:  # the group runs where its first job stands
                    members = groups.pop(job.group)
                    results.update(zip(members, _call_group(job.group, members), strict=True))
        return [results[job] for job in jobs]

    def _answer(self, job: _Job, *, result: Any = None, error: BaseException | None = None) -> None:
        self.jobs += 1
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


def _call_group(group: Group, members: list[_Job]) -> list[Any]:
    """``group`` over the members' items: one result per member, or the error that makes them fail."""
    try:
        results = group([job.item for job in members])
    except Exception as exc:
        if len(members) == 1:
            raise _JobFailedError(members[0], exc) from exc
        raise _GroupFailedError(members) from exc
    return results
