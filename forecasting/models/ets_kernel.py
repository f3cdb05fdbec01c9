"""AutoETS ``forward`` for whole stores at once: statsforecast's ETS recursions and analytic prediction
intervals (classes 1-3) over a matrix of right-aligned series (error A/M, trend N/A/Ad, season N/A/M).

``tests/forecasting/test_fitted.py`` checks it against statsforecast itself (relative difference <= 1e-9).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from forecasting.models.kernels import FloatArray, IntArray, intervals

_TOL = 1.0e-10
_HUGEN = 1.0e10
_NA = -99999.0
_CLASS3_BATCH = 512
_CONSTANT_BATCH = 2048

# ETS component strings as statsforecast writes them: error, trend, season, damped ("D"/"N").
ETS_SUPPORTED_ERROR = frozenset("AM")
ETS_SUPPORTED_TREND = frozenset("NA")
ETS_SUPPORTED_SEASON = frozenset("NAM")


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
