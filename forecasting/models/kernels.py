"""Vectorised numpy versions of statsforecast's edge-side arithmetic, for whole stores at once.

A store has tens of thousands of series; statsforecast applies a fitted model one series at a time
(about 1.6 ms per AutoETS series with intervals, plus many seconds to import). These kernels run the
same recursions over a matrix of series (one row each, right-aligned so every series ends at the last
column) and reproduce statsforecast's numbers: ``tests/forecasting/test_fitted.py`` checks each against
statsforecast itself (relative difference <= 1e-9). Only numpy is needed, so the agent does not import
statsforecast to score.

Here: the matrix layout (:func:`pad_right_aligned`), normal intervals, the simple models that refit at
the edge (``Naive``, ``SeasonalNaive``, ``HistoricAverage``, ``WindowAverage``, ``SeasonalWindowAverage``,
``RandomWalkWithDrift``), intermittent-demand means (Croston, TSB) and TSB with per-series constants
(:func:`tsb_fit`). ``AutoETS`` ``forward`` is in :mod:`forecasting.models.ets_kernel`; calibrated
intervals (conformal over many windows, count quantiles) in :mod:`forecasting.models.calibration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


def normal_quantiles(levels: Sequence[int]) -> FloatArray:
    """Standard normal quantiles ``z`` with ``P(|Z| <= z) = level/100``."""
    dist = NormalDist()
    return np.array([dist.inv_cdf(0.5 + lv / 200) for lv in levels], dtype=np.float64)


def intervals(mean: FloatArray, sigmah: FloatArray, levels: Sequence[int]) -> dict[str, FloatArray]:
    """``lo-<level>``/``hi-<level>`` = mean -/+ z * sigmah (arrays broadcast to ``mean``'s shape)."""
    out: dict[str, FloatArray] = {}
    for lv, z in zip(levels, normal_quantiles(levels), strict=True):
        out[f"lo-{lv}"] = mean - z * sigmah
        out[f"hi-{lv}"] = mean + z * sigmah
    return out


def pad_right_aligned(values: FloatArray, offsets: IntArray, idx: IntArray) -> tuple[FloatArray, IntArray]:
    """Series ``idx`` of a packed array as the columns of a time-major matrix; returns (matrix, lengths).

    The matrix is ``(width, len(idx))``: column ``c`` holds series ``idx[c]`` in its last ``lengths[c]``
    rows (right-aligned, so every series ends on the last row); the rows before are 0. Time-major
    keeps each time step contiguous for the recursions below.
    """
    starts = offsets[idx]
    lengths = (offsets[idx + 1] - starts).astype(np.int64)
    n = len(idx)
    if n == 0:
        return np.zeros((0, 0)), lengths
    width = int(lengths.max())
    if int(lengths.min()) == width:
        total = len(offsets) - 1
        if offsets[0] == 0 and int(offsets[-1]) == total * width and len(values) == total * width:
            # every series of the packed array has this length: a zero-copy (series, time) view
            series_major = values.reshape(total, width)[idx]
        else:
            series_major = values[starts[:, None] + np.arange(width)[None, :]]
        return np.ascontiguousarray(series_major.T), lengths
    local = np.arange(width)[None, :] - (width - lengths)[:, None]
    series_major = values[starts[:, None] + np.maximum(local, 0)]
    series_major[local < 0] = 0.0
    return np.ascontiguousarray(series_major.T), lengths


# ---------------------------------------------------------------------------------------------------
# Simple models that refit at the edge
# ---------------------------------------------------------------------------------------------------


def naive(y: FloatArray, lengths: IntArray, h: int, levels: Sequence[int]) -> dict[str, FloatArray]:
    """statsforecast ``Naive``: last value; sigma from one-step differences, widening with sqrt(step)."""
    width = y.shape[0]
    mean = np.repeat(y[width - 1][:, None], h, axis=1)
    sigma = _sigma(_masked_diff(y, lengths, 1), lengths - 1)
    sigmah = sigma[:, None] * np.sqrt(np.arange(1, h + 1))[None, :]
    return {"mean": mean, **intervals(mean, sigmah, levels)}


def seasonal_naive(
    y: FloatArray, lengths: IntArray, h: int, levels: Sequence[int], season_length: int
) -> dict[str, FloatArray]:
    """statsforecast ``SeasonalNaive``: repeat the last season; sigma of seasonal differences."""
    m = season_length
    width = y.shape[0]
    if int(lengths.min(initial=m)) < m:
        raise ValueError("SeasonalNaive kernel needs at least one full season per series")
    last = y[width - m :].T
    reps = -(-h // m)
    mean = np.tile(last, (1, reps))[:, :h]
    sigma = _sigma(_masked_diff(y, lengths, m), lengths - m)
    k = np.floor(np.arange(h) / m)
    sigmah = sigma[:, None] * np.sqrt(k + 1)[None, :]
    return {"mean": mean, **intervals(mean, sigmah, levels)}


def historic_average(
    y: FloatArray, lengths: IntArray, h: int, levels: Sequence[int]
) -> dict[str, FloatArray]:
    """statsforecast ``HistoricAverage``: mean of the history; constant interval width."""
    width = y.shape[0]
    valid = np.arange(width)[:, None] >= (width - lengths)[None, :]
    avg = np.where(valid, y, 0.0).sum(axis=0) / lengths
    mean = np.repeat(avg[:, None], h, axis=1)
    sigma = _sigma(np.where(valid, y - avg[None, :], np.nan), lengths - 1)
    sigmah = (sigma * np.sqrt(1 + 1 / lengths))[:, None] * np.ones((1, h))
    return {"mean": mean, **intervals(mean, sigmah, levels)}


def random_walk_with_drift(
    y: FloatArray, lengths: IntArray, h: int, levels: Sequence[int]
) -> dict[str, FloatArray]:
    """statsforecast ``RandomWalkWithDrift``: last value plus the average step."""
    width = y.shape[0]
    first = y[width - lengths, np.arange(len(lengths))]
    last = y[width - 1]
    slope = (last - first) / (lengths - 1)
    steps = np.arange(1, h + 1)[None, :]
    mean = last[:, None] + slope[:, None] * steps
    resid = _masked_diff(y, lengths, 1) - slope[None, :]
    sigma = _sigma(resid, lengths - 1)
    sigmah = sigma[:, None] * np.sqrt(steps * (1 + steps / (lengths[:, None] - 1)))
    return {"mean": mean, **intervals(mean, sigmah, levels)}


def window_average(y: FloatArray, lengths: IntArray, h: int, window_size: int) -> dict[str, FloatArray]:
    """statsforecast ``WindowAverage`` point forecasts (NaN when the history is shorter than the window)."""
    width = y.shape[0]
    n = len(lengths)
    avg = y[width - window_size :].mean(axis=0) if width >= window_size else np.full(n, np.nan)
    avg = np.where(lengths >= window_size, avg, np.nan)
    return {"mean": np.repeat(avg[:, None], h, axis=1)}


def seasonal_window_average(
    y: FloatArray, lengths: IntArray, h: int, season_length: int, window_size: int
) -> dict[str, FloatArray]:
    """statsforecast ``SeasonalWindowAverage`` point forecasts."""
    width = y.shape[0]
    need = season_length * window_size
    n = len(lengths)
    if width < need:
        return {"mean": np.full((n, h), np.nan)}
    season = y[width - need :].T.reshape(n, window_size, season_length).mean(axis=1)
    season = np.where((lengths >= need)[:, None], season, np.nan)
    reps = -(-h // season_length)
    return {"mean": np.tile(season, (1, reps))[:, :h]}


def _masked_diff(y: FloatArray, lengths: IntArray, lag: int) -> FloatArray:
    """Time-major ``y[t] - y[t-lag]`` where both lie inside the series; NaN elsewhere."""
    width = y.shape[0]
    diff = np.full_like(y, np.nan)
    if width > lag:
        diff[lag:] = y[lag:] - y[:-lag]
    diff[np.arange(width)[:, None] < (width - lengths + lag)[None, :]] = np.nan
    return diff


def _sigma(resid: FloatArray, dof: IntArray) -> FloatArray:
    total = np.nansum(resid**2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt(total / dof)
    result: FloatArray = np.where(dof > 0, sigma, 0.0)
    return result


# ---------------------------------------------------------------------------------------------------
# Intermittent demand and window averages, with statsforecast's conformal intervals
# ---------------------------------------------------------------------------------------------------


def _ses_full(y: FloatArray, start: IntArray, alpha: float | FloatArray) -> FloatArray:
    """statsforecast ``_ses_forecast`` over each whole (right-aligned) series: the one-step forecast."""
    width, n = y.shape
    level = np.full(n, np.nan)
    complement = 1.0 - alpha
    for t in range(int(start.min(initial=width)), width):
        yt = y[t]
        active = t >= start
        init = active & (t == start)
        level = np.where(init, yt, level)
        level = np.where(active, alpha * yt + complement * level, level)
    return level


def _ses_events(values: FloatArray, events: np.ndarray[Any, Any], alpha: float | FloatArray) -> FloatArray:
    """SES over the subsequence of rows where ``events`` is true (per column); NaN without any event."""
    width, n = values.shape
    level = np.full(n, np.nan)
    complement = 1.0 - alpha
    for t in range(width):
        ev = events[t]
        if not ev.any():
            continue
        vt = values[t]
        level = np.where(ev & np.isnan(level), vt, level)
        level = np.where(ev, alpha * vt + complement * level, level)
    return level


def valid_mask(y: FloatArray, lengths: IntArray) -> np.ndarray[Any, Any]:
    """True where a column of the right-aligned matrix holds history (its last ``lengths`` rows)."""
    width = y.shape[0]
    result: np.ndarray[Any, Any] = np.arange(width)[:, None] >= (width - lengths)[None, :]
    return result


def tsb_mean(
    y: FloatArray, lengths: IntArray, h: int, alpha_d: float | FloatArray, alpha_p: float | FloatArray
) -> FloatArray:
    """statsforecast ``TSB`` point forecasts: SES of the demand probability times SES of the demand sizes.

    ``alpha_d``/``alpha_p``: one value for all series, or one per series (e.g. from :func:`tsb_fit`).
    """
    width = y.shape[0]
    start = width - lengths
    valid = valid_mask(y, lengths)
    demand = valid & (y > 0)
    prob = _ses_full(np.where(valid, (y != 0).astype(np.float64), 0.0), start, alpha_p)
    size = _ses_events(y, demand, alpha_d)
    nonzero = (valid & (y != 0)).any(axis=0)
    mean = np.where(nonzero, prob * size, 0.0)
    return np.repeat(mean[:, None], h, axis=1)


def croston_classic_mean(y: FloatArray, lengths: IntArray, h: int) -> FloatArray:
    """statsforecast ``CrostonClassic`` point forecasts (alpha 0.1 for sizes and intervals)."""
    width = y.shape[0]
    start = width - lengths
    valid = valid_mask(y, lengths)
    demand = valid & (y > 0)
    nonzero = valid & (y != 0)
    size = _ses_events(y, demand, 0.1)
    # inter-demand intervals: local index of a non-zero value minus the previous one's (first: index + 1)
    local = np.arange(width)[:, None] - start[None, :]
    last = np.where(nonzero, local, -1)
    previous = np.maximum.accumulate(np.vstack([np.full((1, y.shape[1]), -1), last[:-1]]), axis=0)
    gaps = (local - previous).astype(np.float64)
    interval = _ses_events(gaps, nonzero, 0.1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(interval != 0.0, size / interval, size)
    mean = np.where(demand.any(axis=0), mean, y[width - 1])  # no demand at all: Naive
    return np.repeat(mean[:, None], h, axis=1)


def window_mean(y: FloatArray, lengths: IntArray, h: int, window_size: int) -> FloatArray:
    """``WindowAverage`` point forecasts as an ``(n, h)`` array."""
    return window_average(y, lengths, h, window_size)["mean"]


# ---------------------------------------------------------------------------------------------------
# TSB constants fitted per series
# ---------------------------------------------------------------------------------------------------

# TSB smoothing constants tried per series (demand size and demand probability alike).
TSB_ALPHA_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def tsb_fit(
    y: FloatArray,
    lengths: IntArray,
    grid_d: Sequence[float] = TSB_ALPHA_GRID,
    grid_p: Sequence[float] = TSB_ALPHA_GRID,
) -> tuple[FloatArray, FloatArray]:
    """Per-series TSB smoothing constants ``(alpha_d, alpha_p)`` of least in-sample one-step MSE.

    Every pair of the grids is run at once (one pass over time holding ``len(grid_p) x len(grid_d)``
    states per series); the one-step forecast at ``t + 1`` is ``p_t * z_t``, the demand probability and
    size smoothed up to ``t``, as :func:`tsb_mean` forecasts. Ties go to the first pair in grid order
    (smaller ``alpha_d``, then smaller ``alpha_p``).
    """
    width, n = y.shape
    gd = np.asarray(grid_d, dtype=np.float64)[:, None]
    gp = np.asarray(grid_p, dtype=np.float64)[:, None]
    start = width - lengths
    prob = np.full((len(gp), n), np.nan)
    size = np.full((len(gd), n), np.nan)
    sse = np.zeros((len(gp), len(gd), n))
    for t in range(int(start.min(initial=width)), width):
        yt = y[t]
        active = t >= start
        if t > int(start.min(initial=width)):
            forecast = np.nan_to_num(prob)[:, None, :] * np.nan_to_num(size)[None, :, :]
            err = yt[None, None, :] - forecast
            sse += np.where((active & (t > start))[None, None, :], err * err, 0.0)
        ind = (yt != 0).astype(np.float64)
        prob = np.where(active & np.isnan(prob), ind, prob)
        prob = np.where(active, gp * ind + (1.0 - gp) * prob, prob)
        demand = active & (yt > 0)
        size = np.where(demand & np.isnan(size), yt, size)
        size = np.where(demand, gd * yt + (1.0 - gd) * size, size)
    flat = sse.transpose(1, 0, 2).reshape(len(gd) * len(gp), n)
    choice = np.argmin(flat, axis=0)
    alpha_d = gd[:, 0][choice // len(gp)]
    alpha_p = gp[:, 0][choice % len(gp)]
    return alpha_d, alpha_p
