"""The accuracy gate's paired sequential test: its stated false-rollback rate holds when it looks after
every period, it catches a 5 % worse candidate, and it says why in words and numbers."""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from server.rollouts.evidence import NOT_WORSE, OPEN, WORSE, look_alpha, paired_test
from server.rollouts.gates import judge_accuracy
from server.rollouts.plan import AccuracyGate

STEP_START = datetime(2024, 1, 1)
CATEGORIES = [f"dept-{k}" for k in range(6)]


def paired_rows(
    rng: random.Random, *, stores: int, periods: int, effect: float, noise: float = 0.08
) -> list[list[dict[str, Any]]]:
    """Per period, paired rows of ``stores`` x 6 categories: candidate = champion x e^(effect + noise)."""
    weeks = []
    for p in range(periods):
        end = date(2024, 1, 7) + timedelta(days=7 * p)
        rows = []
        for s in range(stores):
            for c in CATEGORIES:
                actuals = 1000.0 * (1 + s % 3) * (1 + CATEGORIES.index(c))
                champion = actuals * 0.12 * math.exp(rng.gauss(0, 0.3))
                candidate = champion * math.exp(effect + rng.gauss(0, noise))
                rows.append({
                    "store_id": f"s{s}", "category": c, "period_end": end, "n": 7,
                    "candidate_errors": candidate, "champion_errors": champion, "actuals": actuals,
                    "received_at": STEP_START + timedelta(days=7 * p + 1),
                })  # fmt: skip
        weeks.append(rows)
    return weeks


def first_decision(weeks: list[list[dict[str, Any]]], gate: AccuracyGate) -> tuple[str, int]:
    """The gate's first non-inconclusive outcome when it looks after every period, and at which look."""
    seen: list[dict[str, Any]] = []
    for look, rows in enumerate(weeks, start=1):
        seen.extend(rows)
        outcome = judge_accuracy(gate, seen, STEP_START)["outcome"]
        if outcome != "inconclusive":
            return outcome, look
    return "inconclusive", len(weeks)


def test_spending_sums_to_alpha_over_every_look() -> None:
    assert sum(look_alpha(0.05, k) for k in range(1, 200_000)) == pytest.approx(0.05, rel=1e-4)
    assert look_alpha(0.05, 1) > look_alpha(0.05, 2) > look_alpha(0.05, 10)


def test_false_rollback_rate_stays_below_alpha_when_looking_after_every_period() -> None:
    """600 rollouts of a candidate exactly as accurate (noisy per unit), 8 looks each; alpha 5 %."""
    rng = random.Random(11)
    gate = AccuracyGate(min_observations=0)
    rollbacks = sum(
        first_decision(paired_rows(rng, stores=4, periods=8, effect=0.0), gate)[0] == "fail"
        for _ in range(600)
    )
    # binomial(600, 0.05) exceeds 45 with probability < 1 %; the bound is conservative, the rate lower
    assert rollbacks <= 45, rollbacks


def test_a_five_percent_worse_candidate_is_rolled_back_within_two_periods() -> None:
    rng = random.Random(5)
    gate = AccuracyGate(min_observations=0)
    decisions = [first_decision(paired_rows(rng, stores=9, periods=2, effect=math.log(1.05)), gate)
                 for _ in range(100)]  # fmt: skip
    caught = sum(outcome == "fail" for outcome, _ in decisions)
    assert caught >= 90, decisions


def test_identical_candidate_passes_at_the_first_look_and_says_why() -> None:
    rng = random.Random(3)
    rows = paired_rows(rng, stores=4, periods=1, effect=0.0, noise=0.0)[0]
    verdict = judge_accuracy(AccuracyGate(min_observations=0), rows, STEP_START)
    assert verdict["outcome"] == "pass"
    assert verdict["reason"].startswith("not 5% worse: WAPE ratio 1.000")
    assert verdict["pooled"]["n"] == 4  # stores
    assert verdict["step_periods"] == 1
    assert verdict["look"] == 1


def test_ceiling_fails_at_once_and_thin_evidence_waits() -> None:
    rng = random.Random(4)
    rows = paired_rows(rng, stores=2, periods=1, effect=math.log(2.5), noise=0.0)[0]
    verdict = judge_accuracy(AccuracyGate(min_observations=0), rows, STEP_START)
    assert verdict["outcome"] == "fail"
    assert "above the ceiling 2.0" in verdict["reason"]
    thin = judge_accuracy(AccuracyGate(min_observations=10_000, max_wape_ratio=3.0), rows, STEP_START)
    assert thin["outcome"] == "inconclusive"
    assert "needs 10000" in thin["reason"]
    assert judge_accuracy(AccuracyGate(), [], STEP_START)["reason"].endswith("no paired evidence yet")


def test_paired_test_verdicts() -> None:
    assert paired_test([0.0], alpha=0.05, min_degradation=0.05) is None
    worse = paired_test([0.10, 0.12, 0.09, 0.11], alpha=0.01, min_degradation=0.05)
    assert worse is not None and worse.verdict == WORSE and worse.lower > 1
    fine = paired_test([0.0, 0.01, -0.01, 0.0], alpha=0.01, min_degradation=0.05)
    assert fine is not None and fine.verdict == NOT_WORSE and fine.upper < 1.05
    unsure = paired_test([0.3, -0.3, 0.2, -0.1], alpha=0.01, min_degradation=0.05)
    assert unsure is not None and unsure.verdict == OPEN


def test_a_step_still_open_after_max_step_periods_is_decided_by_the_estimate() -> None:
    """Three stores disagreeing (x1.22, x0.90, x1.02): open at every look, decided at the sixth period."""

    def rows(factors: list[float], periods: int) -> list[dict[str, Any]]:
        return [
            {"store_id": f"s{s}", "category": c, "period_end": date(2024, 1, 7) + timedelta(days=7 * p),
             "n": 7, "candidate_errors": 100.0 * f, "champion_errors": 100.0, "actuals": 1000.0,
             "received_at": STEP_START + timedelta(days=7 * p + 1)}
            for p in range(periods) for s, f in enumerate(factors) for c in CATEGORIES
        ]  # fmt: skip

    gate = AccuracyGate(min_observations=0)
    mixed = [1.22, 0.90, 1.02]
    assert judge_accuracy(gate, rows(mixed, 5), STEP_START)["outcome"] == "inconclusive"
    decided = judge_accuracy(gate, rows(mixed, 6), STEP_START)
    assert decided["outcome"] == "fail"
    assert decided["reason"].startswith("still open after 6 periods")
    assert "above the midpoint 1.025" in decided["reason"]
    below = judge_accuracy(gate, rows([1.15, 0.88, 1.0], 6), STEP_START)
    assert below["outcome"] == "pass", below["reason"]
