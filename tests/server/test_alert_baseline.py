"""The learnt-baseline accuracy rule alone: tolerance from the scope's spread, persistence, hysteresis."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import msgspec
import numpy as np
import pytest

from server.config import load_server_config
from server.quality.alerts import AlertRule, default_rules, judge_learnt
from server.quality.baseline import LearntBaseline, PeriodSums, judge_baseline, learn, lifecycle

SETTINGS = LearntBaseline()
WINDOW = next(r.window for r in default_rules() if r.baseline is not None)


def weeks(ratios: list[float], backtest: float = 0.2, n: int = 4, version: int = 1) -> list[PeriodSums]:
    """Weekly periods whose live WAPE is ``ratio`` x the backtest WAPE (1,000 of actuals each)."""
    first = date(2024, 1, 5)
    return [
        PeriodSums(period=str(first + timedelta(weeks=i)), n=n, abs_err_sum=1000.0 * backtest * r,
                   abs_y_sum=1000.0, backtest_wape=backtest, version=version)
        for i, r in enumerate(ratios)
    ]  # fmt: skip


def noisy(count: int, seed: int, sd: float, level: float = 1.0) -> list[float]:
    """Live / backtest ratios: ``level`` with log-normal week-to-week noise."""
    rng = np.random.default_rng(seed)
    return [float(level * math.exp(x)) for x in rng.normal(0.0, sd, count)]


@pytest.mark.parametrize("seed", range(20))
def test_a_stable_series_never_fires(seed: int) -> None:
    """Two years of weeks with a steady level and 30 % log-normal noise raise no alert."""
    periods = weeks(noisy(104, seed, sd=0.3, level=1.4))
    assert lifecycle(periods, WINDOW, SETTINGS) == []


def test_a_steady_store_far_from_its_backtest_does_not_fire() -> None:
    """A store whose WAPE is steadily 2.2 x the backtest's learns that level before persistence is met."""
    periods = weeks(noisy(60, 3, sd=0.1, level=2.2))
    assert lifecycle(periods, WINDOW, SETTINGS) == []
    verdict = judge_baseline(periods, WINDOW, SETTINGS)
    assert verdict.details["baseline_ratio"] == pytest.approx(2.2, rel=0.1)


def test_a_30_percent_step_up_fires_after_the_persistence_window() -> None:
    """A calm year, then WAPE 30 % worse: no alert before, one within window + persistence weeks after."""
    ratios = noisy(60, 11, sd=0.02) + [1.3 * r for r in noisy(20, 12, sd=0.02)]
    events = lifecycle(weeks(ratios), WINDOW, SETTINGS)
    assert events, "the step never fired"
    index, kind = events[0]
    assert kind == "fired"
    assert 60 + SETTINGS.persistence - 1 <= index <= 60 + WINDOW + SETTINGS.persistence - 1


def test_fires_only_after_persistence_consecutive_periods_beyond() -> None:
    """Beyond for persistence - 1 periods and back: nothing; one more beyond period fires."""
    base = noisy(30, 5, sd=0.02)
    short = base + [3.0] * (SETTINGS.persistence - 1) + [1.0] * WINDOW
    assert all(kind != "fired" for _, kind in lifecycle(weeks(short, n=4), 1, SETTINGS))
    long = base + [3.0] * SETTINGS.persistence
    assert lifecycle(weeks(long), 1, SETTINGS) == [(len(long) - 1, "fired")]


def test_resolves_with_hysteresis() -> None:
    """A firing alert stays open while the value sits between the clear level and the upper bound."""
    base = noisy(30, 8, sd=0.02)
    periods = weeks(base + [2.0] * 5)
    fired = judge_baseline(periods, 1, SETTINGS)
    assert fired.state == "firing"
    upper, clear = fired.details["upper_ratio"], fired.details["clear_ratio"]
    assert isinstance(upper, float) and isinstance(clear, float) and clear < upper
    between = math.sqrt(upper * clear)
    events = lifecycle(weeks(base + [2.0] * 5 + [between] * 3 + [1.0]), 1, SETTINGS)
    assert events == [(32, "fired"), (38, "resolved")]


