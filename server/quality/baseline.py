"""Accuracy degradation judged against a learnt baseline: the version's backtest and the scope's own history.

The unit is a store x category's live accuracy of the served version per report period (a week), as the
log of live WAPE over the served version's backtest WAPE. The judged value at period ``t`` is the median
of those over the ``window`` periods ending at ``t``: a single bad week (a holiday, a stock-out) does not
move it, most of the window has to be worse.

The baseline of the value at ``t`` comes from the earlier window values that do not overlap ``t``'s
window and were not beyond their own baseline (at most ``history_periods`` of them): their median
(centre) and 1.4826 x MAD (spread), robust to a few bad weeks. A degradation therefore never becomes
its own baseline: the alert stays open until the accuracy comes back (or a new version, with its own
backtest, serves). While that history is short both are shrunk toward the prior: centre 0 (live WAPE as in
the backtest) and spread ``prior_spread``, the prior weighing as much as ``prior_periods`` windows. The
tolerance is ``tolerance_mads`` spreads (at least ``min_tolerance``), so a volatile store x category gets a
wide band and a steady one a narrow one.

The value is *beyond* at ``t`` when it exceeds ``centre + tolerance``. The rule fires when it is beyond at
each of the last ``persistence`` periods, and (once firing) resolves when the newest value is back under
``centre + clear_fraction x tolerance`` (hysteresis: between the two an open alert stays open and none
fires). Everything here is pure: per-period sums in, verdict and its numbers out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

import msgspec

MAD_SCALE = 1.4826  # MAD x 1.4826 estimates the standard deviation of normal data
RATIO_FLOOR = 1e-3  # a period with (almost) no error: its log ratio is bounded instead of -inf


class LearntBaseline(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[alerts.rules.baseline]``: how an accuracy rule learns its tolerance (log WAPE-ratio units).

    Defaults chosen on the real Walmart weeks (see docs/monitoring.md): a store x department's weekly
    WAPE ratio to the backtest spreads by about 0.8 (log units) week to week and its level sits within
    +-0.7 of the backtest's, hence the wide prior until the scope's own history takes over.
    """

    history_periods: int = 52
    tolerance_mads: float = 3.0
    min_tolerance: float = 0.2
    prior_spread: float = 0.8
    prior_periods: float = 4.0
    persistence: int = 3
    clear_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.history_periods < 1 or self.persistence < 1:
            raise ValueError("baseline.history_periods and baseline.persistence must be >= 1")
        if self.tolerance_mads <= 0 or self.min_tolerance < 0 or self.prior_spread <= 0:
            raise ValueError("baseline.tolerance_mads, prior_spread must be > 0 and min_tolerance >= 0")
        if self.prior_periods < 0 or not 0 <= self.clear_fraction <= 1:
            raise ValueError("baseline.prior_periods must be >= 0 and baseline.clear_fraction in [0, 1]")


class PeriodSums(msgspec.Struct, frozen=True, kw_only=True):
    """One report period of a scope key (served version): pooled errors, actuals and backtest WAPE."""

    period: str  # the period's end date (ISO), for the explanation
    n: int
    abs_err_sum: float
    abs_y_sum: float
    backtest_wape: float | None  # the served rows' backtest WAPE, weighted by their row counts
    version: int | None = None


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """The judged value at one period and the baseline it was held against (log ratios)."""

    period: str
    value: float  # median over the window ending at this period of log(live WAPE / backtest WAPE)
    centre: float
    tolerance: float
    history: int  # windows the baseline learnt from (before shrinkage)

    @property
    def beyond(self) -> bool:
        return self.value > self.centre + self.tolerance


class Judgement(msgspec.Struct, frozen=True, kw_only=True):
    """A learnt-baseline verdict and the numbers an alert page shows."""

    state: Literal["firing", "ok", "holding", "unknown"]
    value: float | None = None  # newest window's median live / backtest WAPE ratio
    threshold: float | None = None  # the ratio it must exceed to count as beyond
    samples: int = 0  # forecast rows in the newest window
    details: dict[str, object] = msgspec.field(default_factory=dict)


def period_value(period: PeriodSums) -> float | None:
    """log(live WAPE / backtest WAPE) of one period; None without actuals or a backtest WAPE."""
    if period.abs_y_sum <= 0 or not period.backtest_wape or period.backtest_wape <= 0:
        return None
    ratio = period.abs_err_sum / period.abs_y_sum / period.backtest_wape
    return math.log(max(ratio, RATIO_FLOOR))


