"""Vectorised numpy versions of statsforecast's edge-side arithmetic, for whole stores at once.

A store has tens of thousands of series; statsforecast applies a fitted model one series at a time
(about 1.6 ms per AutoETS series with intervals, plus many seconds to import). These kernels run the
same recursions over a matrix of series (one row each, right-aligned so every series ends at the last
column) and reproduce statsforecast's numbers: ``tests/forecasting/test_fitted.py`` checks each against
statsforecast itself (relative difference <= 1e-9). Only numpy is needed, so the agent does not import
statsforecast to score.

Covered: ``AutoETS`` ``forward`` (error A/M, trend N/A/Ad, season N/A/M: every model AutoETS selects
by default) with its analytic prediction intervals (classes 1-3), and the simple models that refit at
the edge: ``Naive``, ``SeasonalNaive``, ``HistoricAverage``, ``WindowAverage``,
``SeasonalWindowAverage``, ``RandomWalkWithDrift``. Beyond statsforecast: calibrated intervals
(conformal from many windows with horizon pooling, :func:`calibrated_conformal`; negative binomial
quantiles for intermittent unit sales, :func:`count_intervals`) and TSB with per-series constants
(:func:`tsb_fit`); these need scipy for the count law.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

_TOL = 1.0e-10
_HUGEN = 1.0e10
_NA = -99999.0
_CLASS3_BATCH = 512
_CONSTANT_BATCH = 2048

# ETS component strings as statsforecast writes them: error, trend, season, damped ("D"/"N").
ETS_SUPPORTED_ERROR = frozenset("AM")
ETS_SUPPORTED_TREND = frozenset("NA")
ETS_SUPPORTED_SEASON = frozenset("NAM")


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
# ETS
# ---------------------------------------------------------------------------------------------------


def ets_forward(  # noqa: PLR0912, PLR0915 - one branch per ETS component, in the order of statsforecast's update
    y: FloatArray,
    lengths: IntArray,
    components: str,
    m: int,
    par: FloatArray,
    n_params: IntArray,
    h: int,
    levels: Sequence[int],
) -> dict[str, FloatArray]:
    """statsforecast ``AutoETS.forward`` for many series that share one ETS form.

    ``y`` is time-major ``(width, n)``, right-aligned (see :func:`pad_right_aligned`); ``par`` is
    ``(n, 4 + nstate)`` holding ``alpha, beta, gamma, phi`` then the initial states, as in
    statsforecast's ``model_["par"]``. Runs the ETS filter from the initial states over each series
    with the parameters fixed (no re-estimation), then forecasts ``h`` steps with the analytic interval
    formulas. Returns ``(n, h)`` arrays. A constant series is forecast as that constant with
    zero-width intervals, as statsforecast does.
    """
    error, trend, season, damped = components[0], components[1], components[2], components[3]
    if (
        error not in ETS_SUPPORTED_ERROR
        or trend not in ETS_SUPPORTED_TREND
        or season not in ETS_SUPPORTED_SEASON
    ):
        raise ValueError(f"ETS components {components!r} have no vectorised kernel")
    width, n = y.shape
    has_trend = trend != "N"
    has_season = season != "N"
    if not has_season:
        m = 1
    alpha = par[:, 0].copy()
    beta = par[:, 1].copy() if has_trend else np.zeros(n)
    gamma = par[:, 2].copy() if has_season else np.zeros(n)
    phi = par[:, 3].copy() if damped == "D" else np.ones(n)
    level = par[:, 4].copy()
    slope = par[:, 5].copy() if has_trend else np.zeros(n)
    first_season = 4 + 1 + int(has_trend)
    # Ring buffer: ring[t % m] holds the seasonal state used at local time t (statsforecast keeps a
    # shifting array whose last element is the one in use; initial state s[j] is used at time m-1-j).
    ring = np.zeros((m, n))
    if has_season:
        ring[:, :] = par[:, first_season : first_season + m][:, ::-1].T
    start = width - lengths
    uniform = bool(np.all(start == 0))
    cols = np.arange(n)
    sse = np.zeros(n)
    beta_over_alpha = beta / alpha if has_trend else None
    multiplicative_error = error == "M"
    q = np.empty(n)
    e = np.empty(n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for t in range(int(start.min()) if n else 0, width):
            yt = y[t]
            if uniform:
                pos = None
                s_cur = ring[t % m] if has_season else None
            else:
                pos = (t - start) % m
                s_cur = ring[pos, cols] if has_season else None
            if has_trend:
                phib = phi * slope
                np.add(level, phib, out=q)
            else:
                q[:] = level
            if season == "A":
                assert s_cur is not None
                f0 = q + s_cur
                p = yt - s_cur
            elif season == "M":
                assert s_cur is not None
                f0 = q * s_cur
                p = np.where(np.abs(s_cur) < _TOL, _HUGEN, yt / s_cur)
            else:
                f0 = q
                p = yt
            np.subtract(yt, f0, out=e)
            if multiplicative_error:
                e /= f0
            new_level = q + alpha * (p - q)
            if has_trend:
                assert beta_over_alpha is not None
                new_slope = phib + beta_over_alpha * (new_level - level - phib)
            if has_season:
                assert s_cur is not None
                tt = yt - q if season == "A" else np.where(np.abs(q) < _TOL, _HUGEN, yt / q)
                new_s = s_cur + gamma * (tt - s_cur)
            sq = e * e
            if uniform:
                if multiplicative_error:
                    sq[np.isinf(sq)] = 0.0
                sse += sq
                level = new_level
                if has_trend:
                    slope = new_slope
                if has_season:
                    ring[t % m] = new_s
            else:
                active = t >= start
                sse += np.where(active & ~np.isinf(sq), sq, 0.0)
                level = np.where(active, new_level, level)
                if has_trend:
                    slope = np.where(active, new_slope, slope)
                if has_season:
                    assert pos is not None
                    ring[pos, cols] = np.where(active, new_s, ring[pos, cols])
    # forecasts from the final state
    steps = np.arange(h)
    mean = np.empty((n, h))
    phistar = phi.copy()
    for i in range(h):
        f = level + phistar * slope if has_trend else level.copy()
        if has_season:
            s_i = ring[(lengths + i) % m, cols]
            f = f + s_i if season == "A" else f * s_i
        mean[:, i] = f
        if i < h - 1:
            phistar = np.where(np.abs(phi - 1.0) < _TOL, phistar + 1.0, phistar + phi ** (i + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma2 = sse / (lengths - n_params - 1)
    last_state = _last_state(level, slope, ring, lengths, has_trend, has_season, m)
    sigmah2 = _ets_variance(components, m, sigma2, mean, alpha, beta, gamma, phi, last_state, h, steps)
    with np.errstate(invalid="ignore"):
        out = {"mean": mean, **intervals(mean, np.sqrt(sigmah2), levels)}
    constant = _constant_columns(y, start)
    if constant.any():
        value = y[width - 1, constant][:, None]
        for arr in out.values():
            arr[constant] = value
    return out


def _constant_columns(y: FloatArray, start: IntArray) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Columns whose valid values are all equal (checked fully only where first == last)."""
    width, n = y.shape
    result = np.zeros(n, dtype=bool)
    if width == 0:
        return result
    cols = np.arange(n)
    candidates = np.flatnonzero(y[np.minimum(start, width - 1), cols] == y[width - 1])
    before = np.arange(width)[:, None]
    for a in range(0, len(candidates), _CONSTANT_BATCH):
        block = candidates[a : a + _CONSTANT_BATCH]
        sub = y[:, block]
        same = (sub == sub[width - 1]) | (before < start[block][None, :])
        result[block] = same.all(axis=0)
    return result


