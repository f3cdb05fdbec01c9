"""Fitted statistical models as Arrow/Parquet columns (no pickle), and forecasting from them at the edge.

Every statistical model is a statsforecast model class, named by its class name (``AutoETS``,
``SeasonalNaive``, ``CrostonClassic``, ...) plus constructor parameters. Each model *declares* how the
edge applies it (:func:`model_state`):

- ``fitted-state``: the central side estimates parameters once; they are stored per series as Parquet
  columns (``fitted/<label>.parquet``) and the edge runs statsforecast's own ``forward`` on the store's
  fresh history with those parameters fixed (no re-estimation). AutoETS and the Theta family.
- ``refit-at-edge``: models that are cheap to estimate (naive, window averages, intermittent demand)
  are re-estimated on the store's history; only the model choice and parameters travel.

Training calls :func:`fit_models` (fit per-series choices and get payload tables) or, when it already
holds fitted statsforecast objects, :func:`export_fitted`; it then passes the payloads and
``ModelEntry`` values to :func:`forecasting.bundle.format.write_bundle`. The scoring engine calls
:func:`load_fitted` and :func:`forecast_batch`.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from forecasting.bundle.format import IntervalSettings, Manifest, ModelEntry, ModelState, read_payload
from forecasting.common.errors import BundleError, DataError
from forecasting.models.families import ENSEMBLE_FAMILY, ensemble_members

SERIES_PAYLOAD = "series.parquet"
SERIES_SCHEMA = {"store_id": pl.Utf8, "item_id": pl.Utf8, "category": pl.Utf8, "model": pl.Utf8}

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


def fitted_payload_path(label: str) -> str:
    """Payload path of the fitted parameters of model ``label``."""
    return f"fitted/{label}.parquet"


# ---------------------------------------------------------------------------------------------------
# Codecs: which parts of statsforecast's ``model_`` dict ``forward`` needs, as plain Arrow columns.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Codec:
    """Turns a fitted ``model_`` dict into a row of plain values and back."""

    schema: dict[str, pl.DataType]
    encode: Callable[[Mapping[str, Any]], dict[str, Any]]
    decode: Callable[[Mapping[str, Any]], dict[str, Any]]


def _ets_encode(model: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "m": int(model["m"]),
        "components": str(model["components"]),
        "par": [float(v) for v in np.asarray(model["par"], dtype=np.float64)],
        "n_params": int(model["n_params"]),
    }


def _ets_decode(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "m": int(row["m"]),
        "components": str(row["components"]),
        "par": np.asarray(row["par"], dtype=np.float64),
        "n_params": int(row["n_params"]),
        "fit": None,
    }


def _theta_encode(model: Mapping[str, Any]) -> dict[str, Any]:
    par = model["par"]
    return {
        "m": int(model["m"]),
        "modeltype": str(model["modeltype"]),
        "initial_smoothed": float(par["initial_smoothed"]),
        "alpha": float(par["alpha"]),
        "theta": float(par["theta"]),
    }


def _theta_decode(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "m": int(row["m"]),
        "modeltype": str(row["modeltype"]),
        # numpy scalars, not Python floats: statsforecast mixes them with float32 sample arrays, and
        # NEP 50 promotion differs between the two (the fitted model holds np.float64).
        "par": {
            "initial_smoothed": np.float64(row["initial_smoothed"]),
            "alpha": np.float64(row["alpha"]),
            "theta": np.float64(row["theta"]),
        },
    }


_ETS_CODEC = _Codec(
    schema={"m": pl.Int32(), "components": pl.Utf8(), "par": pl.List(pl.Float64()), "n_params": pl.Int32()},
    encode=_ets_encode,
    decode=_ets_decode,
)
_THETA_CODEC = _Codec(
    schema={
        "m": pl.Int32(),
        "modeltype": pl.Utf8(),
        "initial_smoothed": pl.Float64(),
        "alpha": pl.Float64(),
        "theta": pl.Float64(),
    },
    encode=_theta_encode,
    decode=_theta_decode,
)

# Model families whose fitted state travels in the bundle; every other statsforecast model refits.
FITTED_STATE_CODECS: dict[str, _Codec] = {
    "AutoETS": _ETS_CODEC,
    "AutoTheta": _THETA_CODEC,
    "Theta": _THETA_CODEC,
    "OptimizedTheta": _THETA_CODEC,
    "DynamicTheta": _THETA_CODEC,
    "DynamicOptimizedTheta": _THETA_CODEC,
}


def model_state(family: str) -> ModelState:
    """How the edge applies a model family: ``fitted-state`` or ``refit-at-edge``."""
    return "fitted-state" if family in FITTED_STATE_CODECS else "refit-at-edge"


def make_model(family: str, season_length: int, params: Mapping[str, Any] | None = None) -> Any:
    """A statsforecast model object of class ``family`` (``season_length`` passed when it takes one)."""
    from statsforecast import models as sf_models

    from forecasting.models.families import M4_METHODS, m4_model_class

    if family in M4_METHODS:  # the M4 organisers' benchmarks: deseasonalise, forecast, reseasonalise
        m4_kwargs = dict(params or {})
        m4_kwargs.setdefault("season_length", season_length)
        return m4_model_class()(M4_METHODS[family], alias=family, **m4_kwargs)
    cls = getattr(sf_models, family, None)
    if cls is None or not isinstance(cls, type):
        raise BundleError(f"unknown model family {family!r} (expected a statsforecast model class name)")
    kwargs = dict(params or {})
    if "season_length" in inspect.signature(cls).parameters:
        kwargs.setdefault("season_length", season_length)
    return cls(**kwargs)


# Families whose intervals come only from conformal calibration (statsforecast raises without it).
CONFORMAL_ONLY = frozenset(
    {
        "WindowAverage",
        "SeasonalWindowAverage",
        "SimpleExponentialSmoothing",
        "SimpleExponentialSmoothingOptimized",
        "SeasonalExponentialSmoothing",
        "SeasonalExponentialSmoothingOptimized",
        "CrostonClassic",
        "CrostonOptimized",
        "CrostonSBA",
        "ADIDA",
        "IMAPA",
        "TSB",
        "Naive2",
        "SESD",
        "ThetaM4",
    }
)
CONFORMAL_WINDOWS = 2
# Intermittent-demand families (``CandidateSpec.intermittent``): with calibrated intervals, their bounds on
# unit sales are count quantiles (:func:`forecasting.models.calibration.count_intervals`) that can include
# zero.
INTERMITTENT_FAMILIES = frozenset(
    {"CrostonClassic", "CrostonOptimized", "CrostonSBA", "ADIDA", "IMAPA", "TSB"}
)
# Families with native intervals whose point forecasts on cut histories are cheap (numpy kernels, or the
# stored state run forward): with calibrated intervals their bounds are conformal too (native ones are
# kept for series too short for any window). Native intervals of Theta cover 89 % for a nominal 95 % on
# M4 Weekly, those of Naive 95 % for a nominal 80 % on Walmart.
RECALIBRATED_NATIVE = frozenset(
    {"Naive", "SeasonalNaive", "HistoricAverage", "RandomWalkWithDrift", *FITTED_STATE_CODECS}
)


def _supports_native_intervals(family: str) -> bool:
    return family not in CONFORMAL_ONLY


# ---------------------------------------------------------------------------------------------------
# Export (central side)
# ---------------------------------------------------------------------------------------------------


@dataclass
class FittedModels:
    """What :func:`fit_models` returns: payload bytes and model entries ready for ``write_bundle``."""

    payloads: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    series: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SERIES_SCHEMA))


def _parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    return buf.getvalue()


def export_fitted(
    family: str, keys: Sequence[tuple[str, str]], fitted_models: Sequence[Mapping[str, Any]]
) -> bytes:
    """Parquet bytes of the fitted state of ``family`` for the series ``keys`` (``(store_id, item_id)``).

    ``fitted_models`` are statsforecast ``model_`` dicts (``AutoETS().fit(y).model_``), in ``keys`` order.
    """
    codec = FITTED_STATE_CODECS.get(family)
    if codec is None:
        raise BundleError(f"model family {family!r} has no fitted state (it refits at the edge)")
    if len(keys) != len(fitted_models):
        raise BundleError("export_fitted: keys and fitted models differ in length")
    rows = [codec.encode(model) for model in fitted_models]
    columns: dict[str, Any] = {
        "store_id": [k[0] for k in keys],
        "item_id": [k[1] for k in keys],
    }
    for name in codec.schema:
        columns[name] = [row[name] for row in rows]
    schema = {"store_id": pl.Utf8(), "item_id": pl.Utf8(), **codec.schema}
    return _parquet_bytes(pl.DataFrame(columns, schema=schema))


def fit_models(
    frame: pl.DataFrame,
    assignments: pl.DataFrame | Mapping[str, str] | str,
    *,
    season_length: int,
    freq: str = "D",
    model_params: Mapping[str, Mapping[str, Any]] | None = None,
    families: Mapping[str, str] | None = None,
    n_jobs: int = 1,
    global_model: Any = None,
    levels: Sequence[int] = (80, 95),
) -> FittedModels:
    """Fit each series' assigned model on ``frame`` (canonical frame) and return bundle payloads.

    ``assignments`` is one model label for every series, a mapping ``category -> label``, or a frame
    ``store_id, item_id, model``. A label is a statsforecast class name (``AutoETS``) unless
    ``families`` maps it to one (``{"ets_damped": "AutoETS"}``); ``model_params[label]`` are its
    constructor arguments. Only ``fitted-state`` models are estimated here (with statsforecast,
    ``n_jobs`` processes); ``refit-at-edge`` models just record the choice. Series assigned to
    ``LightGBM`` use ``global_model`` (a :class:`forecasting.models.gbm.GlobalModel` trained on ``frame``),
    exported to ONNX with intervals calibrated for ``levels``.
    """
    series = _series_table(frame, assignments)
    out = FittedModels(series=series)
    params_by_label = dict(model_params or {})
    family_of = dict(families or {})
    users = member_series(series)
    for label in sorted(set(series["model"].unique().to_list()) - set(users)):
        members = ensemble_members(label)
        out.models[label] = ModelEntry(
            state="ensemble",
            family=ENSEMBLE_FAMILY,
            params={"members": members, "weights": [1.0 / len(members)] * len(members)},
        )
    for label, chosen in sorted(users.items()):
        family = family_of.get(label, label)
        params = dict(params_by_label.get(label, {}))
        if family == "LightGBM":
            if global_model is None:
                raise DataError("series are assigned to LightGBM but no global_model was given")
            from forecasting.models.onnx_model import export_global

            global_payloads, entry = export_global(global_model, frame, levels)
            out.payloads.update(global_payloads)
            out.models[label] = entry
            continue
        state = model_state(family)
        make_model(family, season_length, params)  # fail early on an unknown family or bad params
        if state == "refit-at-edge":
            out.models[label] = ModelEntry(state=state, family=family, params=params)
            continue
        keys, fitted = _fit_statsforecast(frame, chosen, family, params, season_length, freq, n_jobs)
        path = fitted_payload_path(label)
        out.payloads[path] = export_fitted(family, keys, fitted)
        out.models[label] = ModelEntry(state=state, family=family, params=params, payload=path)
    out.payloads[SERIES_PAYLOAD] = _parquet_bytes(series)
    return out


def member_series(series: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Each single model label and the series (``store_id, item_id``) it forecasts, alone or in ensembles."""
    exploded = series.select(
        "store_id", "item_id", pl.col("model").map_elements(ensemble_members, return_dtype=pl.List(pl.Utf8))
    ).explode("model")
    return {
        str(label): group.select("store_id", "item_id").unique(maintain_order=True)
        for (label,), group in exploded.group_by("model", maintain_order=True)
    }


