"""The global LightGBM model exported to ONNX and scored with onnxruntime (no custom ops)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pytest

from forecasting.bundle.format import Manifest, utcnow, write_bundle
from forecasting.bundle.scoring import score
from forecasting.common.config import TrainSection
from forecasting.common.errors import BundleError
from forecasting.data.synthetic import generate
from forecasting.models.fitted import SERIES_PAYLOAD
from forecasting.models.gbm import GlobalModel
from forecasting.models.gbm_features import index_series, lookback, make_features, make_spec, training_origins
from forecasting.models.onnx_model import (
    ONNX_PAYLOAD,
    OnnxScorer,
    export_global,
    export_lightgbm,
    forecast_global,
)
from tests.forecasting._bundles import key_pair

H = 14
REL = 1e-4
# float32 split thresholds in ONNX vs float64 in LightGBM: a feature value lying between the two sends a
# row down another branch. Such rows must stay rare.
MAX_OUTLIER_SHARE = 0.01


def _rel(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    rel: np.ndarray[Any, Any] = np.abs(a - b) / np.maximum(np.abs(b), 1e-3)
    return rel


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    """Two synthetic stores of 25 items, 300 days."""
    return generate(stores=2, items=25, days=300, seed=3)


@pytest.fixture(scope="module")
def model(frame: pl.DataFrame) -> GlobalModel:
    """A small global model trained with the L1 objective under its alias ``l1``."""
    cfg = msgspec.structs.replace(TrainSection(), horizon=H)
    spec = make_spec(frame, cfg, "D", H)
    import lightgbm as lgb

    # Trained like forecasting.models.gbm.fit, but under the objective alias onnxmltools used to refuse.
    rows = make_features(frame, spec, origins=training_origins(frame, spec), with_target=True)
    x = rows.select(spec.feature_names).to_numpy().astype(np.float32)
    data = lgb.Dataset(x, label=rows["y_scaled"].to_numpy(), weight=rows["weight"].to_numpy())
    params = {"objective": "l1", "verbosity": -1, "num_leaves": 15, "seed": 0, "num_threads": 1}
    booster = lgb.train(params, data, 60)
    assert booster.params["objective"] == "l1"
    return GlobalModel(booster=booster, spec=spec)


def test_export_accepts_l1_alias_and_uses_standard_domains(model: GlobalModel) -> None:
    """A booster trained with objective 'l1' exports; the graph only uses ai.onnx / ai.onnx.ml operators."""
    import onnx

    data = export_lightgbm(model.booster, len(model.spec.feature_names))
    graph = onnx.load_model_from_string(data)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx.ml"}


def test_parity_with_native_booster(model: GlobalModel, frame: pl.DataFrame) -> None:
    """onnxruntime matches LightGBM within 1e-4 relative on all but a bounded share of rows."""
    feats = make_features(frame, model.spec, origins=None)
    x = feats.select(model.spec.feature_names).to_numpy().astype(np.float32)
    native = model.booster.predict(x)
    scorer = OnnxScorer.load(export_lightgbm(model.booster, x.shape[1]), threads=1)
    onnx_pred = scorer.predict(x)
    rel = _rel(onnx_pred, native)
    outliers = int((rel > REL).sum())
    assert outliers <= MAX_OUTLIER_SHARE * len(rel), (outliers, len(rel), float(rel.max()))
    assert np.median(rel) <= 1e-6


def test_session_threads_and_custom_domains_refused(model: GlobalModel) -> None:
    """Threads come from the caller; a graph with a node of a custom domain is refused."""
    import onnx

    data = export_lightgbm(model.booster, len(model.spec.feature_names))
    scorer = OnnxScorer.load(data, threads=1)
    assert scorer.session.get_session_options().intra_op_num_threads == 1
    graph = onnx.load_model_from_string(data)
    graph.graph.node[0].domain = "com.example.custom"
    with pytest.raises(BundleError, match="non-standard domains"):
        OnnxScorer.load(graph.SerializeToString())
    with pytest.raises(BundleError):
        OnnxScorer.load(b"not an onnx model")


def test_score_bundle_with_global_model(model: GlobalModel, frame: pl.DataFrame, tmp_path: Path) -> None:
    """A bundle whose series use the ONNX model scores every series with intervals matching native."""
    payloads, entry = export_global(model, frame, [80, 95])
    assert payloads.keys() == {ONNX_PAYLOAD}
    series = (
        frame.select("store_id", "item_id", "category").unique().sort("store_id", "item_id")
    ).with_columns(model=pl.lit("LightGBM"))
    series.write_parquet(tmp_path / "series.parquet")
    payloads[SERIES_PAYLOAD] = (tmp_path / "series.parquet").read_bytes()
    private, _ = key_pair(tmp_path)
    manifest = Manifest(
        model_name="demand", version=1, created_at=utcnow(), horizon=H, models={"LightGBM": entry}
    )
    bundle = write_bundle(tmp_path / "bundle", manifest, payloads, private)
    out = score(bundle, frame, out=tmp_path / "f.parquet")
    assert out.height == series.height * H
    assert out["model"].unique().to_list() == ["LightGBM"]
    assert out["forecast"].null_count() == 0
    assert (out["forecast-lo-95"] <= out["forecast-lo-80"]).all()
    assert (out["forecast-hi-80"] <= out["forecast-hi-95"]).all()
    native = model.predict(frame).sort("store_id", "item_id", "ds")
    rel = _rel(out["forecast"].to_numpy(), native["forecast"].to_numpy())
    assert (rel > REL).sum() <= MAX_OUTLIER_SHARE * len(rel)


def test_edge_features_read_only_the_lookback(model: GlobalModel, frame: pl.DataFrame) -> None:
    """Features at the end of each series are the same from the last ``lookback`` periods as from all
    (and differ from one period fewer: the longest lag reaches exactly that far)."""
    spec = dataclasses.replace(model.spec, lags=[1, 7, 14])
    assert lookback(spec) == 14
    keep = lookback(spec)
    recent = frame.sort("store_id", "item_id", "ds").filter(
        pl.int_range(pl.len(), 0, -1).over("store_id", "item_id") <= keep
    )
    full = make_features(frame, spec)
    trimmed = make_features(recent, spec)
    assert trimmed.height == full.height == frame.select("store_id", "item_id").n_unique() * H
    assert trimmed.select(spec.feature_names).equals(full.select(spec.feature_names))
    shorter = make_features(
        frame.sort("store_id", "item_id", "ds").filter(
            pl.int_range(pl.len(), 0, -1).over("store_id", "item_id") <= keep - 1
        ),
        spec,
    )
    assert not shorter.select(spec.feature_names).equals(full.select(spec.feature_names))


def test_forecast_global_uses_the_training_features(model: GlobalModel, frame: pl.DataFrame) -> None:
    """The edge path scores the rows ``make_features`` builds, whatever the order of the history rows."""
    payloads, entry = export_global(model, frame, [80])
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=7)
    out = forecast_global(entry, payloads[ONNX_PAYLOAD], shuffled, H - 2, [80], threads=1)
    feats = make_features(frame, model.spec).filter(pl.col("horizon") <= H - 2)
    x = feats.select(model.spec.feature_names).to_numpy().astype(np.float32)
    expected = OnnxScorer.load(payloads[ONNX_PAYLOAD], threads=1).predict(x) * feats["scale"].to_numpy()
    assert out.select("store_id", "item_id", "horizon").equals(feats.select("store_id", "item_id", "horizon"))
    np.testing.assert_allclose(out["forecast"].to_numpy(), expected, rtol=1e-12)
    assert (out["lo-80"] <= out["forecast"]).all()


def test_series_index_uses_sorted_frames_as_they_are_and_sorts_others(frame: pl.DataFrame) -> None:
    """A sorted history is indexed in place; a series split in two runs, or dates out of order, sort it."""
    ordered = frame.sort("store_id", "item_id", "ds")
    index = index_series(ordered)
    assert index.frame is ordered
    assert index.n_series == ordered.select("store_id", "item_id").n_unique()
    assert (index.lengths == 300).all()
    split = pl.concat(
        [ordered.filter(pl.col("ds").dt.day() <= 15), ordered.filter(pl.col("ds").dt.day() > 15)]
    )
    backwards = ordered.reverse()
    for messy in (split, backwards):
        again = index_series(messy)
        assert again.frame is not messy
        assert again.frame.equals(ordered)
        np.testing.assert_array_equal(again.offsets, index.offsets)
