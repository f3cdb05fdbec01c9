"""The distribution of total demand over the next ``n`` periods of each series, from its served forecast.

Each series' forecast gives a mean ``mu_t`` per period and a spread ``sigma_t``: half the width of the
upper interval, ``(hi_L - mu_t) / z_L`` averaged over the served levels (the upper side, because the
lower bound of unit sales is floored at 0), or ``sqrt(dispersion * mu_t)`` for series on a count law
(:mod:`forecasting.replenishment.structure`). How the periods' errors move together comes from the
series' error structure, written as a sum of independent unit innovations ``e_t = w_t * sum_k a_tk eta_k``
with ``w_t`` scaling each period to its own ``sigma_t``:

- level (``alpha``): ``a_tt = 1``, ``a_tk = alpha`` for ``k < t``; ``Var(e_t) = 1 + (t - 1) alpha^2``.
  ``alpha = 0`` is independent periods, ``alpha = 1`` a random walk;
- seasonal (``season = m``): period ``t`` repeats the value ``k_t = ceil(t / m)`` seasons back, so it
  carries the ``k_t`` innovations of its position in the season, shared with the other periods at the
  same position.

Then ``Var(sum_t e_t) = sum_k (sum_t w_t a_tk)^2``, computed in ``O(n)`` per series.

The total follows a negative binomial matched to the mean and that variance for unit sales (a Poisson
when the variance does not exceed the mean); a sum of days that are each negative binomial with the same
dispersion is exactly that law. Other series take a normal law. :class:`LeadTimeDemand` answers
quantiles, probabilities and expected shortages of those laws, vectorised over series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecasting.common.errors import DataError

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
KEYS = ["store_id", "item_id"]


@dataclass(frozen=True)
class ForecastMatrix:
    """A scored frame as ``(series, period)`` arrays aligned with ``keys`` (sorted by store and item)."""

    keys: pl.DataFrame
    mean: FloatArray
    sigma: FloatArray


def forecast_matrix(forecasts: pl.DataFrame, structure: pl.DataFrame) -> ForecastMatrix:
    """Means and per-period spreads of every series of ``forecasts`` that ``structure`` describes.

    Every series must have the same number of periods (a scored frame does).
    """
    levels = sorted(int(c.rsplit("-", 1)[1]) for c in forecasts.columns if c.startswith("forecast-hi-"))
    frame = forecasts.join(structure, on=KEYS, how="inner").sort(*KEYS, "ds")
    keys = frame.select(KEYS).unique(maintain_order=True)
    n = keys.height
    if n == 0:
        empty = np.zeros((0, 0))
        return ForecastMatrix(keys=structure.head(0), mean=empty, sigma=empty)
    if frame.height % n:
        raise DataError("forecasts: every series must have the same number of periods")
    h = frame.height // n
    mean = np.clip(frame["forecast"].to_numpy().astype(np.float64).reshape(n, h), 0.0, None)
    if levels:
        z = np.array([_z(level) for level in levels])
        upper = np.stack([frame[f"forecast-hi-{lv}"].to_numpy().astype(np.float64) for lv in levels])
        spread = np.clip(upper - frame["forecast"].to_numpy()[None, :], 0.0, None) / z[:, None]
        sigma = spread.mean(axis=0).reshape(n, h)
    else:
        sigma = np.zeros((n, h))
    per_series = keys.join(structure, on=KEYS, how="left", maintain_order="left")
    law = per_series["count_law"].to_numpy()
    dispersion = per_series["dispersion"].to_numpy().astype(np.float64)
    sigma = np.where(law[:, None], np.sqrt(dispersion[:, None] * mean), sigma)
    return ForecastMatrix(keys=per_series, mean=mean, sigma=sigma)


def _z(level: int) -> float:
    """Standard normal quantile of ``(1 + level/100) / 2``."""
    from statistics import NormalDist

    return NormalDist().inv_cdf((1.0 + level / 100.0) / 2.0)


def sum_variance(
    sigma: FloatArray, steps: np.ndarray[Any, Any], alpha: FloatArray, season: np.ndarray[Any, Any]
) -> FloatArray:
    """Variance of the sum of the first ``steps[i]`` periods' errors of each series (module docstring)."""
    n, h = sigma.shape
    t = np.arange(1, h + 1)
    inside = t[None, :] <= steps[:, None]
    seasonal = season > 1
    out = np.zeros(n)
    a = alpha[:, None]
    level_var = 1.0 + (t[None, :] - 1) * a**2
    w = np.where(inside, sigma / np.sqrt(level_var), 0.0)
    later = np.cumsum(w[:, ::-1], axis=1)[:, ::-1] - w  # sum over t > k of w_t
    level = ((w + a * later) ** 2).sum(axis=1)
    out[~seasonal] = level[~seasonal]
    for m in np.unique(season[seasonal]):
        rows = np.flatnonzero(season == m)
        k_t = np.ceil(t / m).astype(np.int64)
        ws = np.where(inside[rows], sigma[rows] / np.sqrt(k_t[None, :]), 0.0)
        total = np.zeros(len(rows))
        for position in range(int(m)):
            cols = np.flatnonzero((t - 1) % m == position)
            # innovation j (1-based) of this position reaches every period of it with k_t >= j
            shared = np.cumsum(ws[:, cols[::-1]], axis=1)[:, ::-1]
            total += (shared**2).sum(axis=1)
        out[rows] = total
    return out


