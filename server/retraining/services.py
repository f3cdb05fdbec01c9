"""Rules of retraining: who may start a run and when, one run at a time per model, and what a run does.

A run is queued (manual request, the cron schedule, or a firing alert named in ``trigger_alerts``), then
executed by the retraining thread: the latest central dataset version becomes one training file (worker
process), ``shelfcast train`` fits version N+1 (worker process), and the bundle and its run record are
registered through :class:`RegistryService` (bundle verification, lineage version -> run -> dataset).
With ``[retraining.policy] auto_rollout = true`` a canary rollout of the new version is started; the
champion alias is never moved here.
"""

from __future__ import annotations

import importlib
import queue
import threading
import time
import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from forecasting.common.logs import get_logger
from server.auth import Principal, new_id
from server.db import as_utc, utcnow
from server.errors import ConflictError, NotFoundError, ServerError
from server.pagination import next_cursor, page_request
from server.registry.services import RegistryService, check_name
from server.retraining import schemas
from server.retraining.repository import RetrainingRepository
from server.retraining.scheduler import CronScheduler
from server.retraining.worker import LOG_FILE, ChildProcess, python_command, tail

log = get_logger("server.retraining")

RETRAINER = Principal(role="admin", credential_id="retraining")
DEFAULT_KEY_NAME = "retraining.key"


class RunFailedError(ServerError):
    """A step of a retraining run failed; the message is the run's recorded error."""


