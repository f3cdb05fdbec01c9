"""``[retraining]`` configuration and the wire types of ``/v1/retraining``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

Status = Literal["queued", "running", "succeeded", "failed"]
ACTIVE: tuple[Status, ...] = ("queued", "running")


class RetrainingPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[retraining.policy]``: what happens to a newly registered version.

    ``auto_rollout = true`` starts a canary rollout of it (the rollouts domain) with the plan in the TOML
    file ``rollout_plan`` (waves, bake, gates); the champion alias is never moved by retraining itself.
    """

    auto_rollout: bool = False
    rollout_plan: str = ""


class RetrainingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[retraining]``: when the server retrains ``model_name`` on the central dataset, and how.

    ``schedule``: a cron expression (UTC, five fields, e.g. ``"0 3 * * 0"``); empty: no scheduled runs.
    ``trigger_alerts``: names of alert rules whose firing (for ``model_name``) starts a run, at most one
    per ``alert_cooldown_seconds`` (none by default: automatic retraining is opted into).
    ``train_config``: training TOML for ``shelfcast train --config`` (empty: its defaults).
    ``signing_key_file``: ed25519 private key signing the bundles (empty: ``<state_dir>/keys/retraining.key``,
    created on first use; its public half in ``<state_dir>/keys`` is trusted by the server).
    """

    enabled: bool = True
    schedule: str = ""
    model_name: str = "demand"
    train_config: str = ""
    signing_key_file: str = ""
    trigger_alerts: list[str] = msgspec.field(default_factory=list)
    alert_cooldown_seconds: float = 6 * 3600.0
    timeout_seconds: float = 4 * 3600.0
    log_tail_lines: int = 40
    policy: RetrainingPolicy = msgspec.field(default_factory=RetrainingPolicy)

    def __post_init__(self) -> None:
        if self.schedule:
            from croniter import croniter

            if not croniter.is_valid(self.schedule):
                raise ValueError(f"schedule {self.schedule!r} is not a valid cron expression")
        if self.timeout_seconds <= 0 or self.log_tail_lines < 1 or self.alert_cooldown_seconds < 0:
            raise ValueError(
                "timeout_seconds and log_tail_lines must be positive, alert_cooldown_seconds >= 0"
            )


class RetrainRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``POST /v1/retraining/runs``: start a run now (``model_name`` defaults to the configured model)."""

    model_name: str = ""
    reason: str = ""


class RetrainingRun(msgspec.Struct, kw_only=True):
    """One retraining run: its trigger, progress and outcome (version -> run -> dataset once succeeded)."""

    retraining_id: str
    model_name: str
    trigger: str
    reason: str
    alert_id: str | None
    status: Status
    stage: str
    dataset_id: str | None
    version: int | None
    run_id: str | None
    rollout: str
    error: str
    log_tail: str
    requested_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None


class RetrainingRunPage(msgspec.Struct, kw_only=True):
    items: list[RetrainingRun]
    next_cursor: str | None = None


class SchedulerStatus(msgspec.Struct, kw_only=True):
    enabled: bool
    model_name: str
    schedule: str
    next_run_at: datetime | None
    trigger_alerts: list[str]
    auto_rollout: bool
