"""Calibrated prediction intervals for whole stores at once: conformal intervals from many windows with
horizon pooling (:func:`calibrated_conformal`, and statsforecast's own :func:`conformal`), and negative
binomial count quantiles for intermittent unit sales (:func:`count_intervals`, which needs scipy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from forecasting.models.kernels import FloatArray, IntArray, valid_mask


def conformal(
    point: Any, y: FloatArray, lengths: IntArray, h: int, levels: Sequence[int], n_windows: int = 2
) -> dict[str, FloatArray]:
    """Point forecasts plus statsforecast's ``conformal_distribution`` intervals.

    ``point(y, lengths, h) -> (n, h)`` is re-run on the history cut ``k*h`` periods short for each of the
    ``n_windows`` windows; the absolute errors on the cut-off periods become the conformity scores. A
    series too short for ``n_windows`` windows (``(length - 1) // h < n_windows``) gets NaN intervals.
    """
    mean = point(y, lengths, h)
    out = {"mean": mean}
    if not levels:
        return out
    width, n = y.shape
    windows = np.minimum(n_windows, (lengths - 1) // h)
    ok = windows >= n_windows
    lv = sorted(levels)
    for key in [f"lo-{v}" for v in lv] + [f"hi-{v}" for v in lv]:
        out[key] = np.full((n, h), np.nan)
    if not ok.any() or width <= n_windows * h:
        return out
    cols = np.flatnonzero(ok)
    sub, sub_len = y[:, cols], lengths[cols]
    scores = np.empty((n_windows, len(cols), h))
    for i in range(n_windows):
        cut = (n_windows - i) * h
        train, train_len = sub[: width - cut], sub_len - cut
        scores[i] = np.abs(point(train, train_len, h) - sub[width - cut : width - cut + h].T)
    m = mean[cols][None, :, :]
    stacked = np.concatenate([m - scores, m + scores], axis=0)
    alphas = [100 - v for v in lv]
    cuts = [a / 200 for a in reversed(alphas)] + [1 - a / 200 for a in alphas]
    quantiles = np.quantile(stacked, cuts, axis=0)
    names = [f"lo-{v}" for v in reversed(lv)] + [f"hi-{v}" for v in lv]
    for q, name in zip(quantiles, names, strict=True):
        out[name][cols] = q
    return out


# Scores a conformal quantile is taken from at least (when the windows allow): neighbouring horizon
# steps are pooled until this many are reached, so a 95 % bound is an order statistic, not the maximum.
CONFORMAL_MIN_SCORES = 50
# Periods of recent history whose index of dispersion scales the count distribution of intermittent series.
DISPERSION_WINDOW = 182


def conformal_scores(
    point: Any, y: FloatArray, lengths: IntArray, h: int, n_windows: int, select: Any = None
) -> FloatArray:
    """Absolute errors ``(n_windows, n, h)`` of ``point`` on the last ``n_windows`` windows of ``h`` periods.

    Window ``k`` (1-based) forecasts from the history cut ``k*h`` periods short and compares with the cut
    periods. A window that leaves fewer than two periods to fit on (or on which ``point`` gives NaN) is NaN.
    ``select(columns)``, when given, returns the point forecaster of that subset of the series (for
    forecasters that hold per-series state).
    """
    width, n = y.shape
    scores = np.full((n_windows, n, h), np.nan)
    for k in range(1, n_windows + 1):
        cut = k * h
        train_len = lengths - cut
        cols = np.flatnonzero(train_len >= 2)
        if width <= cut or len(cols) == 0:
            break
        sub_len = train_len[cols]
        train = y[width - cut - int(sub_len.max()) : width - cut, cols]
        forecaster = point if select is None else select(cols)
        forecast = np.asarray(forecaster(train, sub_len, h), dtype=np.float64)
        scores[k - 1, cols] = np.abs(forecast - y[width - cut : width - cut + h, cols].T)
    return scores


def conformal_quantiles(scores: FloatArray, levels: Sequence[int], min_scores: int) -> dict[int, FloatArray]:
    """Split-conformal quantiles of ``scores`` ``(windows, n, h)`` per series and step: ``{level: (n, h)}``.

    A series with ``w`` complete windows has ``w`` scores per step; step ``j`` pools the scores of the
    ``L = ceil(min_scores / w)`` steps nearest ``j`` (all steps when ``L >= h``), so the quantile rests on
    about ``min_scores`` errors while still widening along the horizon. The quantile is the
    ``(m + 1) * level``-th smallest of the ``m`` pooled scores, interpolated between neighbours (the
    largest when ``m`` is too small): a new error falls below it with probability ``level`` when
    errors are exchangeable, whereas the usual ``ceil`` rank over-covers by up to ``1 / (m + 1)``
    (86 % for an 80 % interval from 13 scores). No complete window: NaN.
    """
    n_windows, n, h = scores.shape
    complete = np.isfinite(scores).all(axis=2).sum(axis=0) if n_windows else np.zeros(n, dtype=np.int64)
    out = {lv: np.full((n, h), np.nan) for lv in levels}
    for w in np.unique(complete[complete > 0]):
        cols = np.flatnonzero(complete == w)
        span = min(h, -(-min_scores // int(w)))
        block = scores[:, cols, :]
        for j in range(h):
            first = min(max(j - (span - 1) // 2, 0), h - span)
            pooled = np.sort(
                block[:, :, first : first + span].transpose(1, 0, 2).reshape(len(cols), -1), axis=1
            )
            m = np.isfinite(pooled).sum(axis=1)
            for lv in levels:
                pos = np.clip((m + 1) * lv / 100.0, 1.0, np.maximum(m, 1)) - 1.0
                below = np.floor(pos).astype(np.int64)
                above = np.minimum(below + 1, np.maximum(m - 1, 0))
                lower = np.take_along_axis(pooled, below[:, None], axis=1)[:, 0]
                upper = np.take_along_axis(pooled, above[:, None], axis=1)[:, 0]
                out[lv][cols, j] = lower + (pos - below) * (upper - lower)
    return out


def calibrated_conformal(
    point: Any,
    y: FloatArray,
    lengths: IntArray,
    h: int,
    levels: Sequence[int],
    n_windows: int,
    min_scores: int = CONFORMAL_MIN_SCORES,
) -> dict[str, FloatArray]:
    """Point forecasts plus symmetric conformal intervals from up to ``n_windows`` windows of ``h``.

    Each series uses as many of the ``n_windows`` windows as its history holds (:func:`conformal_scores`),
    and neighbouring horizon steps are pooled when the windows are few (:func:`conformal_quantiles`):
    ``mean -/+ q[level]``. statsforecast's own conformal intervals interpolate between the few scores of
    each step (two windows: four values), which covers well below the nominal level.
    """
    mean = np.asarray(point(y, lengths, h), dtype=np.float64)
    out = {"mean": mean}
    if not levels:
        return out
    q = conformal_quantiles(conformal_scores(point, y, lengths, h, n_windows), levels, min_scores)
    for lv in levels:
        out[f"lo-{lv}"] = mean - q[lv]
        out[f"hi-{lv}"] = mean + q[lv]
    return out


def count_series(y: FloatArray, lengths: IntArray) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Columns whose whole history is non-negative whole numbers (unit sales)."""
    valid = valid_mask(y, lengths)
    whole = (y >= 0) & (y == np.floor(y))
    result: np.ndarray[Any, np.dtype[np.bool_]] = (whole | ~valid).all(axis=0) & (lengths > 0)
    return result


def dispersion_index(y: FloatArray, lengths: IntArray, window: int = DISPERSION_WINDOW) -> FloatArray:
    """Variance over mean of the last ``window`` periods of each series, at least 1 (Poisson)."""
    width = y.shape[0]
    span = np.minimum(lengths, window)
    recent = np.arange(width)[:, None] >= (width - span)[None, :]
    vals = np.where(recent, y, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.nanmean(vals, axis=0)
        var = np.nanvar(vals, axis=0, ddof=1)
        phi = np.where(mean > 0, var / mean, 1.0)
    result: FloatArray = np.maximum(np.nan_to_num(phi, nan=1.0), 1.0)
    return result


def count_intervals(
    mean: FloatArray, y: FloatArray, lengths: IntArray, levels: Sequence[int]
) -> dict[str, FloatArray]:
    """Quantiles of a negative binomial with the forecast as its mean and the history's dispersion.

    For intermittent unit sales the demand of one period is a count that is zero most of the time: a
    symmetric interval around a rate of 0.3 a day excludes the zero days that make up most of the data.
    The count in each future period is taken as negative binomial (gamma-Poisson) with mean ``mean`` and
    variance ``phi * mean``, ``phi`` the index of dispersion of the series' recent history
    (:func:`dispersion_index`; Poisson when ``phi`` is 1). A parametric count law, unlike a bootstrap
    of past demand, follows the forecast rate (TSB or Croston) rather than the past average and needs no
    random draws, so the edge and training give the same bounds; its two moments come from the same
    history as the forecast. The lower bound is the ``(1 - level) / 2`` quantile; the upper one the
    quantile that brings the mass between the bounds to ``level``, so the tail mass the lower bound
    leaves unused (all of it when the lower bound is 0, as it is whenever ``P(Y = 0) >= (1 - level) / 2``)
    goes to the upper tail, and an 80 % interval is ``[0, q80]`` rather than a ``[0, q90]`` that
    would cover 90 %. Of the two whole numbers around that quantile the upper bound is the one whose
    coverage is nearer ``level`` (a count law jumps: always rounding up covers 98 % for a nominal 95 %).
    ``mean``: ``(n, h)``.
    """
    from scipy import stats

    mu_all = np.clip(np.nan_to_num(mean, nan=0.0), 0.0, None)
    phi_all = dispersion_index(y, lengths)[:, None] * np.ones_like(mu_all)
    # flat forecasts (every intermittent family) repeat one (rate, dispersion) pair along the horizon
    pairs, inverse = np.unique(
        np.stack([mu_all.ravel(), phi_all.ravel()], axis=1), axis=0, return_inverse=True
    )
    mu, phi = pairs[:, 0], pairs[:, 1]
    over = phi > 1.0 + 1e-9
    positive = mu > 0
    nb_n = np.where(over & positive, mu / np.where(over, phi - 1.0, 1.0), 1.0)
    nb_p = np.where(over, 1.0 / phi, 0.5)
    lam = np.where(positive, mu, 1.0)

    # The whole distribution up to far in its upper tail, one column per pair: pmf by scipy, then cumsum;
    # a quantile is the first count whose cdf reaches it (scipy's ppf, element by element, is 50x slower).
    top = int(np.ceil(np.max(mu + 12.0 * np.sqrt(phi * mu), initial=0.0))) + 12
    k = np.arange(top + 1, dtype=np.float64)[:, None]
    pmf = np.zeros((top + 1, len(mu)))
    pmf[:, over] = stats.nbinom.pmf(k, nb_n[over], nb_p[over])
    pmf[:, ~over] = stats.poisson.pmf(k, lam[~over])
    table = np.cumsum(pmf, axis=0)

    def ppf(q: FloatArray | float) -> FloatArray:
        qq = np.broadcast_to(np.asarray(q, dtype=np.float64), mu.shape)
        reached = table >= qq[None, :] - 1e-12
        first = np.where(reached.any(axis=0), reached.argmax(axis=0), top).astype(np.float64)
        result: FloatArray = np.where(positive, first, 0.0)
        return result

    def cdf(counts: FloatArray) -> FloatArray:
        idx = np.clip(counts, 0, top).astype(np.int64)
        values = table[idx, np.arange(len(mu))]
        result: FloatArray = np.where(counts < 0, 0.0, values)
        return result

    out: dict[str, FloatArray] = {"mean": mean}
    missing = np.isnan(mean)
    for lv in levels:
        alpha = 1.0 - lv / 100.0
        lo = ppf(alpha / 2.0)
        below = np.where(lo > 0, cdf(lo - 1.0), 0.0)
        target = np.clip(1.0 - alpha + below, 0.0, 1.0)
        hi = ppf(target)
        shorter = hi - 1.0
        closer = (shorter >= lo) & (target - cdf(shorter) < cdf(hi) - target)
        hi = np.where(closer, shorter, hi)
        for side, bound in (("lo", lo), ("hi", hi)):
            values = bound[inverse.ravel()].reshape(mean.shape)
            out[f"{side}-{lv}"] = np.where(missing, np.nan, values).astype(np.float64)
    return out


def scaled_bounds(
    mean: FloatArray, level: FloatArray, quantiles: dict[str, list[float]], levels: Sequence[int]
) -> dict[str, FloatArray]:
    """Bounds ``mean -+ q[step] * level`` for an ``(n, h)`` mean and an ``(n,)`` level (the last step's
    quantile serves steps beyond the calibrated horizon)."""
    h = mean.shape[1]
    out: dict[str, FloatArray] = {}
    for lv in levels:
        q = np.asarray(quantiles[str(lv)], dtype=np.float64)
        width = q[np.minimum(np.arange(h), len(q) - 1)][None, :] * level[:, None]
        out[f"lo-{lv}"] = mean - width
        out[f"hi-{lv}"] = mean + width
    return out
