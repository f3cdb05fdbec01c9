"""Forecasts from fitted state, as the edge and the training's backtests make them: a batch of series of one
model entry at a time (:func:`forecast_batch`), vectorised kernels where they exist, statsforecast's
``forward`` elsewhere, calibrated intervals (:func:`calibrated_forecast`) and ensembles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from forecasting.bundle.format import IntervalSettings, ModelEntry
from forecasting.common.errors import BundleError
from forecasting.models.fitted import (
    CONFORMAL_ONLY,
    CONFORMAL_WINDOWS,
    FITTED_STATE_CODECS,
    INTERMITTENT_FAMILIES,
    RECALIBRATED_NATIVE,
    FloatArray,
    IntArray,
    make_model,
    supports_native_intervals,
)


def level_columns(levels: Sequence[int]) -> list[str]:
    """Output column names for the intervals: ``lo-80, hi-80, lo-95, hi-95``."""
    return [f"{side}-{lv}" for lv in sorted(levels) for side in ("lo", "hi")]


def forecast_batch(
    entry: ModelEntry,
    season_length: int,
    y: FloatArray,
    lengths: IntArray,
    h: int,
    levels: Sequence[int],
    states: pl.DataFrame | None = None,
    intervals: IntervalSettings | None = None,
) -> dict[str, FloatArray]:
    """Forecast ``h`` steps for each row of ``y`` with one model; arrays of shape ``(rows, h)``.

    ``y`` is time-major, one series per column, right-aligned, with ``lengths`` valid values each
    (:func:`forecasting.models.kernels.pad_right_aligned`). Keys: ``mean`` and ``lo-<level>`` /
    ``hi-<level>``. For ``fitted-state`` models ``states`` holds one row per series (same order) and the
    stored parameters are applied to the fresh history without re-estimation. AutoETS and the simple
    models run as vectorised numpy kernels (no statsforecast import); the other families call
    statsforecast's own ``forward``/``forecast`` series by series. ``intervals`` (the bundle's
    :class:`~forecasting.bundle.format.IntervalSettings`; default: statsforecast's) chooses how the families
    without native intervals get theirs (:func:`calibrated_forecast`).
    """
    lv = sorted(levels)
    settings = intervals or IntervalSettings()
    if settings.method == "calibrated" and entry.state == "refit-at-edge" and entry.family in CONFORMAL_ONLY:
        return calibrated_forecast(entry, season_length, y, lengths, h, lv, settings.conformal_windows)
    if settings.method == "calibrated" and entry.family in RECALIBRATED_NATIVE and lv:
        return _recalibrated_native(
            entry, season_length, y, lengths, h, lv, states, settings.conformal_windows
        )
    if entry.state == "fitted-state":
        if states is None or states.height != y.shape[1]:
            raise BundleError("forecast_batch: fitted state rows do not match the histories")
        if entry.family == "AutoETS":
            return _ets_batch(y, lengths, states, h, lv)
        return _statsforecast_batch(entry, season_length, y, lengths, h, lv, states)
    fast = _kernel_forecast(entry, season_length, y, lengths, h, lv)
    if fast is not None:
        return fast
    return _statsforecast_batch(entry, season_length, y, lengths, h, lv, None)


def _ets_batch(
    y: FloatArray, lengths: IntArray, states: pl.DataFrame, h: int, levels: list[int]
) -> dict[str, FloatArray]:
    from forecasting.models import ets_kernel

    n = y.shape[1]
    out = {c: np.full((n, h), np.nan) for c in ["mean", *level_columns(levels)]}
    groups = states.with_row_index("_row").group_by("components", "m", maintain_order=True)
    for (components, m), group in groups:
        rows = group["_row"].to_numpy()
        par = group["par"].explode().to_numpy().astype(np.float64).reshape(len(rows), -1)
        n_params = group["n_params"].to_numpy().astype(np.int64)
        sub_len = lengths[rows]
        width = int(sub_len.max())
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # contiguous (see order_for_batch): a view
            sub = y[y.shape[0] - width :, int(rows[0]) : int(rows[-1]) + 1]
        else:
            sub = y[y.shape[0] - width :, rows]
        res = ets_kernel.ets_forward(sub, sub_len, str(components), int(str(m)), par, n_params, h, levels)
        for c, arr in res.items():
            out[c][rows] = arr
    return out


def order_for_batch(entry: ModelEntry, states: pl.DataFrame | None) -> np.ndarray[Any, Any] | None:
    """A series order that makes :func:`forecast_batch` cheaper (AutoETS: grouped by ETS form), or None."""
    if states is None or entry.family != "AutoETS" or states.height == 0:
        return None
    order: np.ndarray[Any, Any] = np.lexsort(
        (np.arange(states.height), states["m"].to_numpy(), states["components"].to_numpy().astype(str))
    )
    return order


def _kernel_forecast(
    entry: ModelEntry, season_length: int, y: FloatArray, lengths: IntArray, h: int, levels: list[int]
) -> dict[str, FloatArray] | None:
    """Vectorised forecasts of a refit-at-edge family, or None when it has no numpy kernel."""
    from forecasting.models import calibration, kernels

    params = entry.params
    family = entry.family
    if family not in _KERNEL_FAMILIES:
        return None  # e.g. MSTL, whose season_length is a list of seasons
    m = int(params.get("season_length", season_length))
    if family == "SeasonalNaive":
        return _seasonal_naive(y, lengths, h, levels, m)
    simple: dict[str, Any] = {
        "Naive": kernels.naive,
        "HistoricAverage": kernels.historic_average,
        "RandomWalkWithDrift": kernels.random_walk_with_drift,
    }
    if family in simple and not (family == "RandomWalkWithDrift" and int(lengths.min(initial=2)) < 2):
        result: dict[str, FloatArray] = simple[family](y, lengths, h, levels)
        return result
    conformal_point = _conformal_point(family, params, m)
    if conformal_point is not None:
        return calibration.conformal(conformal_point, y, lengths, h, levels, CONFORMAL_WINDOWS)
    return None


_KERNEL_FAMILIES = frozenset(
    {
        "SeasonalNaive",
        "Naive",
        "HistoricAverage",
        "RandomWalkWithDrift",
        "WindowAverage",
        "SeasonalWindowAverage",
        "TSB",
        "CrostonClassic",
    }
)


def _seasonal_naive(
    y: FloatArray, lengths: IntArray, h: int, levels: list[int], m: int
) -> dict[str, FloatArray]:
    """SeasonalNaive; a series shorter than one season has no last season to repeat and gets Naive."""
    from forecasting.models import kernels

    full = lengths >= m
    if full.all():
        return kernels.seasonal_naive(y, lengths, h, levels, m)
    out = kernels.naive(y, lengths, h, levels)
    if full.any():
        seasonal = kernels.seasonal_naive(y[:, full], lengths[full], h, levels, m)
        for c, arr in seasonal.items():
            out[c][full] = arr
    return out


def _conformal_point(family: str, params: Mapping[str, Any], season_length: int) -> Any:
    """The vectorised point forecaster of a conformal-interval family, or None when there is none."""
    from forecasting.models import kernels

    if family == "WindowAverage":
        window = int(params["window_size"])
        return lambda y, lengths, h: kernels.window_mean(y, lengths, h, window)
    if family == "SeasonalWindowAverage":
        window = int(params["window_size"])
        return lambda y, lengths, h: kernels.seasonal_window_average(y, lengths, h, season_length, window)[
            "mean"
        ]
    if family == "TSB":
        if params.get("alpha_d") is None or params.get("alpha_p") is None:
            return _tsb_optimized_point
        alpha_d, alpha_p = float(params["alpha_d"]), float(params["alpha_p"])
        return lambda y, lengths, h: kernels.tsb_mean(y, lengths, h, alpha_d, alpha_p)
    if family == "CrostonClassic":
        return kernels.croston_classic_mean
    return None


# What statsforecast raises on a (cut) history it cannot fit or run on: "tiny datasets" (Theta, ETS), an
# IndexError from ETS forecasting a two-point fit, ...
_UNFITTABLE = (
    ValueError,
    ZeroDivisionError,
    FloatingPointError,
    NotImplementedError,
    IndexError,
    np.linalg.LinAlgError,
)


def _tsb_optimized_point(y: FloatArray, lengths: IntArray, h: int) -> FloatArray:
    """TSB with ``alpha_d``/``alpha_p`` fitted per series (:func:`forecasting.models.kernels.tsb_fit`)."""
    from forecasting.models import kernels

    alpha_d, alpha_p = kernels.tsb_fit(y, lengths)
    return kernels.tsb_mean(y, lengths, h, alpha_d, alpha_p)


def point_forecaster(
    entry: ModelEntry, season_length: int
) -> Callable[[FloatArray, IntArray, int], FloatArray]:
    """``point(y, lengths, h) -> (n, h)`` point forecasts of a refit-at-edge family over a matrix of series.

    A numpy kernel where there is one; otherwise statsforecast's ``forecast`` series by series (NaN for a
    history it cannot fit, e.g. a single value).
    """
    seasons = entry.params.get("season_length", season_length)  # a list for MSTL
    m = int(max(seasons) if isinstance(seasons, list) else seasons)
    kernel = _conformal_point(entry.family, entry.params, m)
    if kernel is not None:
        fast: Callable[[FloatArray, IntArray, int], FloatArray] = kernel
        return fast
    params = {k: v for k, v in entry.params.items() if k != "prediction_intervals"}

    def point(y: FloatArray, lengths: IntArray, h: int) -> FloatArray:
        width, n = y.shape
        out = np.full((n, h), np.nan)
        model = make_model(entry.family, season_length, params)
        for i in range(n):
            if lengths[i] < 2:
                continue
            try:
                res = model.forecast(y=y[width - lengths[i] :, i], h=h)
            except _UNFITTABLE:
                continue
            out[i] = res["mean"]
        return out

    return point


def calibrated_forecast(
    entry: ModelEntry,
    season_length: int,
    y: FloatArray,
    lengths: IntArray,
    h: int,
    levels: Sequence[int],
    conformal_windows: int,
) -> dict[str, FloatArray]:
    """Forecasts of a family without native intervals, with calibrated intervals.

    Intermittent families on unit sales (histories of whole numbers >= 0) get negative binomial
    quantiles around the forecast rate (:func:`forecasting.models.calibration.count_intervals`), which
    include 0 when zero days are likely; every other series gets conformal intervals from up to
    ``conformal_windows`` windows (:func:`forecasting.models.calibration.calibrated_conformal`). The edge
    and the training's backtests both call this, so the two cannot disagree for the same history.
    """
    from forecasting.models import calibration

    lv = sorted(levels)
    point = point_forecaster(entry, season_length)
    counts = calibration.count_series(y, lengths) if entry.family in INTERMITTENT_FAMILIES and lv else None
    if counts is None or not counts.any():
        return calibration.calibrated_conformal(point, y, lengths, h, lv, conformal_windows)
    out = calibration.count_intervals(point(y, lengths, h), y, lengths, lv)
    if not counts.all():
        rest = np.flatnonzero(~counts)
        width = int(lengths[rest].max())
        other = calibration.calibrated_conformal(
            point, y[y.shape[0] - width :, rest], lengths[rest], h, lv, conformal_windows
        )
        for c, arr in other.items():
            out[c][rest] = arr
    return out


def _recalibrated_native(
    entry: ModelEntry,
    season_length: int,
    y: FloatArray,
    lengths: IntArray,
    h: int,
    levels: list[int],
    states: pl.DataFrame | None,
    conformal_windows: int,
) -> dict[str, FloatArray]:
    """Native forecasts with conformal bounds (the rule of
    :func:`forecasting.models.calibration.calibrated_conformal`).

    A fitted-state model is run forward with its stored state over each cut history, as on the full one.
    """
    from forecasting.models import calibration

    out = forecast_batch(entry, season_length, y, lengths, h, levels, states)

    def select(cols: IntArray) -> Callable[[FloatArray, IntArray, int], FloatArray]:
        sub = states[cols] if states is not None else None

        def point(yy: FloatArray, ll: IntArray, hh: int) -> FloatArray:
            if sub is None:
                return forecast_batch(entry, season_length, yy, ll, hh, [])["mean"]
            return _fitted_mean(entry, season_length, yy, ll, hh, sub)

        return point

    scores = calibration.conformal_scores(None, y, lengths, h, conformal_windows, select)
    quantiles = calibration.conformal_quantiles(scores, levels, calibration.CONFORMAL_MIN_SCORES)
    mean = out["mean"]
    for lv in levels:
        q = quantiles[lv]
        ok = np.isfinite(q) & np.isfinite(mean)
        out[f"lo-{lv}"] = np.where(ok, mean - q, out[f"lo-{lv}"])
        out[f"hi-{lv}"] = np.where(ok, mean + q, out[f"hi-{lv}"])
    return out


def _fitted_mean(
    entry: ModelEntry, season_length: int, y: FloatArray, lengths: IntArray, h: int, states: pl.DataFrame
) -> FloatArray:
    """Point forecasts of a fitted-state model over (cut) histories; NaN where statsforecast cannot run."""
    if entry.family == "AutoETS":
        return _ets_batch(y, lengths, states, h, [])["mean"]
    width, n = y.shape
    out = np.full((n, h), np.nan)
    codec = FITTED_STATE_CODECS[entry.family]
    model = make_model(entry.family, season_length, entry.params)
    for i, row in enumerate(states.iter_rows(named=True)):
        if lengths[i] < 2:
            continue
        model.model_ = codec.decode(row)
        try:
            out[i] = model.forward(y=y[width - lengths[i] :, i], h=h)["mean"]
        except _UNFITTABLE:
            continue
    return out


def ensemble_forecast(
    members: Sequence[tuple[ModelEntry, pl.DataFrame | None]],
    weights: Sequence[float],
    season_length: int,
    y: FloatArray,
    lengths: IntArray,
    h: int,
    levels: Sequence[int],
    conformal_windows: int,
) -> dict[str, FloatArray]:
    """The weighted mean of local models' forecasts, with intervals calibrated on that mean's own errors.

    The mean of the members' bounds is not an interval for the mean forecast (on m5_mini the mean of
    SES, IMAPA and TSB bounds covered 64 % for 80 %). Count series with an intermittent member get
    negative binomial quantiles around the mean forecast; other series conformal bounds from the
    errors of the mean forecast on up to ``conformal_windows`` cut histories, each member refitted (or
    run forward with its stored state) on each cut; ``members`` pairs each entry with its state rows.
    """
    from forecasting.models import calibration

    lv = sorted(levels)

    def select(cols: IntArray | None) -> Callable[[FloatArray, IntArray, int], FloatArray]:
        def point(yy: FloatArray, ll: IntArray, hh: int) -> FloatArray:
            total = np.zeros((yy.shape[1], hh))
            for (entry, states), weight in zip(members, weights, strict=True):
                sub = states if states is None or cols is None else states[cols]
                if sub is not None:
                    part = _fitted_mean(entry, season_length, yy, ll, hh, sub)
                elif entry.family in _KERNEL_FAMILIES:
                    part = forecast_batch(entry, season_length, yy, ll, hh, [])["mean"]
                else:
                    part = point_forecaster(entry, season_length)(yy, ll, hh)
                total += float(weight) * part
            return total

        return point

    mean = select(None)(y, lengths, h)
    out: dict[str, FloatArray] = {"mean": mean}
    if not lv:
        return out
    intermittent = any(entry.family in INTERMITTENT_FAMILIES for entry, _ in members)
    counts = calibration.count_series(y, lengths) if intermittent else np.zeros(y.shape[1], dtype=bool)
    scores = calibration.conformal_scores(None, y, lengths, h, conformal_windows, select)
    quantiles = calibration.conformal_quantiles(scores, lv, calibration.CONFORMAL_MIN_SCORES)
    for level in lv:
        out[f"lo-{level}"] = mean - quantiles[level]
        out[f"hi-{level}"] = mean + quantiles[level]
    if counts.any():
        rows = np.flatnonzero(counts)
        width = int(lengths[rows].max())
        count = calibration.count_intervals(mean[rows], y[y.shape[0] - width :, rows], lengths[rows], lv)
        for c in count:
            if c != "mean":
                out[c][rows] = count[c]
    return out


def fit_states(entry: ModelEntry, season_length: int, y: FloatArray, lengths: IntArray) -> pl.DataFrame:
    """The fitted state of a fitted-state family on each history (a column of ``y``), as Arrow columns.

    Training's backtests use it to score the model of each cutoff through the edge's own code.
    """
    codec = FITTED_STATE_CODECS[entry.family]
    width = y.shape[0]
    rows = []
    for i in range(y.shape[1]):
        model = make_model(entry.family, season_length, entry.params).fit(y[width - lengths[i] :, i])
        rows.append(codec.encode(model.model_))
    return pl.DataFrame({c: [r[c] for r in rows] for c in codec.schema}, schema=codec.schema)


def _statsforecast_batch(
    entry: ModelEntry,
    season_length: int,
    y: FloatArray,
    lengths: IntArray,
    h: int,
    levels: list[int],
    states: pl.DataFrame | None,
) -> dict[str, FloatArray]:
    width, n = y.shape
    cols = ["mean", *level_columns(levels)]
    out = {c: np.full((n, h), np.nan) for c in cols}
    level_arg = levels or None
    if states is not None:
        codec = FITTED_STATE_CODECS[entry.family]
        model = make_model(entry.family, season_length, entry.params)
        for i, row in enumerate(states.iter_rows(named=True)):
            model.model_ = codec.decode(row)
            res = model.forward(y=y[width - lengths[i] :, i], h=h, level=level_arg)
            for c in cols:
                out[c][i] = res.get(c, np.nan)
        return out
    for i in range(n):
        res = _refit_forecast(entry, season_length, y[width - lengths[i] :, i], h, level_arg)
        for c in cols:
            out[c][i] = res.get(c, np.nan)
    return out


def _refit_forecast(
    entry: ModelEntry, season_length: int, y: FloatArray, h: int, levels: list[int] | None
) -> dict[str, FloatArray]:
    """Re-estimate a cheap model on ``y`` and forecast; conformal intervals (2 windows of ``h``) for
    families without native ones, none when the history is too short to calibrate them."""
    params = dict(entry.params)
    if levels and not supports_native_intervals(entry.family):
        from statsforecast.utils import ConformalIntervals

        if len(y) > CONFORMAL_WINDOWS * h:
            params["prediction_intervals"] = ConformalIntervals(h=h, n_windows=CONFORMAL_WINDOWS)
        else:
            levels = None
    model = make_model(entry.family, season_length, params)
    res: dict[str, FloatArray] = model.forecast(y=y, h=h, level=levels)
    return res
