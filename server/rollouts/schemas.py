"""Wire shapes of the rollouts API (``/v1/rollouts``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from forecasting.common.contracts import Version


class RolloutCreate(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Start a rollout of ``model_name`` version ``version`` with ``plan`` (the TOML plan as a table)."""

    model_name: str
    version: Version
    plan: dict[str, Any] = msgspec.field(default_factory=dict)
    reason: str = ""


class RolloutAction(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    reason: str = ""


class WaveStatus(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    name: str
    kind: str
    state: str  # pending | current | done
    stores: list[str]
    bake_periods: int
    bake_min_seconds: float
    manual_approval: bool


class StoreStatus(msgspec.Struct, frozen=True, kw_only=True):
    store_id: str
    wave: int
    stratum: str
    state: str | None = None
    active_version: int | None = None
    last_contact_at: datetime | None = None


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    decision_id: int
    step: int
    action: str
    actor: str
    reason: str
    numbers: dict[str, Any]
    decided_at: datetime


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    rollout_id: str
    model_name: str
    candidate_version: int
    champion_version: int
    status: str
    step: int
    step_name: str
    step_kind: str
    step_started_at: datetime
    last_outcome: str
    created_at: datetime
    created_by: str
    updated_at: datetime
    finished_at: datetime | None = None


class RolloutDetail(msgspec.Struct, frozen=True, kw_only=True):
    rollout: Rollout
    plan: dict[str, Any]
    waves: list[WaveStatus]
    stores: list[StoreStatus]
    gates: dict[str, Any]
    decisions: list[Decision]


class RolloutPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Rollout]
    next_cursor: str | None = None


class StoreOverride(msgspec.Struct, frozen=True, kw_only=True):
    """What an active rollout assigns one store instead of the plain champion."""

    rollout_id: str
    version: int
    shadow: bool  # the candidate in shadow beside the champion (else the candidate serves)
    champion_shadow: bool = False  # serving the candidate: the champion in shadow beside it