def _last_state(
    level: FloatArray,
    slope: FloatArray,
    ring: FloatArray,
    lengths: IntArray,
    has_trend: bool,
    has_season: bool,
    m: int,
) -> FloatArray:
    """statsforecast's ``states[-1]``: level, (slope), then s[0..m-1] with s[m-1] the next in use."""
    cols = [level[:, None]]
    if has_trend:
        cols.append(slope[:, None])
    if has_season:
        j = np.arange(m)[None, :]
        idx = (lengths[:, None] + m - 1 - j) % m
        cols.append(np.take_along_axis(ring.T, idx, axis=1))
    return np.concatenate(cols, axis=1)


def _ets_variance(  # noqa: PLR0912 - one branch per model form, as in statsforecast's table
    components: str,
    m: int,
    sigma: FloatArray,
    pf: FloatArray,
    alpha: FloatArray,
    beta: FloatArray,
    gamma: FloatArray,
    phi: FloatArray,
    last_state: FloatArray,
    h: int,
    steps0: IntArray,
) -> FloatArray:
    """Forecast variance per step, the formulas of statsforecast's ``_compute_pred_intervals``."""
    error, trend, season, damped = components[0], components[1], components[2], components[3]
    steps = (steps0 + 1).astype(np.float64)[None, :]
    hm = float(np.floor((h - 1) / m))
    a, b, g, ph = alpha[:, None], beta[:, None], gamma[:, None], phi[:, None]
    s2 = sigma[:, None]
    if error == "A":
        exp1 = a**2 + a * b * steps + (1 / 6) * b**2 * steps * (2 * steps - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            exp2 = (b * ph * steps) / (1 - ph) ** 2
            exp3 = 2 * a * (1 - ph) + b * ph
            exp4 = (b * ph * (1 - ph**steps)) / ((1 - ph) ** 2 * (1 - ph**2))
            exp5 = 2 * a * (1 - ph**2) + b * ph * (1 + 2 * ph - ph**steps)
        form = (trend, season, damped)
        if form == ("N", "N", "N"):
            v = 1 + a**2 * (steps - 1)
        elif form == ("A", "N", "N"):
            v = 1 + (steps - 1) * exp1
        elif form == ("A", "N", "D"):
            v = 1 + a**2 * (steps - 1) + exp2 * exp3 - exp4 * exp5
        elif form == ("N", "A", "N"):
            v = 1 + a**2 * (steps - 1) + g * hm * (2 * a + g)
        elif form == ("A", "A", "N"):
            exp6 = 2 * a + g + b * m * (hm + 1)
            v = 1 + (steps - 1) * exp1 + g * hm * exp6
        elif form == ("A", "A", "D"):
            with np.errstate(divide="ignore", invalid="ignore"):
                exp7 = (2 * b * g * ph) / ((1 - ph) * (1 - ph**m))
                exp8 = hm * (1 - ph**m) - ph**m * (1 - ph ** (m * hm))
            v = 1 + a**2 * (steps - 1) + exp2 * exp3 - exp4 * exp5 + g * hm * (2 * a + g) + exp7 * exp8
        else:
            raise ValueError(f"ETS components {components!r} have no analytic intervals")
        result: FloatArray = s2 * v
        return result
    if season == "M":
        # (series, d, d) matrices per step: batches bound the memory
        out = np.empty((len(sigma), h))
        for first in range(0, len(sigma), _CLASS3_BATCH):
            part = slice(first, first + _CLASS3_BATCH)
            out[part] = _class3_variance(
                m,
                sigma[part],
                last_state[part],
                trend,
                damped,
                alpha[part],
                beta[part],
                gamma[part],
                phi[part],
                h,
            )
        return out
    k = steps0 + 1
    dvals = (k % m == 0).astype(np.float64)[None, :]
    if trend == "N" and season == "N":
        cvals = np.broadcast_to(a, (len(alpha), h))
    elif trend == "A" and season == "N" and damped == "N":
        cvals = a + b * steps
    elif trend == "A" and damped == "D":
        sum_phi = np.cumsum(ph ** k[None, :], axis=1)
        cvals = a + b * sum_phi + (g * dvals if season == "A" else 0.0)
    elif trend == "N" and season == "A":
        cvals = a + g * dvals
    else:  # MAA: statsforecast's formula multiplies alpha and beta (kept for identical numbers)
        cvals = a * b * steps + g * dvals
    return _compute_sigmah(pf, h, sigma, np.asarray(cvals, dtype=np.float64))


def _compute_sigmah(pf: FloatArray, h: int, sigma: FloatArray, cvals: FloatArray) -> FloatArray:
    theta = np.zeros_like(pf)
    theta[:, 0] = pf[:, 0] ** 2
    c2 = cvals**2
    for k in range(1, h):
        theta[:, k] = pf[:, k] ** 2 + sigma * np.einsum("nj,nj->n", c2[:, :k], theta[:, k - 1 :: -1][:, :k])
    result: FloatArray = (1 + sigma[:, None]) * theta - pf**2
    return result


def _class3_variance(
    m: int,
    sigma: FloatArray,
    last_state: FloatArray,
    trend: str,
    damped: str,
    alpha: FloatArray,
    beta: FloatArray,
    gamma: FloatArray,
    phi: FloatArray,
    h: int,
) -> FloatArray:
    """Multiplicative error and season (statsforecast ``_class3models``), batched over series."""
    n = len(sigma)
    k = 2 if trend != "N" else 1
    d = k * m
    h1 = np.ones(k)
    h2 = np.zeros(m)
    h2[m - 1] = 1.0
    if k == 1:
        f1 = np.ones((n, 1, 1))
        g1 = alpha.reshape(n, 1, 1)
    else:
        f1 = np.zeros((n, 2, 2))
        f1[:, 0, 0] = 1.0
        f1[:, 0, 1] = 1.0
        f1[:, 1, 1] = phi if damped != "N" else 1.0
        g1 = np.zeros((n, 2, 2))
        g1[:, 0, :] = alpha[:, None]
        g1[:, 1, :] = beta[:, None]
    f2 = np.zeros((m, m))
    f2[0, m - 1] = 1.0
    f2[1:, : m - 1] = np.eye(m - 1)
    g2 = np.zeros((n, m, m))
    g2[:, 0, m - 1] = gamma
    p = last_state.shape[1]
    mh = last_state[:, : p - m, None] * last_state[:, None, p - m :]  # (n, k, m)
    h21 = np.kron(h2, h1)  # (d,)
    f21 = np.einsum("ab,nij->naibj", f2, f1).reshape(n, d, d)
    g21 = np.einsum("nab,nij->naibj", g2, g1).reshape(n, d, d)
    kk = np.einsum("nab,nij->naibj", g2, f1).reshape(n, d, d) + np.einsum("ab,nij->naibj", f2, g1).reshape(
        n, d, d
    )
    vec = mh.reshape(n, -1)
    outer = vec[:, :, None] * vec[:, None, :]
    mu = np.einsum("i,nim,m->n", h1, mh, h2)
    vh = np.zeros((n, d, d))
    var = np.zeros((n, h))
    f21t, g21t, kkt = f21.transpose(0, 2, 1), g21.transpose(0, 2, 1), kk.transpose(0, 2, 1)
    s = sigma[:, None, None]
    for i in range(h):
        var[:, i] = (1 + sigma) * np.einsum("i,nij,j->n", h21, vh, h21) + sigma * mu**2
        exp1 = f21 @ (vh @ f21t)
        exp2 = f21 @ (vh @ g21t)
        exp3 = g21 @ (vh @ f21t)
        exp4 = kk @ ((vh + outer) @ kkt)
        exp5 = (s * g21) @ ((3 * vh + 2 * outer) @ g21t)
        vh = exp1 + s * (exp2 + exp3 + exp4 + exp5)
    return var


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


def _valid_mask(y: FloatArray, lengths: IntArray) -> np.ndarray[Any, Any]:
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
    valid = _valid_mask(y, lengths)
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
    valid = _valid_mask(y, lengths)
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


# ---------------------------------------------------------------------------------------------------
# Calibrated intervals: conformal over many windows, count quantiles for intermittent demand
# ---------------------------------------------------------------------------------------------------

# Scores a conformal quantile is taken from at least (when the windows allow): neighbouring horizon
# steps are pooled until this many are reached, so a 95 % bound is an order statistic, not the maximum.
CONFORMAL_MIN_SCORES = 50
# Periods of recent history whose index of dispersion scales the count distribution of intermittent series.
DISPERSION_WINDOW = 182
# TSB smoothing constants tried per series (demand size and demand probability alike).
TSB_ALPHA_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


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
    valid = _valid_mask(y, lengths)
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
