"""Scoring runs: the active bundle applied to the store's history, in a child process; results kept per run.

Also the health check of a staged bundle: score a built-in probe (a small deterministic history) and
check the output is complete, finite and ordered (lo <= forecast <= hi).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agent.errors import ScoringError, UpdateRejectedError
from agent.paths import StatePaths, atomic_write_bytes, remove_tree
from agent.score_worker import STRUCTURE_FILE, Job, ProposalJob, run_job
from agent.serving import ServingPointer
from forecasting.common.logs import get_logger

if TYPE_CHECKING:
    from agent.store import LocalStore

log = get_logger("agent.scoring")

PROBE_HORIZON = 7


@dataclass(frozen=True)
class ScoringSettings:
    horizon: int
    levels: list[int]
    threads: int
    timeout_seconds: float
    keep_runs: int
    isolation: str = "process"


class Scorer:
    """The warm scoring child (``agent.score_worker``): started on demand, restarted after a failure.

    One job at a time (callers hold no other lock while waiting); a job that exceeds its timeout
    kills the child. With ``isolation="inline"`` the same job runs in the calling process instead (no
    child, no timeout): for many agents in one process, such as a fleet simulation.
    """

    def __init__(
        self, settings: ScoringSettings, *, idle_seconds: float = 120.0, cache_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.idle_seconds = idle_seconds
        self.cache_dir = cache_dir
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _child(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        threads = str(self.settings.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "POLARS_MAX_THREADS": threads}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        if self.cache_dir is not None:
            env.setdefault("NUMBA_CACHE_DIR", str(self.cache_dir))
        cmd = [sys.executable, "-m", "agent.score_worker", "--idle-seconds", str(self.idle_seconds)]
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True, env=env
        )
        return self._proc

    @property
    def inline(self) -> bool:
        return self.settings.isolation == "inline"

    def warm(self) -> None:
        """Start the child now (it imports the scoring stack while the caller does other work)."""
        if self.inline:
            return
        with self._lock:
            self._child()

    def run(
        self, bundle_dir: Path, history: Path | None, out: Path, horizon: int, *, store_id: str = ""
    ) -> dict[str, int]:
        """Score ``history`` (None: the built-in probe) with ``bundle_dir`` into ``out``, checked.

        Returns ``{"rows": ..., "series": ...}``; raises ``ScoringError`` with the child's reason.
        """
        job = {
            "kind": "score",
            "bundle": str(bundle_dir),
            "history": "" if history is None else str(history),
            "out": str(out),
            "horizon": horizon,
            "levels": list(self.settings.levels),
            "threads": self.settings.threads,
            "store_id": store_id,
        }
        return self._submit(job)

    def propose(self, run_dir: Path, positions: Path, orders: Path, out: Path) -> int:
        """Order proposals of the scoring run in ``run_dir`` for the exported inventory, into ``out``."""
        job = {
            "kind": "proposals",
            "forecasts": str(run_dir / "forecasts.parquet"),
            "structure": str(run_dir / STRUCTURE_FILE),
            "positions": str(positions),
            "orders": str(orders),
            "out": str(out),
        }
        return self._submit(job)["rows"]

    def _submit(self, job: dict[str, Any]) -> dict[str, int]:
        """Run a job in the child (or inline); its counts, or ``ScoringError`` with the child's reason."""
        if self.inline:
            return self._run_inline(job)
        with self._lock:
            for attempt in (1, 2):
                proc = self._child()
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(msgspec.json.encode(job).decode() + "\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    # The child had just exited after its idle time: start a fresh one once.
                    self._reap()
                    if attempt == 2:
                        raise ScoringError("scoring process could not be started") from None
                    continue
                line = self._read_answer(proc)
                if line is None:
                    self._reap()
                    raise ScoringError(
                        f"scoring process died or took longer than {self.settings.timeout_seconds:.0f} s"
                    )
                answer = msgspec.json.decode(line)
                if not answer.get("ok"):
                    raise ScoringError(str(answer.get("error")))
                return {"rows": int(answer.get("rows", 0)), "series": int(answer.get("series", 0))}
        raise ScoringError("scoring process could not be started")

    def _run_inline(self, job: dict[str, Any]) -> dict[str, int]:
        with self._lock:
            try:
                return run_job(msgspec.convert(job, Job | ProposalJob))
            except Exception as exc:  # the same one-line reason the child would have answered
                raise ScoringError(f"{type(exc).__name__}: {exc}") from exc

    def _read_answer(self, proc: subprocess.Popen[str]) -> str | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self.settings.timeout_seconds)
        if not ready:
            return None
        line = proc.stdout.readline()
        return line or None

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def close(self) -> None:
        with self._lock:
            self._reap()


def health_check(bundle_dir: Path, work_dir: Path, scorer: Scorer, *, store_id: str) -> float:
    """Score the built-in probe with a staged bundle; seconds taken, or ``UpdateRejectedError``."""
    started = time.monotonic()
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        scorer.run(bundle_dir, None, work_dir / "probe-forecasts.parquet", PROBE_HORIZON, store_id=store_id)
    except ScoringError as exc:
        raise UpdateRejectedError(f"health check failed: {exc}") from exc
    finally:
        remove_tree(work_dir)
    return time.monotonic() - started


def new_run_id(version: int) -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}Z-v{version}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ShadowModel:
    """A shadow version to score beside the served one (same history, same horizon), never served."""

    bundle_dir: Path
    model_name: str
    version: int