def _series_table(frame: pl.DataFrame, assignments: pl.DataFrame | Mapping[str, str] | str) -> pl.DataFrame:
    series = frame.select("store_id", "item_id", "category").unique(["store_id", "item_id"], keep="first")
    if isinstance(assignments, str):
        series = series.with_columns(model=pl.lit(assignments))
    elif isinstance(assignments, pl.DataFrame):
        series = series.join(assignments.select("store_id", "item_id", "model"), on=["store_id", "item_id"])
    else:
        series = series.with_columns(model=pl.col("category").replace_strict(dict(assignments), default=None))
    missing = series.filter(pl.col("model").is_null())
    if missing.height:
        raise DataError(f"no model assigned to {missing.height} series, e.g. {missing.row(0)[:2]}")
    return series.sort("store_id", "item_id").cast(SERIES_SCHEMA)  # type: ignore[arg-type]


def _fit_statsforecast(
    frame: pl.DataFrame,
    chosen: pl.DataFrame,
    family: str,
    params: Mapping[str, Any],
    season_length: int,
    freq: str,
    n_jobs: int,
) -> tuple[list[tuple[str, str]], list[Mapping[str, Any]]]:
    from statsforecast import StatsForecast

    df = (
        frame.join(chosen, on=["store_id", "item_id"])
        .select(
            unique_id=pl.concat_str("store_id", pl.lit("/"), "item_id"),
            ds=pl.col("ds"),
            y=pl.col("y").cast(pl.Float64),
        )
        .sort("unique_id", "ds")
    )
    model = make_model(family, season_length, params)
    sf = StatsForecast(models=[model], freq=_sf_freq(freq), n_jobs=n_jobs)
    sf.fit(df)
    uids = [str(u) for u in sf.uids]
    keys = [(u.split("/", 1)[0], u.split("/", 1)[1]) for u in uids]
    return keys, [sf.fitted_[i, 0].model_ for i in range(len(uids))]


