"""Rollout plans (TOML): waves, bake, gates, shadow phase; and the deterministic, stratified wave assignment.

A plan's waves are cumulative: wave ``k`` serves the candidate to every store of waves ``0..k``. A wave
takes a ``share`` of the fleet (cumulative, 0-1], explicit ``groups`` and ``stores``, or both. Stores are
drawn per stratum (store type and region) in the order of ``sha256(seed:store_id)`` (the plan's ``seed``,
by default the rollout id), so every wave is representative of the fleet and the same rollout always
picks the same stores.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from forecasting.common.contracts import Count, Version
from server.errors import InvalidInputError


class WavePlan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One wave: which stores join it, how long it bakes, whether a person must approve what follows.

    ``shadow_periods``: before the wave's new stores serve the candidate, they score it in shadow beside
    the champion for this many periods (0: they serve it at once). ``champion_shadow``: while the wave's
    stores serve the candidate they score the champion in shadow, so every period gives paired evidence.
    """

    name: str = ""
    share: float | None = None
    groups: list[str] = msgspec.field(default_factory=list)
    stores: list[str] = msgspec.field(default_factory=list)
    bake_periods: Count = 2
    bake_min_seconds: float = 0.0
    manual_approval: bool = False
    shadow_periods: Count = 0
    champion_shadow: bool = True