@dataclass
class ScoreResult:
    """What one scoring did: the served run (now served) and the shadow run or why it failed."""

    pointer: ServingPointer
    shadow_run_id: str | None = None
    shadow_error: str | None = None


def score_store(
    paths: StatePaths,
    store: LocalStore,
    bundle_dir: Path,
    *,
    model_name: str,
    version: int,
    scorer: Scorer,
    trigger: str,
    shadow: ShadowModel | None = None,
) -> ScoreResult:
    """Score every series of the store; keep the run; point ``serving.json`` at it.

    With ``shadow``, the shadow version scores the very same history file right after (its own run, role
    ``shadow``); its failure is returned in ``shadow_error`` and never disturbs the served run.
    """
    started_at = datetime.now(UTC)
    started = time.monotonic()
    run_id = new_run_id(version)
    run_dir = paths.runs / run_id
    run_dir.mkdir(parents=True)
    history = run_dir / "history.parquet"
    out = run_dir / "forecasts.parquet"
    try:
        history_rows = store.export_history(history)
        _require_history(history_rows)
        history_end = _last_day(history)
        counts = scorer.run(bundle_dir, history, out, scorer.settings.horizon)
    except Exception:
        remove_tree(run_dir)
        raise
    duration = time.monotonic() - started
    pointer = ServingPointer(
        run_id=run_id,
        model_name=model_name,
        version=version,
        path=str(out.relative_to(paths.root)),
        scored_at=datetime.now(UTC),
        n_series=counts["series"],
        n_rows=counts["rows"],
        history_end=history_end,
    )
    store.record_run(
        {
            "run_id": run_id,
            "model_name": model_name,
            "version": version,
            "trigger": trigger,
            "started_at": started_at,
            "finished_at": pointer.scored_at,
            "n_series": pointer.n_series,
            "n_rows": pointer.n_rows,
            "history_rows": history_rows,
            "path": pointer.path,
            "role": "served",
            "scoring_id": run_id,
        }
    )
    atomic_write_bytes(paths.serving, msgspec.json.encode(pointer))
    log.info(
        "forecast_scored",
        run_id=run_id,
        model_name=model_name,
        model_version=version,
        role="served",
        trigger=trigger,
        n_series=pointer.n_series,
        n_rows=pointer.n_rows,
        history_rows=history_rows,
        duration_seconds=round(duration, 3),
    )
    result = ScoreResult(pointer)
    if shadow is not None:
        try:
            result.shadow_run_id = _score_shadow(
                paths, store, shadow, history, scorer=scorer, trigger=trigger, history_rows=history_rows,
                scoring_id=run_id,
            )  # fmt: skip
        except Exception as exc:  # a failing shadow never disturbs serving
            result.shadow_error = (
                str(exc) if isinstance(exc, ScoringError) else f"{type(exc).__name__}: {exc}"
            )
    history.unlink(missing_ok=True)
    prune_runs(paths, store, keep=scorer.settings.keep_runs, serving=run_id)
    return result


def _score_shadow(
    paths: StatePaths,
    store: LocalStore,
    shadow: ShadowModel,
    history: Path,
    *,
    scorer: Scorer,
    trigger: str,
    history_rows: int,
    scoring_id: str,
) -> str:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    run_id = new_run_id(shadow.version)
    run_dir = paths.runs / run_id
    run_dir.mkdir(parents=True)
    out = run_dir / "forecasts.parquet"
    try:
        counts = scorer.run(shadow.bundle_dir, history, out, scorer.settings.horizon)
    except Exception:
        remove_tree(run_dir)
        raise
    store.record_run(
        {
            "run_id": run_id,
            "model_name": shadow.model_name,
            "version": shadow.version,
            "trigger": trigger,
            "started_at": started_at,
            "finished_at": datetime.now(UTC),
            "n_series": counts["series"],
            "n_rows": counts["rows"],
            "history_rows": history_rows,
            "path": str(out.relative_to(paths.root)),
            "role": "shadow",
            "scoring_id": scoring_id,
        }
    )
    log.info(
        "forecast_scored",
        run_id=run_id,
        model_name=shadow.model_name,
        model_version=shadow.version,
        role="shadow",
        trigger=trigger,
        n_series=counts["series"],
        n_rows=counts["rows"],
        history_rows=history_rows,
        duration_seconds=round(time.monotonic() - started, 3),
    )
    return run_id


def _last_day(history: Path) -> date | None:
    """The newest ``ds`` of an exported history file."""
    import polars as pl

    last = pl.scan_parquet(history).select(pl.col("ds").max()).collect().item()
    return last if isinstance(last, date) else None


def _require_history(rows: int) -> None:
    if rows == 0:
        raise ScoringError("no sales history yet: drop extracts into the sales folder or POST /v1/sales")


def prune_runs(paths: StatePaths, store: LocalStore, *, keep: int, serving: str) -> None:
    """Keep the newest ``keep`` served runs (always the one served) and the newest ``keep`` shadow runs."""
    roles = {r["run_id"]: r.get("role") or "served" for r in store.runs(limit=100_000)}
    runs = sorted((p for p in paths.runs.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    seen: dict[str, int] = {}
    for run in runs:
        role = roles.get(run.name, "served")
        seen[role] = seen.get(role, 0) + 1
        if seen[role] > max(keep, 1) and run.name != serving:
            remove_tree(run)
            store.delete_run(run.name)