def _sf_freq(freq: str) -> str:
    return {"D": "1d", "W": "1w", "H": "1h"}.get(freq, freq)


# ---------------------------------------------------------------------------------------------------
# Load and forecast (edge side)
# ---------------------------------------------------------------------------------------------------


@dataclass
class FittedSet:
    """A bundle's statistical models, loaded: the per-series choice and each fitted-state table."""

    manifest: Manifest
    series: pl.DataFrame
    states: dict[str, pl.DataFrame]


def load_fitted(bundle_dir: Path, manifest: Manifest) -> FittedSet:
    """Read ``series.parquet`` and every ``fitted/<label>.parquet`` of a (verified) bundle."""
    series = pl.read_parquet(io.BytesIO(read_payload(bundle_dir, manifest, SERIES_PAYLOAD)))
    states: dict[str, pl.DataFrame] = {}
    for label, entry in manifest.models.items():
        if entry.state == "fitted-state":
            if entry.family not in FITTED_STATE_CODECS:
                raise BundleError(f"model {label!r}: family {entry.family!r} has no fitted-state reader")
            states[label] = pl.read_parquet(io.BytesIO(read_payload(bundle_dir, manifest, entry.payload)))
    return FittedSet(manifest=manifest, series=series, states=states)


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
    m = int(entry.params.get("season_length", season_length))
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
    if levels and not _supports_native_intervals(entry.family):
        from statsforecast.utils import ConformalIntervals

        if len(y) > CONFORMAL_WINDOWS * h:
            params["prediction_intervals"] = ConformalIntervals(h=h, n_windows=CONFORMAL_WINDOWS)
        else:
            levels = None
    model = make_model(entry.family, season_length, params)
    res: dict[str, FloatArray] = model.forecast(y=y, h=h, level=levels)
    return res