class HealthGate(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Every wave store must run the candidate within ``activation_timeout_seconds`` and keep reporting.

    ``max_errors_per_store``: new update/scoring errors a wave store may report during a step.
    """

    activation_timeout_seconds: float = 3600.0
    min_activated_share: float = 1.0
    max_stale_share: float = 0.0
    stale_after_seconds: float = 3600.0
    max_errors_per_store: Count = 0


class AccuracyGate(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The paired sequential test of the candidate against the champion (see :mod:`server.rollouts.evidence`).

    ``max_false_rollback``: the chance of rolling back a candidate no worse than the champion, over the
    whole rollout however often it looks. ``min_degradation``: the relative WAPE increase worth stopping
    for; a wave passes once the candidate is shown to be less than that much worse. ``max_wape_ratio``:
    a hard ceiling on a category's paired WAPE ratio, applied on ``min_observations`` forecasts without
    waiting for the test. ``min_reporting_share``: the share of the step's stores whose paired evidence
    of the step must be in before it passes (reports of one period arrive store by store).
    ``max_step_periods``: a step still open after this many periods of its own is decided by the
    estimate (a truncated test): worse than halfway to ``min_degradation`` fails, else passes.
    """

    enabled: bool = True
    max_false_rollback: float = 0.05
    min_degradation: float = 0.05
    max_wape_ratio: float = 2.0
    min_reporting_share: float = 0.8
    max_step_periods: Count = 6
    min_observations: Count = 100
    min_stores: Count = 1
    min_periods: Count = 1


class ShadowPhase(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Before serving: stores score the candidate beside the champion they serve, on the same history.

    ``scope``: ``"wave"``, the first wave's stores; ``"fleet"``, every store the rollout reaches, so the
    gate judges the first look on paired evidence from the whole fleet while no store serves the
    candidate yet (shadow scoring changes nothing a store serves). Turned on by the server for a rollout
    whose first wave covers every store (there is then no later wave to learn from before the whole fleet
    serves the candidate).
    """

    enabled: bool = False
    scope: Literal["wave", "fleet"] = "wave"
    bake_periods: Count = 2
    bake_min_seconds: float = 0.0


class RolloutPlan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A whole plan (``configs/rollout.toml``). ``model_name``/``version`` may come from the command line."""

    name: str = ""
    model_name: str = ""
    version: Version | None = None
    seed: str = ""  # draws the waves (default: the rollout id, a new draw per rollout)
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
    champion_shadow: bool = True
    fleet: bool = False  # the step reaches every store of the rollout, whatever its wave

    def covers(self, wave: int) -> bool:
        """Whether a store first served in ``wave`` takes part in this step."""
        return self.fleet or wave <= self.wave

    def shadows(self, wave: int) -> bool:
        """Whether a store first served in ``wave`` scores the candidate in shadow in this step."""
        return self.kind == "shadow" and (self.fleet or wave == self.wave)


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
        if wave.bake_periods < 0 or wave.bake_min_seconds < 0 or wave.shadow_periods < 0:
            problems.append(f"{where}: bake and shadow periods must not be negative")
    problems += [
        f"plan: stratify_by: unknown store attribute {name!r}"
        for name in plan.stratify_by
        if name not in STRATUM_FIELDS
    ]
    problems += _gate_problems(plan)
    if plan.health.max_errors_per_store < 0:
        problems.append("plan: health.max_errors_per_store: must not be negative")
    if not 0 <= plan.health.min_activated_share <= 1:
        problems.append("plan: health.min_activated_share: must be in [0, 1]")
    return problems


def _gate_problems(plan: RolloutPlan) -> list[str]:
    accuracy, problems = plan.accuracy, []
    if accuracy.max_wape_ratio <= 1:
        problems.append("plan: accuracy.max_wape_ratio: must be above 1 (a hard ceiling)")
    if not 0 < accuracy.max_false_rollback < 0.5:
        problems.append("plan: accuracy.max_false_rollback: must be in (0, 0.5)")
    if accuracy.max_step_periods < 1:
        problems.append("plan: accuracy.max_step_periods: must be at least 1")
    if not 0 <= accuracy.min_reporting_share <= 1:
        problems.append("plan: accuracy.min_reporting_share: must be in [0, 1]")
    if not 0 < accuracy.min_degradation < 1:
        problems.append("plan: accuracy.min_degradation: must be in (0, 1)")
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
    """Each wave's steps: its shadow step (the plan's ``shadow`` or ``shadow_periods``), then serving."""
    steps: list[Step] = []
    for i, wave in enumerate(plan.waves):
        name = wave.name or f"wave-{i + 1}"
        if i == 0 and plan.shadow.enabled:
            shadow_bake, shadow_seconds = plan.shadow.bake_periods, plan.shadow.bake_min_seconds
        else:
            shadow_bake, shadow_seconds = wave.shadow_periods, 0.0
        if shadow_bake > 0 or (i == 0 and plan.shadow.enabled):
            steps.append(
                Step(
                    kind="shadow",
                    wave=i,
                    name="shadow" if i == 0 else f"{name}-shadow",
                    bake_periods=shadow_bake,
                    bake_min_seconds=shadow_seconds,
                    manual_approval=False,
                    champion_shadow=wave.champion_shadow,
                    fleet=i == 0 and plan.shadow.enabled and plan.shadow.scope == "fleet",
                )
            )
        steps.append(
            Step(
                kind="serve",
                wave=i,
                name=name,
                bake_periods=wave.bake_periods,
                bake_min_seconds=wave.bake_min_seconds,
                manual_approval=wave.manual_approval,
                champion_shadow=wave.champion_shadow,
            )
        )
    return steps


def shadow_first(plan: RolloutPlan, chosen: dict[str, tuple[int, str]], fleet_size: int) -> RolloutPlan:
    """The plan with a shadow phase when its first wave covers every store of the fleet.

    Serving the candidate everywhere at once would leave no store to learn from first, so those stores
    score it in shadow (for the first wave's bake) before they serve it.
    """
    first_wave = sum(1 for wave, _ in chosen.values() if wave == 0)
    if plan.shadow.enabled or fleet_size == 0 or first_wave < fleet_size:
        return plan
    bake = max(1, plan.waves[0].bake_periods)
    return msgspec.structs.replace(plan, shadow=ShadowPhase(enabled=True, bake_periods=bake))


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
    seed = plan.seed or rollout_id
    for stratum, members in by_stratum.items():
        ranked = sorted(members, key=lambda s: (store_hash(seed, s["store_id"]), s["store_id"]))
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
                key=lambda sid: (quantile[sid], store_hash(seed, sid)),
            )
            if left:
                chosen[left[0]] = i
    return {sid: (wave, strata[sid]) for sid, wave in chosen.items()}