@dataclass(frozen=True)
class LeadTimeDemand:
    """Total demand per series: ``count`` series negative binomial (or Poisson), the others normal."""

    mean: FloatArray
    variance: FloatArray
    count: BoolArray

    def quantile(self, p: FloatArray | float) -> FloatArray:
        """Smallest whole number ``s`` with ``P(D <= s) >= p`` (count laws); the normal quantile, floored
        at 0, otherwise."""
        from scipy import special, stats

        q = np.broadcast_to(np.asarray(p, dtype=np.float64), self.mean.shape)
        sd = np.sqrt(self.variance)
        out = np.maximum(self.mean + sd * special.ndtri(q), 0.0)
        if self.count.any():
            n_, p_, poisson = self._nb()
            c = self.count
            counts = np.where(
                poisson[c], stats.poisson.ppf(q[c], self.mean[c]), stats.nbinom.ppf(q[c], n_[c], p_[c])
            )
            out[c] = np.where(self.mean[c] > 0, counts, 0.0)
        result: FloatArray = out
        return result

    def cdf(self, x: FloatArray) -> FloatArray:
        """``P(D <= x)``."""
        from scipy import special, stats

        sd = np.sqrt(self.variance)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(sd > 0, special.ndtr((x - self.mean) / sd), (x >= self.mean).astype(np.float64))
        if self.count.any():
            n_, p_, poisson = self._nb()
            c = self.count
            k = np.floor(x[c])
            law = np.where(poisson[c], stats.poisson.cdf(k, self.mean[c]), stats.nbinom.cdf(k, n_[c], p_[c]))
            out[c] = np.where(self.mean[c] > 0, law, (x[c] >= 0).astype(np.float64))
        result: FloatArray = out
        return result

    def expected_shortage(self, x: FloatArray) -> FloatArray:
        """``E[(D - x)^+]``: for a count law ``mu * P(D' >= floor(x)) - x * P(D > floor(x))`` with ``D'`` the
        law with one more success (``k p(k) = mu p'(k - 1)``); for a normal law ``sd * (phi(z) - z (1 -
        Phi(z)))``."""
        from scipy import special, stats

        sd = np.sqrt(self.variance)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (x - self.mean) / sd
            normal = sd * (np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi) - z * special.ndtr(-z))
        out = np.where(sd > 0, normal, np.maximum(self.mean - x, 0.0))
        if self.count.any():
            n_, p_, poisson = self._nb()
            c = self.count
            xc, mu = x[c], self.mean[c]
            k = np.floor(xc)
            more = stats.nbinom.sf(k - 1, n_[c] + 1, p_[c])
            tail_plus = np.where(poisson[c], stats.poisson.sf(k - 1, mu), more)
            tail = np.where(poisson[c], stats.poisson.sf(k, mu), stats.nbinom.sf(k, n_[c], p_[c]))
            law = mu * tail_plus - xc * tail
            out[c] = np.where(mu > 0, law, np.maximum(-xc, 0.0))
        result: FloatArray = np.maximum(out, 0.0)
        return result

    def expected_leftover(self, x: FloatArray) -> FloatArray:
        """``E[(x - D)^+] = x - mu + E[(D - x)^+]``: stock left when ``x`` was available."""
        result: FloatArray = np.maximum(x - self.mean + self.expected_shortage(x), 0.0)
        return result

    def _nb(self) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Negative binomial ``(n, p)`` matched to mean and variance; True where the law is Poisson."""
        mu, var = self.mean, self.variance
        poisson = var <= mu * (1.0 + 1e-9)
        excess = np.where(poisson, 1.0, var - mu)
        n_ = np.where(poisson | (mu <= 0), 1.0, mu**2 / excess)
        p_ = np.where(poisson | (mu <= 0), 0.5, mu / np.where(var > 0, var, 1.0))
        return n_, p_, poisson


def lead_time_demand(matrix: ForecastMatrix, steps: Sequence[int] | np.ndarray[Any, Any]) -> LeadTimeDemand:
    """Total demand over the first ``steps[i]`` periods of series ``i`` of ``matrix``."""
    steps_arr = np.asarray(steps, dtype=np.int64)
    n, h = matrix.mean.shape
    if len(steps_arr) != n:
        raise DataError(f"lead_time_demand: {len(steps_arr)} step counts for {n} series")
    if n and (steps_arr.min() < 1 or steps_arr.max() > h):
        raise DataError(f"lead_time_demand: periods must be between 1 and the forecast horizon {h}")
    inside = np.arange(1, h + 1)[None, :] <= steps_arr[:, None]
    mean = np.where(inside, matrix.mean, 0.0).sum(axis=1)
    keys = matrix.keys
    variance = sum_variance(
        matrix.sigma,
        steps_arr,
        keys["alpha"].to_numpy().astype(np.float64),
        keys["season"].to_numpy().astype(np.int64),
    )
    return LeadTimeDemand(mean=mean, variance=variance, count=keys["count"].to_numpy().astype(bool))
