"""Fitted statistical models as Arrow/Parquet columns (no pickle): fitting, export and loading.

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
:func:`load_fitted` and :func:`forecasting.models.fitted_forecast.forecast_batch`.
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

from forecasting.bundle.format import Manifest, ModelEntry, ModelState, read_payload
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


def supports_native_intervals(family: str) -> bool:
    """Whether the family's own prediction intervals are used (not conformal-only)."""
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
