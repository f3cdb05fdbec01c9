"""The running agent: the state its inventory API reads and the work loop (one worker thread) that
changes it; :mod:`agent.service` runs both in one process.

The work loop ingests sales, runs the update lifecycle when a poll is due, scores (after activation, on
the schedule, on demand), queues heartbeats and flushes the outbox. The API only reads the
current :class:`ForecastView` (swapped atomically) and hands commands to the loop through a queue.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from agent.config import AgentConfig
from agent.errors import NoActiveModelError, ScoringError
from agent.forecasts import ForecastView
from agent.lifecycle import Lifecycle
from agent.metrics import AgentMetrics
from agent.paths import StatePaths, read_symlink
from agent.record import Record, VersionRef, count_error, read_credential, resolve_errors, save_record
from agent.replenishment import ProposalView, load_proposals, refresh_proposals
from agent.scoring import Scorer, ScoringSettings, ShadowModel, score_store
from agent.serving import read_serving
from agent.sync import SyncClient
from forecasting.common.contracts import Heartbeat
from forecasting.common.logs import get_logger
from forecasting.common.retry import backoff_seconds
from forecasting.common.version import shelfcast_version

if TYPE_CHECKING:
    from agent.store import LocalStore

log = get_logger("agent.runtime")

TICK_SECONDS = 1.0
TRANSPORT_ERRORS = frozenset({"sync", "download", "report"})  # no use reporting these at once
STALL_SECONDS = 120.0


Command = Callable[[], Any]


class AgentRuntime:
    """State shared by the API and the work loop."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.paths = StatePaths(config.state_path)
        self.paths.ensure()
        config.sales_path.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.sales_arrived = threading.Event()  # set by POST /v1/sales: measure on the next tick
        self.inventory_arrived = threading.Event()  # set by POST /v1/inventory: new proposals next tick
        self.view: ForecastView | None = None
        self.proposals: ProposalView | None = None
        self.metrics = AgentMetrics(
            config.agent.store_id,
            {
                "active_version": lambda: self.record.active.version if self.record.active else 0,
                "served_version": lambda: self.view.pointer.version if self.view else 0,
                "last_scored_timestamp_seconds": lambda: (
                    self.view.pointer.scored_at.timestamp() if self.view else 0.0
                ),
                "last_sync_timestamp_seconds": lambda: (
                    self.record.last_sync_at.timestamp() if self.record.last_sync_at else 0.0
                ),
                "outbox_reports": lambda: float(self.store.outbox_size()) if self.store else 0.0,
                "ready": lambda: 1 if self.is_ready() else 0,
            },
        )
        self.store: LocalStore | None = None
        self.lifecycle: Lifecycle | None = None
        self.record = Record()
        self.commands: queue.Queue[tuple[Command, Future[Any]]] = queue.Queue()
        self.started_at = time.time()
        self.last_tick = time.monotonic()
        self.busy_until = 0.0
        self.ready_event = threading.Event()
        self._next_poll = 0.0
        self._poll_failures = 0
        self._next_heartbeat = 0.0
        self._next_flush = 0.0
        self._flush_failures = 0
        self._next_scheduled: datetime | None = None
        self._rescore_at: float | None = None  # new sales: score at this monotonic time (debounced)
        self._client: SyncClient | None = None
        self.worker: threading.Thread | None = None
        self.last_flush_at: datetime | None = None
        self.scorer = Scorer(
            self.scoring_settings,
            idle_seconds=config.scoring.worker_idle_seconds,
            cache_dir=self.paths.root / "cache",
        )

    # -- shared views for the API --------------------------------------------------------------------

    @property
    def scoring_settings(self) -> ScoringSettings:
        sc = self.config.scoring
        return ScoringSettings(
            sc.horizon, list(sc.levels), sc.threads, sc.timeout_seconds, sc.keep_runs, sc.isolation
        )

    def status(self) -> dict[str, Any]:
        record = self.lifecycle.record if self.lifecycle is not None else self.record
        view = self.view
        last_sync = record.last_sync_at
        stale = (
            last_sync is None
            or (datetime.now(UTC) - last_sync).total_seconds() > self.config.agent.stale_after_seconds
        )
        return {
            "store_id": self.config.agent.store_id,
            "model_name": record.active.model_name if record.active else None,
            "active_version": record.active.version if record.active else None,
            "served_version": view.pointer.version if view else None,
            "scoring_run": view.pointer.run_id if view else None,
            "last_sync_at": last_sync,
            "last_scored_at": view.pointer.scored_at if view else None,
            "stale": stale,
            "state": record.state.value,
            "last_error": record.last_error,
            "previous_version": record.previous.version if record.previous else None,
            "shadow_version": record.shadow.version if record.shadow else None,
            "errors": dict(record.error_counts),
            "last_counted_error": record.counted_error,
            "current_errors": dict(record.current_errors),
            "outbox_size": self.store.outbox_size() if self.store else None,
            "ready": self.is_ready(),
        }

    def is_ready(self) -> bool:
        return self.record.active is not None and self.view is not None

    def healthy(self) -> bool:
        """For the systemd watchdog: the work loop is alive and not stalled (long work declares itself)."""
        if self.worker is None or not self.worker.is_alive():
            return False
        now = time.monotonic()
        return now - self.last_tick < STALL_SECONDS or now < self.busy_until

    def count_error(self, kind: str, reason: str) -> None:
        """Count an error of ``kind`` (``agent.record.ERROR_KINDS``) for the next heartbeats; persisted."""
        record = self.lifecycle.record if self.lifecycle is not None else self.record
        count_error(record, kind, reason)
        save_record(self.paths, record)

    def resolve_errors(self, *kinds: str) -> None:
        """The work of ``kinds`` succeeded: their errors no longer stand (persisted when one did)."""
        record = self.lifecycle.record if self.lifecycle is not None else self.record
        if resolve_errors(record, *kinds):
            save_record(self.paths, record)

    def submit(self, command: Command, timeout: float) -> Any:
        """Run ``command`` on the work loop (sole writer of lifecycle and store); wait for its result."""
        future: Future[Any] = Future()
        self.commands.put((command, future))
        self.wake.set()
        return future.result(timeout=timeout)

    # -- work loop -----------------------------------------------------------------------------------

    def start_worker(self) -> None:
        self.worker = threading.Thread(target=self._work, name="agent-work", daemon=True)
        self.worker.start()

    def _make_client(self) -> SyncClient:
        if self._client is None:
            self._client = SyncClient(
                self.config.agent.server_url,
                timeout_seconds=self.config.agent.request_timeout_seconds,
                ca_file=self.config.agent.ca_file,
                max_response_bytes=self.config.agent.max_response_bytes,
            )
        return self._client

    def open_state(self) -> None:
        """Open the store, recover the lifecycle and load the last served forecasts (also used by CLI)."""
        from agent.store import LocalStore

        self.store = LocalStore(self.paths.database)
        self.lifecycle = Lifecycle(
            self.config, self.paths, stop=self.stop, client_factory=self._make_client, scorer=self.scorer
        )
        self.lifecycle.recover()
        self.record = self.lifecycle.record
        self._load_serving()

    def _load_serving(self) -> None:
        pointer = read_serving(self.paths)
        if pointer is None:
            return
        try:
            self.view = ForecastView.load(self.paths.root, pointer)
            self.proposals = load_proposals(self.paths, self.view)
        except Exception as exc:  # a missing or unreadable run: serve nothing until the next scoring
            log.error(  # noqa: TRY400 - expected failure, no traceback
                "serving_load_failed", run_id=pointer.run_id, reason=str(exc)
            )

    def _work(self) -> None:
        try:
            self.busy_until = time.monotonic() + 600
            self.open_state()
            self.busy_until = 0.0
            self.ready_event.set()
            self._schedule_scoring()
            while not self.stop.is_set():
                self.last_tick = time.monotonic()
                self._step()
                self.wake.wait(TICK_SECONDS)
                self.wake.clear()
        except Exception:
            log.exception("work_loop_crashed")
            raise
        finally:
            self.ready_event.set()
            if self.lifecycle is not None:
                self.lifecycle.close()
            if self.store is not None:
                self.store.close()
            self.scorer.close()

    def _step(self) -> None:
        self._run_commands()
        self._ingest()
        now = time.monotonic()
        if now >= self._next_poll:
            self._run_lifecycle()
        self._maybe_score_missing()
        if self.inventory_arrived.is_set():
            self.inventory_arrived.clear()
            self._refresh_proposals()
        self._maybe_rescore_after_sales()
        self._maybe_score_on_schedule()
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._queue_heartbeat()
            self._next_heartbeat = now + self.config.agent.heartbeat_interval_seconds
        if now >= self._next_flush:
            # each call may wait out its retries: the watchdog knows the thread is delivering, not stuck
            self.busy_until = now + 600
            try:
                self._flush_outbox()
            finally:
                self.busy_until = 0.0

    def _run_commands(self) -> None:
        while True:
            try:
                command, future = self.commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(command())
                except Exception as exc:
                    future.set_exception(exc)

    def _ingest(self) -> None:
        from agent.ingest import ingest_folder

        assert self.store is not None
        try:
            results = ingest_folder(
                self.store, self.config.sales_path, store_id=self.config.agent.store_id, today=_today()
            )
        except OSError as exc:
            log.error(  # noqa: TRY400 - expected failure, no traceback
                "sales_folder_unreadable", folder=str(self.config.sales_path), reason=str(exc)
            )
            self.count_error("ingest", f"sales folder unreadable: {exc}")
            return
        self.resolve_errors("ingest")
        for result in results:
            self.metrics.rows_ingested.inc(result.rows_ok)
            self.metrics.rows_quarantined.inc(result.rows_quarantined)
        if any(result.rows_ok for result in results) or self.sales_arrived.is_set():
            self.sales_arrived.clear()
            from agent.monitoring import measure_after_ingest

            measure_after_ingest(self)
            debounce = self.config.scoring.rescore_after_sales_seconds
            if debounce > 0:
                self._rescore_at = time.monotonic() + debounce  # each new batch pushes it back

    def _maybe_rescore_after_sales(self) -> None:
        if self._rescore_at is None or time.monotonic() < self._rescore_at:
            return
        self._rescore_at = None
        if self.record.active is not None:
            self._score("sales")

    def _run_lifecycle(self) -> None:
        assert self.lifecycle is not None
        errors_before = dict(self.lifecycle.record.error_counts)
        self.busy_until = time.monotonic() + self.config.scoring.timeout_seconds + 600
        try:
            outcome = self.lifecycle.run()
        finally:
            self.busy_until = 0.0
        self.record = self.lifecycle.record
        base = self.config.agent.poll_interval_seconds
        if outcome.failed:
            self._poll_failures += 1
            self.metrics.sync_failures.inc()
            delay = backoff_seconds(
                self._poll_failures, min(base, 5.0), self.config.agent.max_backoff_seconds
            )
        else:
            self._poll_failures = 0
            delay = base
        self._next_poll = time.monotonic() + delay
        if outcome.rolled_back:
            self.metrics.rollbacks.inc()
        shadow_ready = False
        if not outcome.failed:
            self.busy_until = time.monotonic() + 600
            try:
                shadow_ready = self.lifecycle.sync_shadow()
            finally:
                self.busy_until = 0.0
        if outcome.activated is not None:
            self.metrics.activations.inc()
            self._queue_heartbeat()
            self._score("activation")
        elif shadow_ready and self.record.active is not None:
            # Score both now, on the same history: the shadow is compared from its first day.
            self._queue_heartbeat()
            self._score("shadow_ready")
        counts = self.lifecycle.record.error_counts
        if any(counts.get(k, 0) > errors_before.get(k, 0) for k in counts if k not in TRANSPORT_ERRORS):
            self._report_errors_now()  # a refused update is reported now, not at the next heartbeat

    def _maybe_score_missing(self) -> None:
        active = self.record.active
        if active is None:
            return
        view = self.view
        if view is not None and (view.pointer.model_name, view.pointer.version) == (
            active.model_name,
            active.version,
        ):
            return
        if time.monotonic() < getattr(self, "_next_missing_score", 0.0):
            return
        # Active model not scored yet (first data, restart after a crash, operator rollback).
        if not self._score("catch_up"):
            self._next_missing_score = time.monotonic() + 60.0

    def _schedule_scoring(self) -> None:
        self._next_scheduled = self.config.scoring.next_run(datetime.now().astimezone())

    def _maybe_score_on_schedule(self) -> None:
        if self._next_scheduled is None or datetime.now().astimezone() < self._next_scheduled:
            return
        self._schedule_scoring()
        if self.record.active is not None:
            self._score("schedule")

    def _score(self, trigger: str) -> bool:
        active = self.record.active
        assert self.store is not None
        if active is None:
            raise NoActiveModelError("no active model version to score")
        bundle = read_symlink(self.paths.current)
        if bundle is None:
            raise NoActiveModelError("the current version link is missing")
        shadow = self._shadow_model()
        self._rescore_at = None  # this run reads every sale ingested so far
        started = time.monotonic()
        self.busy_until = started + 2 * self.config.scoring.timeout_seconds + 60
        try:
            result = score_store(
                self.paths,
                self.store,
                bundle,
                model_name=active.model_name,
                version=active.version,
                scorer=self.scorer,
                trigger=trigger,
                shadow=shadow,
            )
            self.view = ForecastView.load(self.paths.root, result.pointer)
        except ScoringError as exc:
            self.metrics.scoring_failures.inc()
            self.metrics.scoring_duration.labels(trigger, "failed").observe(time.monotonic() - started)
            self.count_error("scoring", f"v{active.version}: {exc}")
            log.error(  # noqa: TRY400 - expected failure, no traceback
                "scoring_failed", trigger=trigger, model_version=active.version, reason=str(exc)
            )
            self._report_errors_now()
            return False
        finally:
            self.busy_until = 0.0
        self.metrics.scoring_runs.inc()
        self.metrics.scoring_duration.labels(trigger, "ok").observe(time.monotonic() - started)
        self.resolve_errors("scoring")
        if shadow is not None:
            if result.shadow_error is None:
                self.metrics.shadow_runs.inc()
                self.resolve_errors("shadow")
            else:
                self.metrics.shadow_failures.inc()
                self.count_error("shadow", f"v{shadow.version}: {result.shadow_error}")
                log.error(
                    "shadow_scoring_failed",
                    trigger=trigger,
                    model_version=shadow.version,
                    reason=result.shadow_error,
                )
                self._report_errors_now()
        self._refresh_proposals()
        return True

    def _refresh_proposals(self) -> None:
        """Recompute the order proposals of the served run for the stored inventory (kept on failure)."""
        if self.view is None or self.store is None:
            return
        try:
            self.proposals = refresh_proposals(self.paths, self.store, self.scorer, self.view)
        except (ScoringError, OSError) as exc:
            log.error(  # noqa: TRY400 - expected failure, no traceback
                "proposals_failed", run_id=self.view.pointer.run_id, reason=str(exc)
            )

    def _shadow_model(self) -> ShadowModel | None:
        record = self.lifecycle.record if self.lifecycle is not None else self.record
        ref = record.shadow
        if ref is None or ref == record.active:
            return None
        folder = self.paths.bundle_dir(ref.model_name, ref.version)
        if folder is None:
            return None
        return ShadowModel(folder, ref.model_name, ref.version)

    def score_now(self) -> dict[str, Any]:
        """``POST /v1/score`` / ``shelfcast agent score`` (runs on the work loop)."""
        if not self._score("on_demand"):
            raise ScoringError(self._last_scoring_error())
        assert self.view is not None
        return {"run_id": self.view.pointer.run_id, "model_version": self.view.pointer.version}

    def _last_scoring_error(self) -> str:
        return "scoring failed; see the agent log (scoring_failed)"

    def rollback_now(self) -> dict[str, Any]:
        """``POST /v1/rollback`` / ``shelfcast agent rollback`` (runs on the work loop)."""
        assert self.lifecycle is not None
        back: VersionRef = self.lifecycle.rollback_to_previous()
        self.record = self.lifecycle.record
        self.metrics.rollbacks.inc()
        self._queue_heartbeat()
        self._score("rollback")
        return {"model_name": back.model_name, "active_version": back.version}

    def retry_now(self) -> dict[str, Any]:
        """``POST /v1/retry`` / ``shelfcast agent retry``: refused bundles are tried again now."""
        assert self.lifecycle is not None
        cleared = self.lifecycle.retry_refused()
        self.record = self.lifecycle.record
        self._next_poll = 0.0
        self.wake.set()
        return {"cleared": cleared, "next_poll": "now"}

    # -- reports -------------------------------------------------------------------------------------

    def _queue_heartbeat(self) -> None:
        assert self.store is not None
        record = self.record
        view = self.view
        beat = Heartbeat(
            store_id=self.config.agent.store_id,
            state=record.state.value,
            model_name=record.active.model_name if record.active else None,
            active_version=record.active.version if record.active else None,
            last_scored_at=view.pointer.scored_at if view else None,
            agent_version=shelfcast_version(),
            sent_at=datetime.now(UTC),
            errors=dict(record.error_counts),
            last_error=record.counted_error,
            last_error_at=record.counted_error_at,
            shadow_version=record.shadow.version if record.shadow else None,
            current_errors=dict(record.current_errors),
        )
        self.metrics.reports_queued.inc()
        self.store.enqueue(
            "heartbeat",
            "/v1/heartbeats",
            msgspec.json.encode(beat),
            f"hb-{self.config.agent.store_id}-{uuid.uuid4().hex}",
            max_rows=self.config.agent.outbox_max_rows,
        )

    def _report_errors_now(self) -> None:
        """Queue a heartbeat with the new error counts and deliver it on this tick (not at the next flush)."""
        self._queue_heartbeat()
        self._next_flush = 0.0

    def _flush_outbox(self) -> None:
        """Deliver queued reports in order; stop at the first transport or server error (retry later)."""
        from agent.errors import SyncError

        assert self.store is not None
        token = self.config.agent.token or read_credential(self.paths)
        if not token:
            self._next_flush = time.monotonic() + self.config.agent.heartbeat_interval_seconds
            return
        client = self._make_client()
        client.token = token
        for _ in range(10):
            batch = self.store.outbox_batch(100)
            if not batch:
                break
            for item in batch:
                try:
                    status = client.post_report(item.path, item.body, item.idempotency_key)
                except SyncError as exc:
                    self._flush_failed(str(exc))
                    return
                if 200 <= status < 300 or status == 409:
                    self.store.outbox_done(item.seq)
                    self.metrics.reports_delivered.inc()
                elif status in (401, 403) or status >= 500 or status == 429:
                    self.store.outbox_attempted(item.seq)
                    self._flush_failed(f"server answered {status}")
                    return
                else:
                    log.error(
                        "report_dropped", kind=item.kind, status=status, idempotency_key=item.idempotency_key
                    )
                    self.count_error("report", f"{item.kind} refused by the server ({status}), dropped")
                    self.store.outbox_done(item.seq)
        self._flush_failures = 0
        self.resolve_errors("report")
        self.last_flush_at = datetime.now(UTC)
        self._next_flush = time.monotonic() + min(self.config.agent.heartbeat_interval_seconds, 30.0)

    def _flush_failed(self, reason: str) -> None:
        self._flush_failures += 1
        self.count_error("report", f"delivery failed: {reason}")
        delay = backoff_seconds(self._flush_failures, 2.0, self.config.agent.max_backoff_seconds)
        self._next_flush = time.monotonic() + delay
        log.warning("outbox_flush_failed", reason=reason, retry_in_seconds=round(delay, 1))


def _today() -> date:
    return datetime.now().astimezone().date()
