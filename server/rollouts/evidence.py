"""The accuracy gate's statistics: paired log WAPE ratios and a sequential test with a stated error rate.

**Paired evidence.** During a rollout every store of a wave scores both versions on one history in one
scoring (one of them in shadow), and both accuracy reports carry that scoring's id. Joined on it, the
two versions' absolute errors are over the very same series, periods and actuals, so per unit
``d = ln(candidate abs errors / champion abs errors)`` is the log of the candidate's WAPE ratio, free of
the differences between stores that made comparisons with other stores useless. A unit pools every
paired period since the rollout started: a store (all its categories) for the pooled test, a store's
category for a category's test. (Single forecasts' error ratios are heavy-tailed; a store's week pools
enough of them to make the units well-behaved.)

**The test.** Over the units a one-sided Student t interval of the mean of ``d``:

- *worse*: the lower bound is above 0: evidence the candidate's WAPE is higher (roll back);
- *not worse*: the upper bound is below ``ln(1 + min_degradation)``: evidence the candidate is less than
  the smallest degradation worth stopping for (the wave may pass);
- otherwise *open*: keep baking.

**Looking after every period.** The gate decides after each new period of evidence. The ``k``-th look
spends ``alpha_k = alpha * 6 / (pi^2 k^2)`` (these sum to ``alpha`` over all looks), so by the union bound
the chance that a candidate no worse than the champion is ever rolled back stays below ``alpha`` however
long the rollout bakes. Half of each look's ``alpha_k`` goes to the pooled test and half is split evenly
(Bonferroni) over the categories. Written here rather than taken from a library: the computation is a
dozen lines over ``scipy.stats.t``, and the spending rule must be the one the documentation states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WORSE, NOT_WORSE, OPEN = "worse", "not_worse", "open"


def look_alpha(alpha: float, look: int) -> float:
    """The share of ``alpha`` spent at look ``look`` (1-based); summed over every look it is ``alpha``."""
    return alpha * 6.0 / (math.pi**2 * max(1, look) ** 2)


def log_ratio(candidate_errors: float, champion_errors: float, actuals: float) -> float:
    """``ln(candidate / champion)`` of absolute error sums; a tiny floor keeps perfect forecasts finite."""
    floor = max(abs(actuals), 1.0) * 1e-9
    return math.log((candidate_errors + floor) / (champion_errors + floor))


@dataclass(frozen=True)
class TestResult:
    """One interval and its verdict; ``effect`` and the bounds are WAPE ratios (``exp`` of the logs)."""

    verdict: str
    n: int
    effect: float
    lower: float
    upper: float
    alpha: float

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "verdict": self.verdict,
            "n": self.n,
            "wape_ratio_effect": round(self.effect, 4),
            "ratio_lower": round(self.lower, 4),
            "ratio_upper": round(self.upper, 4),
            "alpha": float(f"{self.alpha:.3g}"),
        }


def paired_test(units: Sequence[float], *, alpha: float, min_degradation: float) -> TestResult | None:
    """The one-sided t test of the mean log ratio over ``units`` at level ``alpha``; None below two units."""
    from scipy.stats import t

    n = len(units)
    if n < 2:
        return None
    mean = sum(units) / n
    variance = sum((u - mean) ** 2 for u in units) / (n - 1)
    half = float(t.ppf(1.0 - alpha, n - 1)) * math.sqrt(variance / n)
    lower, upper = mean - half, mean + half
    if lower > 0:
        verdict = WORSE
    elif upper < math.log1p(min_degradation):
        verdict = NOT_WORSE
    else:
        verdict = OPEN
    return TestResult(
        verdict=verdict,
        n=n,
        effect=math.exp(mean),
        lower=math.exp(lower),
        upper=math.exp(upper),
        alpha=alpha,
    )
