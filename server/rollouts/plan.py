"""Rollout plans (TOML): waves, bake, gates, shadow phase; and the deterministic, stratified wave assignment.

A plan's waves are cumulative: wave ``k`` serves the candidate to every store of waves ``0..k``. A wave
takes a ``share`` of the fleet (cumulative, 0-1], explicit ``groups`` and ``stores``, or both. Stores are
drawn per stratum (store type and region) in the order of ``sha256(rollout_id:store_id)``, so every wave
is representative of the fleet and the same rollout always picks the same stores.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from server.errors import InvalidInputError


class WavePlan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One wave: which stores join it, how long it bakes, whether a person must approve what follows."""

    name: str = ""
    share: float | None = None
    groups: list[str] = msgspec.field(default_factory=list)
    stores: list[str] = msgspec.field(default_factory=list)
    bake_periods: int = 2
    bake_min_seconds: float = 0.0
    manual_approval: bool = False


class HealthGate(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Every wave store must run the candidate within ``activation_timeout_seconds`` and keep reporting.

    ``max_errors_per_store``: new update/scoring errors a wave store may report during a step.
    """

    activation_timeout_seconds: float = 3600.0
    min_activated_share: float = 1.0
    max_stale_share: float = 0.0
    stale_after_seconds: float = 3600.0
    max_errors_per_store: int = 0


class AccuracyGate(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Candidate vs champion WAPE ratio per category; fails above ``max_wape_ratio`` on enough evidence."""

    enabled: bool = True
    max_wape_ratio: float = 1.05
    min_observations: int = 100
    min_stores: int = 1
    min_periods: int = 1


class ShadowPhase(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Before serving: the first wave's stores score the candidate beside the champion they serve."""

    enabled: bool = False
    bake_periods: int = 2
    bake_min_seconds: float = 0.0


class RolloutPlan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A whole plan (``configs/rollout.toml``). ``model_name``/``version`` may come from the command line."""

    name: str = ""
    model_name: str = ""
    version: int | None = None
    stratify_by: list[str] = msgspec.field(default_factory=lambda: ["type", "region"])
    waves: list[WavePlan] = msgspec.field(default_factory=list)
    shadow: ShadowPhase = msgspec.field(default_factory=ShadowPhase)
    health: HealthGate = msgspec.field(default_factory=HealthGate)
    accuracy: AccuracyGate = msgspec.field(default_factory=AccuracyGate)


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One phase of a started rollout: shadow scoring on wave 0's stores, or serving waves ``0..wave``."""

    kind: str  # "shadow" | "serve"
    wave: int
    name: str
    bake_periods: int
    bake_min_seconds: float
    manual_approval: bool


STRATUM_FIELDS = ("type", "region", "size")


def check_plan(plan: RolloutPlan) -> RolloutPlan:
    """The plan's own rules beyond its types; ``InvalidInputError`` naming every field that breaks one."""
    problems = plan_problems(plan)
    if problems:
        raise InvalidInputError("; ".join(problems))
    return plan


def plan_problems(plan: RolloutPlan) -> list[str]:
    """Every rule of the plan it breaks, each naming the field (empty: a good plan)."""
    problems = [] if plan.waves else ["plan: waves: at least one wave is required"]
    last = 0.0
    for i, wave in enumerate(plan.waves):
        where = f"plan: waves[{i}]"
        if wave.share is None and not wave.groups and not wave.stores:
            problems.append(f"{where}: give a share, groups or stores")
        if wave.share is not None:
            if not 0 < wave.share <= 1:
                problems.append(f"{where}.share: must be in (0, 1]")
            if wave.share < last:
                problems.append(f"{where}.share: shares are cumulative and must not decrease")
            last = wave.share
        if wave.bake_periods < 0 or wave.bake_min_seconds < 0:
            problems.append(f"{where}: bake must not be negative")
    problems += [
        f"plan: stratify_by: unknown store attribute {name!r}"
        for name in plan.stratify_by
        if name not in STRATUM_FIELDS
    ]
    if plan.accuracy.max_wape_ratio <= 0:
        problems.append("plan: accuracy.max_wape_ratio: must be positive")
    if plan.health.max_errors_per_store < 0:
        problems.append("plan: health.max_errors_per_store: must not be negative")
    if not 0 <= plan.health.min_activated_share <= 1:
        problems.append("plan: health.min_activated_share: must be in [0, 1]")
    return problems


def parse_plan(data: dict[str, Any]) -> RolloutPlan:
    """A plan from decoded TOML/JSON, errors naming the field path."""
    try:
        plan = msgspec.convert(data, RolloutPlan)
    except msgspec.ValidationError as exc:
        raise InvalidInputError(f"plan: {exc}") from None
    return check_plan(plan)


def load_plan(path: Path) -> RolloutPlan:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(f"{path}: {exc}") from None
    try:
        return parse_plan(data)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: {exc}") from None


def steps_of(plan: RolloutPlan) -> list[Step]:
    steps: list[Step] = []
    if plan.shadow.enabled:
        steps.append(
            Step(
                kind="shadow",
                wave=0,
                name="shadow",
                bake_periods=plan.shadow.bake_periods,
                bake_min_seconds=plan.shadow.bake_min_seconds,
                manual_approval=False,
            )
        )
    for i, wave in enumerate(plan.waves):
        steps.append(
            Step(
                kind="serve",
                wave=i,
                name=wave.name or f"wave-{i + 1}",
                bake_periods=wave.bake_periods,
                bake_min_seconds=wave.bake_min_seconds,
                manual_approval=wave.manual_approval,
            )
        )
    return steps


def store_hash(rollout_id: str, store_id: str) -> float:
    """A uniform number in [0, 1) fixed by (rollout, store)."""
    digest = hashlib.sha256(f"{rollout_id}:{store_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stratum_of(store: dict[str, Any], fields: Sequence[str]) -> str:
    return "/".join(str(store.get(f) or "") for f in fields)


def assign_waves(
    rollout_id: str, plan: RolloutPlan, stores: Sequence[dict[str, Any]]
) -> dict[str, tuple[int, str]]:
    """``store_id -> (first wave, stratum)`` for the stores the plan reaches (others stay on the champion).

    Within each stratum the stores are ranked by their hash; a store at rank ``r`` of ``m`` sits at
    quantile ``(r + 0.5) / m`` and joins the first wave whose cumulative share covers it. Explicit groups
    and stores join their wave (or an earlier one). A wave that would get no new store takes the
    next-ranked one, so every wave changes something.
    """
    by_stratum: dict[str, list[dict[str, Any]]] = {}
    for store in stores:
        by_stratum.setdefault(stratum_of(store, plan.stratify_by), []).append(store)
    quantile: dict[str, float] = {}
    strata: dict[str, str] = {}
    for stratum, members in by_stratum.items():
        ranked = sorted(members, key=lambda s: (store_hash(rollout_id, s["store_id"]), s["store_id"]))
        for rank, store in enumerate(ranked):
            quantile[store["store_id"]] = (rank + 0.5) / len(ranked)
            strata[store["store_id"]] = stratum
    chosen: dict[str, int] = {}
    for i, wave in enumerate(plan.waves):
        before = len(chosen)
        joined = {s["store_id"] for s in stores if set(wave.groups) & set(s.get("groups") or [])}
        joined |= set(wave.stores) & set(quantile)
        if wave.share is not None:
            joined |= {sid for sid, q in quantile.items() if q <= wave.share + 1e-12}
        for sid in joined:
            chosen.setdefault(sid, i)
        if len(chosen) == before and wave.share is not None:
            left = sorted(
                (sid for sid in quantile if sid not in chosen),
                key=lambda sid: (quantile[sid], store_hash(rollout_id, sid)),
            )
            if left:
                chosen[left[0]] = i
    return {sid: (wave, strata[sid]) for sid, wave in chosen.items()}
