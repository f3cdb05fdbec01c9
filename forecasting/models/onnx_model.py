"""The global gradient-boosting model as ONNX: export (central side) and scoring (edge side).

Export: the LightGBM booster of :class:`forecasting.models.gbm.GlobalModel` becomes an ONNX graph with
onnxmltools (``TreeEnsembleRegressor`` of the ``ai.onnx.ml`` domain). onnxmltools reads the objective
from the booster's parameters and refuses LightGBM's aliases (``l1``, ``mae``, ...) although the trees are
the same; the booster is therefore rebuilt from its own model text first, where LightGBM writes the
canonical objective name (``regression_l1``). Nothing else changes: the trees are identical.

Scoring: onnxruntime on the CPU provider with ``threads`` intra-op threads, no custom-op library
registered, and every node checked to belong to the standard domains (``ai.onnx``, ``ai.onnx.ml``)
before a session is created, so a bundle cannot smuggle in custom operators. Features come from
:func:`forecasting.models.gbm_features.feature_block`, the very function training uses (through
``make_features``), read at the last date of each series with known sales from its last ``lookback``
periods; rows after that date (``y`` missing) feed the dynamic drivers of the forecast dates (see
:mod:`forecasting.models.gbm_features`).
Missing feature values are NaN, which the exported trees route as LightGBM does.

Intervals: the booster predicts a point per horizon. The exporter calibrates split-conformal intervals on
the last ``h`` periods of the training history (the model forecasts them from the origin ``h`` periods
before the end): per horizon and level, the quantile of absolute errors divided by the series' scale. They
travel in the model entry's parameters and are applied as ``forecast -/+ q[level][h] * scale``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import structlog

from forecasting.bundle.format import ModelEntry
from forecasting.common.errors import BundleError

if TYPE_CHECKING:
    from forecasting.models.gbm import GlobalModel

GLOBAL_FAMILY = "LightGBM"
ONNX_PAYLOAD = "models/LightGBM.onnx"
TARGET_OPSET = 15
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
INPUT_NAME = "features"

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def canonical_booster(booster: Any) -> Any:
    """The same trees with LightGBM's canonical objective name in the parameters (see module doc)."""
    import lightgbm as lgb

    return lgb.Booster(model_str=booster.model_to_string())


