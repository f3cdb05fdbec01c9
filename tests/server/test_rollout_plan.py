"""Rollout plans: validation naming the field, deterministic stratified wave assignment, the example plan."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from server.errors import InvalidInputError
from server.rollouts.plan import assign_waves, load_plan, parse_plan, steps_of

FLEET = [
    {"store_id": f"s{i:02d}", "type": "AB"[i % 2], "region": "NSEW"[(i // 2) % 4], "groups": []}
    for i in range(40)
]


def plan(**extra: object) -> dict[str, object]:
    return {"waves": [{"share": 0.25}, {"share": 1.0}], **extra}


def test_assignment_is_deterministic_per_rollout_and_stratified() -> None:
    """The same rollout picks the same stores; each wave holds its share of every type x region stratum."""
    parsed = parse_plan(plan())
    first = assign_waves("ro-1", parsed, FLEET)
    assert first == assign_waves("ro-1", parsed, FLEET)
    assert first != assign_waves("ro-2", parsed, FLEET)
    wave0 = Counter(stratum for wave, stratum in first.values() if wave == 0)
    assert sorted(wave0.values()) == [1] * 8  # 8 strata of 5 stores: quantile 0.1 is the only one <= 0.25
    assert len(first) == len(FLEET)


def test_groups_and_explicit_stores_join_their_wave() -> None:
    """A wave of groups/stores takes exactly those; a later share wave adds the rest."""
    fleet = [dict(s, groups=["pilot"] if s["store_id"] in ("s03", "s07") else []) for s in FLEET]
    parsed = parse_plan({"waves": [{"groups": ["pilot"], "stores": ["s11"]}, {"share": 1.0}]})
    chosen = assign_waves("ro-x", parsed, fleet)
    assert sorted(s for s, (w, _) in chosen.items() if w == 0) == ["s03", "s07", "s11"]


def test_shadow_phase_comes_first() -> None:
    """With a shadow phase the steps are shadow (wave 0's stores), then the serving waves."""
    steps = steps_of(parse_plan(plan(shadow={"enabled": True})))
    assert [(s.kind, s.wave) for s in steps] == [("shadow", 0), ("serve", 0), ("serve", 1)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"waves": []}, "waves"),
        ({"waves": [{"share": 1.5}]}, "waves[0].share"),
        ({"waves": [{"share": 0.5}, {"share": 0.2}]}, "waves[1].share"),
        ({"waves": [{}]}, "waves[0]"),
        ({"waves": [{"share": 1.0, "bake_weeks": 2}]}, "bake_weeks"),
        ({"waves": [{"share": 1.0}], "stratify_by": ["colour"]}, "stratify_by"),
    ],
)
def test_bad_plans_are_refused_naming_the_field(data: dict[str, object], message: str) -> None:
    """A bad plan fails with the offending field in the message."""
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_plan(data)


def test_example_plan_loads() -> None:
    """configs/rollout.toml is a valid plan."""
    loaded = load_plan(Path(__file__).parents[2] / "configs" / "rollout.toml")
    assert [w.name for w in loaded.waves] == ["canary", "half", "everyone"]