class RetrainingService:
    def __init__(
        self,
        repo: RetrainingRepository,
        registry: RegistryService,
        config: schemas.RetrainingConfig,
        *,
        state_root: Path,
        page_default: int,
        page_cap: int,
        rollouts: Callable[[], Any] | None = None,
    ) -> None:
        self.repo = repo
        self.registry = registry
        self.config = config
        self.state_root = state_root
        self.actuals_root = state_root / "datasets" / "actuals"
        self.page_default = page_default
        self.page_cap = page_cap
        self.rollouts = rollouts or (lambda: None)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._runner: threading.Thread | None = None
        self.scheduler: CronScheduler | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Fail runs a previous server process left unfinished, start the runner and the schedule."""
        if self._runner is not None:
            return
        for row in self.repo.interrupted():
            self.repo.update(
                row["retraining_id"], status="failed", stage="done", finished_at=utcnow(),
                error="the server stopped before the run finished",
            )  # fmt: skip
            log.warning("retraining_interrupted", retraining_id=row["retraining_id"])
        self._stopping.clear()
        self._runner = threading.Thread(target=self._run_queue, name="retraining-runner", daemon=True)
        self._runner.start()
        if self.config.enabled and self.config.schedule:
            self.scheduler = CronScheduler(self.config.schedule, self.on_schedule)
            self.scheduler.start()

    def stop(self) -> None:
        """Stop the schedule; a running training process is killed and its run recorded as failed."""
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        self._stopping.set()
        self._queue.put(None)
        if self._runner is not None:
            self._runner.join(timeout=15)
            self._runner = None

    # --- triggers ---------------------------------------------------------------------------------

    def request(
        self, model_name: str, trigger: str, reason: str, actor: str, alert_id: str | None = None
    ) -> schemas.RetrainingRun:
        """Queue a run of ``model_name`` (``ConflictError`` while one is queued or running)."""
        check_name(model_name, "model name")
        with self._lock:
            active = self.repo.active(model_name)
            if active is not None:
                raise ConflictError(
                    f"retraining run {active['retraining_id']} of {model_name} is already {active['status']}"
                )
            retraining_id = new_id("rtr")
            self.repo.insert(
                {
                    "retraining_id": retraining_id, "model_name": model_name, "trigger": trigger,
                    "reason": reason, "alert_id": alert_id, "status": "queued", "stage": "queued",
                    "rollout": "", "error": "", "log_tail": "", "work_dir": "", "requested_by": actor,
                    "created_at": utcnow(),
                }
            )  # fmt: skip
        self._queue.put(retraining_id)
        log.info(
            "retraining_queued", retraining_id=retraining_id, model_name=model_name, trigger=trigger,
            reason=reason, actor=actor,
        )  # fmt: skip
        return self.get(retraining_id)

    def request_now(self, body: schemas.RetrainRequest, who: Principal) -> schemas.RetrainingRun:
        if not self.config.enabled:
            raise ConflictError("retraining is disabled on this server ([retraining] enabled = false)")
        reason = body.reason or "requested"
        return self.request(body.model_name or self.config.model_name, "manual", reason, who.actor)

    def on_schedule(self, due: datetime) -> None:
        try:
            self.request(
                self.config.model_name, "schedule", f"schedule {self.config.schedule!r} at {due.isoformat()}",
                "server:schedule",
            )  # fmt: skip
        except ConflictError as exc:
            log.info("retraining_skipped", trigger="schedule", reason=str(exc))

    def on_alert(self, alert: Any) -> None:
        """A firing alert: start a run if its rule triggers, for the configured model, out of cool-down."""
        cfg = self.config
        if not cfg.enabled or alert.rule not in cfg.trigger_alerts:
            return
        fields = {"trigger": "alert", "alert_id": alert.alert_id, "rule": alert.rule}
        if alert.model_name != cfg.model_name:
            log.info(
                "retraining_skipped", **fields, reason=f"model {alert.model_name!r} is not retrained here"
            )
            return
        last = self.repo.last_automatic(cfg.model_name)
        if last is not None and (utcnow() - last).total_seconds() < cfg.alert_cooldown_seconds:
            log.info("retraining_skipped", **fields, reason="cool-down after the last alert-triggered run")
            return
        where = ", ".join(
            f"{k} {v}" for k, v in (("store", alert.store_id), ("category", alert.category)) if v
        )
        reason = f"alert {alert.rule}: {alert.metric} = {alert.value} > {alert.threshold}" + (
            f" ({where})" if where else ""
        )
        try:
            self.request(cfg.model_name, "alert", reason, f"alert:{alert.alert_id}", alert.alert_id)
        except ConflictError as exc:
            log.info("retraining_skipped", **fields, reason=str(exc))

    # --- queries ----------------------------------------------------------------------------------

    def get(self, retraining_id: str) -> schemas.RetrainingRun:
        row = self.repo.get(retraining_id)
        if row is None:
            raise NotFoundError(f"no retraining run {retraining_id!r}")
        return self._run(row)

    def list_runs(
        self, model_name: str | None, status: str | None, limit: int | None, cursor: str | None
    ) -> schemas.RetrainingRunPage:
        page = page_request(limit, cursor, default=self.page_default, cap=self.page_cap)
        rows = self.repo.page(model_name, status, page.after, page.limit + 1)
        rows, nxt = next_cursor(rows, page.limit, lambda r: [r["created_at"].isoformat(), r["retraining_id"]])
        return schemas.RetrainingRunPage(items=[self._run(r) for r in rows], next_cursor=nxt)

    def status(self) -> schemas.SchedulerStatus:
        cfg = self.config
        return schemas.SchedulerStatus(
            enabled=cfg.enabled, model_name=cfg.model_name, schedule=cfg.schedule,
            next_run_at=self.scheduler.next_at if self.scheduler else None,
            trigger_alerts=list(cfg.trigger_alerts), auto_rollout=cfg.policy.auto_rollout,
        )  # fmt: skip

    def _run(self, row: dict[str, Any]) -> schemas.RetrainingRun:
        row = dict(row)
        if row["status"] == "running" and row["work_dir"]:
            row["log_tail"] = tail(Path(row["work_dir"]) / LOG_FILE, self.config.log_tail_lines)
        started, finished = row.get("started_at"), row.get("finished_at")
        end = finished or (utcnow() if started else None)
        row["duration_seconds"] = round((end - started).total_seconds(), 3) if started and end else None
        for name in ("created_at", "started_at", "finished_at"):
            row[name] = as_utc(row[name])
        return msgspec.convert(row, schemas.RetrainingRun)

    # --- execution (the retraining thread) --------------------------------------------------------

    def _run_queue(self) -> None:
        while not self._stopping.is_set():
            retraining_id = self._queue.get()
            if retraining_id is None or self._stopping.is_set():
                break
            try:
                self._execute(retraining_id)
            except Exception as exc:  # never let one run stop the runner
                log.exception("retraining_crashed", retraining_id=retraining_id, reason=str(exc))

    def _execute(self, retraining_id: str) -> None:
        row = self.repo.get(retraining_id)
        if row is None or row["status"] != "queued":
            return
        model = row["model_name"]
        work = self.state_root / "retraining" / retraining_id
        work.mkdir(parents=True, exist_ok=True)
        log_path = work / LOG_FILE
        began = time.monotonic()
        deadline = began + self.config.timeout_seconds
        self.repo.update(
            retraining_id, status="running", stage="preparing", started_at=utcnow(), work_dir=str(work)
        )
        log.info("retraining_started", retraining_id=retraining_id, model_name=model, trigger=row["trigger"])
        outcome: dict[str, Any] = {}
        try:
            outcome = self._steps(retraining_id, model, row["trigger"], work, log_path, deadline)
            status, error = "succeeded", ""
        except (RunFailedError, TimeoutError, InterruptedError) as exc:
            status, error = "failed", str(exc)
        except Exception as exc:
            log.exception("retraining_step_crashed", retraining_id=retraining_id)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        (work / "data.parquet").unlink(missing_ok=True)  # a copy of the central dataset; the bundle stays
        self.repo.update(
            retraining_id, status=status, stage="done", error=error, finished_at=utcnow(),
            log_tail=tail(log_path, self.config.log_tail_lines),
        )  # fmt: skip
        finished = log.info if status == "succeeded" else log.warning
        finished(
            "retraining_finished", retraining_id=retraining_id, model_name=model, status=status,
            error=error, duration_seconds=round(time.monotonic() - began, 3), **outcome,
        )  # fmt: skip

    def _steps(
        self, retraining_id: str, model: str, trigger: str, work: Path, log_path: Path, deadline: float
    ) -> dict[str, Any]:
        latest = self.repo.latest_dataset()
        if latest is None:
            raise RunFailedError("the central dataset is empty: no store has sent actuals yet")
        dataset_id = str(latest["dataset_id"])
        files = self.repo.dataset_files(latest["received_at"])
        inputs = work / "inputs.json"
        inputs.write_bytes(
            msgspec.json.encode({"dataset_id": dataset_id, "root": str(self.actuals_root), "files": files})
        )
        self.repo.update(retraining_id, dataset_id=dataset_id)
        data = work / "data.parquet"
        prepare = ["server.retraining.worker", "prepare", "--inputs", str(inputs), "--out", str(data)]
        self._child(python_command(*prepare), log_path, deadline, "preparing the central dataset")

        version = (self.registry.repo.latest_version(model) or 0) + 1
        self.repo.update(retraining_id, stage="training", version=version)
        bundle = work / "bundle"
        args = ["shelfcast", "--log-format", "json", "train"]
        if self.config.train_config:
            args += ["--config", self.config.train_config]
        args += [
            "--data", str(data), "--out", str(bundle), "--model-name", model, "--version", str(version),
            "--signing-key", str(self.signing_key()),
        ]  # fmt: skip
        self._child(python_command(*args), log_path, deadline, "training")

        self.repo.update(retraining_id, stage="registering")
        from forecasting.bundle.format import pack_archive

        record = msgspec.json.decode((work / "bundle.run" / "run.json").read_bytes())
        archive = self.registry.blobs.tmp_dir / f"retrain-{retraining_id}.tar"
        sha256 = pack_archive(bundle, archive)
        self.registry.publish(model, archive, sha256, archive.stat().st_size, RETRAINER)
        record.update(
            dataset_id=dataset_id, retraining_id=retraining_id, trigger=trigger,
            training_frame_fingerprint=record.get("dataset_fingerprint"),
        )  # fmt: skip
        run = self.registry.register_run(record, RETRAINER)
        rollout = self._rollout(model, version, retraining_id)
        self.repo.update(retraining_id, run_id=run.run_id, rollout=rollout)
        return {"version": version, "run_id": run.run_id, "dataset_id": dataset_id, "rollout": rollout}

    def _child(self, args: list[str], log_path: Path, deadline: float, what: str) -> None:
        code = ChildProcess(args, log_path).run(deadline, self._stopping)
        if code != 0:
            raise RunFailedError(f"{what} failed (exit code {code}); see the log tail")

    def signing_key(self) -> Path:
        """The configured key, or the server's own retraining key (created, and trusted, on first use)."""
        if self.config.signing_key_file:
            path = Path(self.config.signing_key_file)
            if not path.is_file():
                raise RunFailedError(f"[retraining] signing_key_file {path} does not exist")
            return path
        from forecasting.bundle.signing import load_or_create_private_key

        path = self.registry.keys.keys_dir / DEFAULT_KEY_NAME
        load_or_create_private_key(path)  # its public half lands in <state_dir>/keys/*.pub: trusted
        return path

    def _rollout(self, model: str, version: int, retraining_id: str) -> str:
        """Start a canary rollout of the new version when the policy says so; never move the champion."""
        if not self.config.policy.auto_rollout:
            return ""
        service = self.rollouts()
        if service is None:
            log.warning(
                "auto_rollout_unavailable", retraining_id=retraining_id, model_name=model, version=version,
                reason="this server has no rollouts domain; the new version is registered only",
            )  # fmt: skip
            return "unavailable"
        try:
            plan = self._rollout_plan()
            rollout_schemas = importlib.import_module("server.rollouts.schemas")
            body = rollout_schemas.RolloutCreate(
                model_name=model, version=version, plan=plan, reason=f"retraining {retraining_id}"
            )
            detail = service.start(body, RETRAINER)
        except Exception as exc:  # the version stays registered; the rollout can be started by hand
            log.warning("auto_rollout_failed", retraining_id=retraining_id, model_name=model, reason=str(exc))
            return f"failed: {exc}"
        rollout = getattr(detail, "rollout", detail)
        rollout_id = str(getattr(rollout, "rollout_id", ""))
        log.info("auto_rollout_started", retraining_id=retraining_id, model_name=model, rollout_id=rollout_id)
        return f"started: {rollout_id}"

    def _rollout_plan(self) -> dict[str, Any]:
        """The ``rollout_plan`` TOML as a table (its model and version come from the run)."""
        plan_file = self.config.policy.rollout_plan
        if not plan_file:
            raise RunFailedError("[retraining.policy] rollout_plan names no plan file")
        plan = tomllib.loads(Path(plan_file).read_text(encoding="utf-8"))
        plan.pop("model_name", None)
        plan.pop("version", None)
        return plan