def pooled(periods: Sequence[PeriodSums]) -> tuple[float | None, float | None, int]:
    """Live WAPE and row-weighted backtest WAPE pooled over ``periods``, and their forecast rows."""
    abs_y = sum(p.abs_y_sum for p in periods)
    weighted = [(p.backtest_wape, p.n) for p in periods if p.backtest_wape is not None and p.n > 0]
    bt_n = sum(w for _, w in weighted)
    wape = sum(p.abs_err_sum for p in periods) / abs_y if abs_y > 0 else None
    backtest = sum(b * w for b, w in weighted) / bt_n if bt_n else None
    return wape, backtest, sum(p.n for p in periods)


def points(periods: Sequence[PeriodSums], window: int, settings: LearntBaseline) -> list[Point]:
    """The judged value and its baseline at every period with a full window behind it, oldest first."""
    single = [period_value(p) for p in periods]
    values: list[tuple[int, float]] = []
    for end in range(window - 1, len(periods)):
        part = single[end - window + 1 : end + 1]
        if all(v is not None for v in part):
            values.append((end, statistics.median(v for v in part if v is not None)))
    out: list[Point] = []
    within: list[tuple[int, float]] = []  # the values that were not beyond their own baseline
    for end, value in values:
        past = [v for e, v in within if e <= end - window][-settings.history_periods :]
        centre, tolerance = learn(past, settings)
        point = Point(
            period=periods[end].period, value=value, centre=centre, tolerance=tolerance, history=len(past)
        )
        out.append(point)
        if not point.beyond:
            within.append((end, value))
    return out


def learn(past: Sequence[float], settings: LearntBaseline) -> tuple[float, float]:
    """Centre and tolerance from past window values, shrunk toward the backtest while they are few."""
    n = len(past)
    weight = n / (n + settings.prior_periods) if n else 0.0
    if n:
        median = statistics.median(past)
        mad = MAD_SCALE * statistics.median(abs(v - median) for v in past)
    else:
        median = mad = 0.0
    centre = weight * median
    spread = weight * mad + (1 - weight) * settings.prior_spread
    return centre, max(settings.min_tolerance, settings.tolerance_mads * spread)


def judge_baseline(periods: Sequence[PeriodSums], window: int, settings: LearntBaseline) -> Judgement:
    """The verdict at the newest period: firing after ``persistence`` beyond periods in a row, ok under the
    clear level, holding between; unknown without a full window."""
    judged = points(periods, window, settings)
    if not judged or judged[-1].period != periods[-1].period:
        return Judgement(state="unknown")
    last = judged[-1]
    recent = judged[-settings.persistence :]
    streak = 0
    for point in reversed(judged):
        if not point.beyond:
            break
        streak += 1
    wape, backtest, rows = pooled(periods[-window:])
    clear_at = last.centre + settings.clear_fraction * last.tolerance
    if len(recent) == settings.persistence and all(p.beyond for p in recent):
        state: Literal["firing", "ok", "holding"] = "firing"
    elif last.value <= clear_at:
        state = "ok"
    else:
        state = "holding"
    details: dict[str, object] = {
        "window_periods": window,
        "period": last.period,
        "version": periods[-1].version,
        "live_wape": wape,
        "backtest_wape": backtest,
        "ratio": math.exp(last.value),
        "baseline_ratio": math.exp(last.centre),
        "upper_ratio": math.exp(last.centre + last.tolerance),
        "clear_ratio": math.exp(clear_at),
        "tolerance_log": last.tolerance,
        "history_windows": last.history,
        "periods_beyond": streak,
        "persistence": settings.persistence,
        "recent": [{"period": p.period, "ratio": math.exp(p.value),
                    "upper_ratio": math.exp(p.centre + p.tolerance)} for p in judged[-8:]],
    }  # fmt: skip
    return Judgement(
        state=state, value=math.exp(last.value), threshold=math.exp(last.centre + last.tolerance),
        samples=rows, details=details,
    )  # fmt: skip


def lifecycle(periods: Sequence[PeriodSums], window: int, settings: LearntBaseline) -> list[tuple[int, str]]:
    """Events (index, ``fired``/``resolved``) of one scope key fed its periods one at a time, as the server
    does: a firing verdict opens an alert when none is open, an ok verdict resolves the open one."""
    events: list[tuple[int, str]] = []
    open_alert = False
    for i in range(len(periods)):
        state = judge_baseline(periods[: i + 1], window, settings).state
        if state == "firing" and not open_alert:
            open_alert = True
            events.append((i, "fired"))
        elif state == "ok" and open_alert:
            open_alert = False
            events.append((i, "resolved"))
    return events