def test_tolerance_follows_the_history_spread_and_shrinks_to_the_prior() -> None:
    """No history: the prior's tolerance; a long volatile history widens it, a calm one narrows it."""
    centre, tolerance = learn([], SETTINGS)
    assert (centre, tolerance) == (0.0, SETTINGS.tolerance_mads * SETTINGS.prior_spread)
    calm = [0.5 + 0.01 * (-1) ** i for i in range(26)]
    volatile = [0.5 + 1.2 * (-1) ** i for i in range(26)]
    calm_centre, calm_tol = learn(calm, SETTINGS)
    _, wild_tol = learn(volatile, SETTINGS)
    assert calm_centre == pytest.approx(0.5 * 26 / (26 + SETTINGS.prior_periods))
    assert SETTINGS.min_tolerance <= calm_tol < tolerance < wild_tol


def test_the_verdict_explains_itself() -> None:
    """Details name live and backtest WAPE, the learnt baseline, the upper bound and the periods beyond."""
    verdict = judge_baseline(weeks([1.0] * 20 + [2.5] * 6, backtest=0.1), WINDOW, SETTINGS)
    assert verdict.state == "firing"
    d = verdict.details
    assert d["live_wape"] == pytest.approx(0.25) and d["backtest_wape"] == pytest.approx(0.1)
    assert d["ratio"] == pytest.approx(2.5) and verdict.value == pytest.approx(2.5)
    assert isinstance(d["periods_beyond"], int) and d["periods_beyond"] >= SETTINGS.persistence
    assert d["history_windows"] == min(SETTINGS.history_periods, 26 + 1 - 2 * WINDOW)
    assert verdict.threshold == pytest.approx(d["upper_ratio"])
    assert d["baseline_ratio"] == pytest.approx(1.0, rel=0.05)


def test_without_a_full_window_or_backtest_the_verdict_is_unknown() -> None:
    """Too few periods, no actuals or no backtest WAPE: unknown (never fires, never resolves)."""
    assert judge_baseline(weeks([5.0] * (WINDOW - 1)), WINDOW, SETTINGS).state == "unknown"
    no_backtest = [msgspec.structs.replace(p, backtest_wape=None) for p in weeks([5.0] * 10)]
    assert judge_baseline(no_backtest, WINDOW, SETTINGS).state == "unknown"
    rule = AlertRule(name="r", metric="wape_ratio", window=2, min_samples=100, baseline=SETTINGS)
    assert judge_learnt(rule, weeks([5.0] * 10, n=4)).state == "unknown"


def test_rules_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    """A rule needs a threshold unless it learns one, and only wape_ratio can learn one."""
    with pytest.raises(ValueError, match="needs a threshold"):
        AlertRule(name="r", metric="wape")
    with pytest.raises(ValueError, match="wape_ratio"):
        AlertRule(name="r", metric="wape", baseline=SETTINGS)
    with pytest.raises(ValueError, match="persistence"):
        LearntBaseline(persistence=0)
    path = tmp_path / "server.toml"
    path.write_text("""
[[alerts.rules]]
name = "accuracy-degradation"
metric = "wape_ratio"
window = 3
[alerts.rules.baseline]
persistence = 2
tolerance_mads = 4.0
""")
    config = load_server_config([path])
    (rule,) = config.alerts.rules
    assert rule.baseline == LearntBaseline(persistence=2, tolerance_mads=4.0)


def test_a_lasting_degradation_stays_open_until_accuracy_returns() -> None:
    """A year at 3x the error never becomes the baseline: one alert, open all year, resolved on recovery."""
    calm = noisy(30, 21, sd=0.1)
    events = lifecycle(
        weeks(calm + [3.0 * r for r in noisy(52, 22, sd=0.1)] + noisy(10, 23, sd=0.1)), WINDOW, SETTINGS
    )
    assert [kind for _, kind in events] == ["fired", "resolved"]
    assert events[0][0] < 30 + WINDOW + SETTINGS.persistence and events[1][0] >= 30 + 52