def export_lightgbm(booster: Any, n_features: int) -> bytes:
    """ONNX bytes of a LightGBM booster taking a float32 matrix ``features`` of ``n_features`` columns."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(
        canonical_booster(booster),
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
        zipmap=False,
    )
    check_domains(model)
    data: bytes = model.SerializeToString()
    return data


def check_domains(model: Any) -> None:
    """Refuse graphs with operators outside the standard ONNX domains (custom ops)."""
    domains = {node.domain for node in model.graph.node} | {op.domain for op in model.opset_import}
    extra = domains - ALLOWED_DOMAINS
    if extra:
        raise BundleError(f"ONNX model uses operators of non-standard domains {sorted(extra)} (refused)")


@dataclass
class OnnxScorer:
    """An onnxruntime session over a validated ONNX model."""

    session: Any
    input_name: str

    @classmethod
    def load(cls, model_bytes: bytes, threads: int = 2) -> OnnxScorer:
        """Validate ``model_bytes`` and open a CPU session with ``threads`` intra-op threads."""
        import onnx
        import onnxruntime as ort

        try:
            model = onnx.load_model_from_string(model_bytes)
        except Exception as exc:  # onnx raises DecodeError subclasses of several kinds
            raise BundleError(f"ONNX payload is not a valid model ({exc})") from exc
        check_domains(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # Idle intra-op threads sleep instead of spin-waiting: at a store the cores are shared with the
        # agent and the inventory API, and spinning threads collapse on busy cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        return cls(session=session, input_name=session.get_inputs()[0].name)

    def predict(self, x: np.ndarray[Any, Any]) -> FloatArray:
        """Predictions for a float32 feature matrix, as float64."""
        if len(x) == 0:
            return np.zeros(0)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


def _calibrate(model: GlobalModel, frame: pl.DataFrame, levels: Sequence[int]) -> dict[str, list[float]]:
    """Per level, per horizon quantile of |error| / scale on the last ``h`` periods of each series."""
    spec = model.spec
    h = spec.horizon
    keys = ["store_id", "item_id"]
    n = frame.group_by(keys).agg(pl.len().alias("n"))
    origins = n.filter(pl.col("n") > h + spec.season_length).select(*keys, (pl.col("n") - 1 - h).alias("t"))
    out: dict[str, list[float]] = {str(lv): [0.0] * h for lv in levels}
    if origins.height == 0:
        return out
    pred = model.predict(frame, origins=origins)
    from forecasting.models.gbm_features import make_features

    scale = make_features(frame, spec, origins=origins).select(*keys, "ds", "scale")
    actual = frame.select(*keys, "ds", "y")
    joined = pred.join(actual, on=[*keys, "ds"]).join(scale, on=[*keys, "ds"])
    err = joined.with_columns(score=((pl.col("y") - pl.col("forecast")).abs() / pl.col("scale")))
    for lv in levels:
        q = err.group_by("horizon").agg(pl.col("score").quantile(lv / 100, "higher")).sort("horizon")
        values = dict(zip(q["horizon"].to_list(), q["score"].to_list(), strict=True))
        out[str(lv)] = [float(values.get(k, 0.0) or 0.0) for k in range(1, h + 1)]
    return out


def export_global(
    model: GlobalModel, frame: pl.DataFrame, levels: Sequence[int]
) -> tuple[dict[str, bytes], ModelEntry]:
    """Payloads and manifest entry of the global model: the ONNX file plus feature spec and intervals.

    Training calls this with the fitted :class:`~forecasting.models.gbm.GlobalModel` and the frame it was
    trained on; assign series to the label ``LightGBM`` in ``series.parquet`` to use it.
    """
    from forecasting.models.gbm import spec_digest

    onnx_bytes = export_lightgbm(model.booster, len(model.spec.feature_names))
    params = {
        "features": model.spec.to_params(),
        "spec_digest": spec_digest(model.spec),
        "interval_scaled_quantiles": _calibrate(model, frame, levels),
    }
    entry = ModelEntry(state="global", family=GLOBAL_FAMILY, params=params, payload=ONNX_PAYLOAD)
    return {ONNX_PAYLOAD: onnx_bytes}, entry


def forecast_global(
    entry: ModelEntry,
    model_bytes: bytes,
    history: pl.DataFrame,
    h: int,
    levels: Sequence[int],
    threads: int = 2,
) -> pl.DataFrame:
    """Forecast every series of ``history`` with the ONNX global model.

    Returns ``store_id, item_id, horizon, forecast, lo-<lv>, hi-<lv>`` sorted by series and horizon;
    ``h`` may not exceed the horizon the model was trained for.
    """
    from forecasting.models.gbm_features import FeatureSpec, feature_block, index_series, last_observed

    started = time.perf_counter()
    spec = FeatureSpec.from_params(entry.params["features"])
    if h > spec.horizon:
        raise BundleError(f"global model forecasts {spec.horizon} steps; {h} asked")
    index = index_series(history)
    lengths = index.lengths
    series = np.flatnonzero(lengths > 0).astype(np.int64)
    block = feature_block(index, spec, series, last_observed(index)[series], h)
    scorer = OnnxScorer.load(model_bytes, threads=threads)
    scale = block.scale
    mean = scorer.predict(block.x) * scale
    horizon = block.horizon
    keys = index.keys().gather(pl.Series(np.repeat(series, h)))
    cols: dict[str, Any] = {
        "store_id": keys.get_column("store_id"),
        "item_id": keys.get_column("item_id"),
        "horizon": pl.Series(horizon, dtype=pl.Int64),
        "forecast": mean,
    }
    quantiles = entry.params.get("interval_scaled_quantiles", {})
    for lv in sorted(levels):
        q = np.asarray(quantiles.get(str(lv), [np.nan] * spec.horizon), dtype=np.float64)
        width = q[horizon - 1] * scale
        cols[f"lo-{lv}"] = mean - width
        cols[f"hi-{lv}"] = mean + width
    result = pl.DataFrame(cols)  # series-major, horizon ascending: sorted by series and horizon
    log = structlog.get_logger().bind(logger=__name__)
    log.debug("onnx_scored", rows=result.height, duration_seconds=round(time.perf_counter() - started, 3))
    return result
