"""Dynamic drivers of the target date in the global model: holiday flags and per-period covariates."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pytest

from forecasting.common.config import TrainSection
from forecasting.data.synthetic import generate
from forecasting.models.gbm import GlobalModel
from forecasting.models.gbm_features import (
    HOLIDAY_FEATURES,
    FeatureSpec,
    make_features,
    make_spec,
    training_origins,
)
from forecasting.models.onnx_model import (
    ONNX_PAYLOAD,
    OnnxScorer,
    export_global,
    export_lightgbm,
    forecast_global,
)

H = 7


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    """Two synthetic stores of 10 items, 240 days, with a price and a markdown missing before day 120."""
    base = generate(stores=2, items=10, days=240, seed=5)
    first = base["ds"].min()
    rng = np.random.default_rng(0)
    day = (base["ds"] - first).dt.total_days().to_numpy()
    markdown = np.where(day < 120, np.nan, rng.uniform(0, 10, base.height))
    markdown[rng.random(base.height) < 0.1] = np.nan
    price = 5.0 + np.sin(day / 9.0) + rng.normal(0, 0.1, base.height)
    y = base["y"].to_numpy() * np.where(np.nan_to_num(markdown) > 5, 1.6, 1.0) * (7.0 - price) / 2.0
    return base.with_columns(
        pl.Series("y", np.round(y, 2)),
        pl.Series("price", price),
        pl.Series("markdown", markdown).fill_nan(None),
    )


@pytest.fixture(scope="module")
def model(frame: pl.DataFrame) -> GlobalModel:
    """A small global model trained on the frame's drivers."""
    import lightgbm as lgb

    spec = make_spec(frame, msgspec.structs.replace(TrainSection(), horizon=H), "D", H)
    rows = make_features(frame, spec, origins=training_origins(frame, spec), with_target=True)
    x = rows.select(spec.feature_names).to_numpy().astype(np.float32)
    data = lgb.Dataset(x, label=rows["y_scaled"].to_numpy(), weight=rows["weight"].to_numpy())
    params = {"objective": "l1", "verbosity": -1, "num_leaves": 15, "seed": 0, "num_threads": 1}
    return GlobalModel(booster=lgb.train(params, data, 60), spec=spec)


def _series(days: int, price: list[float], holiday: list[bool], *, fed: int = 0) -> pl.DataFrame:
    """One series of ``days`` known days, then ``fed`` future rows with ``y`` missing."""
    n = days + fed
    start = date(2024, 1, 1)
    return pl.DataFrame(
        {
            "store_id": ["s"] * n,
            "item_id": ["i"] * n,
            "category": ["c"] * n,
            "ds": [start + timedelta(days=k) for k in range(n)],
            "y": [float(k % 7 + 1) for k in range(days)] + [None] * fed,
            "is_holiday": holiday,
            "price": price,
        },
        schema_overrides={"y": pl.Float64},
    )


def _spec(h: int) -> FeatureSpec:
    return FeatureSpec(
        freq="D",
        horizon=h,
        season_length=7,
        lags=[1, 7],
        windows=[7],
        holiday=True,
        dynamic_columns=["price"],
    )


def test_spec_records_holiday_and_covariates(frame: pl.DataFrame) -> None:
    """Holiday flags, the promotion flag and numeric per-period columns become target-date features."""
    spec = make_spec(frame, TrainSection(), "D", H)
    assert spec.holiday
    assert spec.dynamic_columns == ["on_promo", "price", "markdown"]
    assert spec.feature_names[-6:] == [*HOLIDAY_FEATURES, "exog_on_promo", "exog_price", "exog_markdown"]
    assert FeatureSpec.from_params(spec.to_params()) == spec


def test_future_drivers_use_fed_rows_and_carry_the_last_known_value() -> None:
    """Target dates read fed future rows when present; beyond them the last known value, holidays 0."""
    days, fed, h = 30, 3, 6
    price = [1.0] * (days - 1) + [2.0] + [5.0, 6.0, 7.0]
    holiday = [False] * days + [False, True, False]
    feats = make_features(_series(days, price, holiday, fed=fed), _spec(h)).sort("horizon")
    assert feats["origin_ds"].unique().to_list() == [date(2024, 1, 1) + timedelta(days=days - 1)]
    assert feats["exog_price"].to_list() == [5.0, 6.0, 7.0, 7.0, 7.0, 7.0]
    assert feats["holiday"].to_list() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert feats["holiday_prev"].to_list() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert feats["holiday_next"].to_list() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    alone = make_features(_series(days, price[:days], holiday[:days]), _spec(h))
    assert alone["exog_price"].to_list() == [2.0] * h
    assert alone.select(HOLIDAY_FEATURES).to_numpy().sum() == 0


def test_missing_covariates_become_nan_and_absent_columns_missing() -> None:
    """A missing covariate value is null in the features; a history without the column scores all-missing."""
    price: list[Any] = [1.0] * 29 + [None]
    feats = make_features(_series(30, price, [False] * 30), _spec(3))
    assert feats["exog_price"].null_count() == 3
    without = make_features(_series(30, [1.0] * 30, [False] * 30).drop("price", "is_holiday"), _spec(3))
    assert without["exog_price"].null_count() == 3
    assert without["holiday"].to_list() == [0.0] * 3


def test_onnx_parity_with_exogenous_features_including_nan(model: GlobalModel, frame: pl.DataFrame) -> None:
    """onnxruntime matches LightGBM on rows with drivers, NaN markdowns routed the same way."""
    origins = training_origins(frame, model.spec)
    feats = make_features(frame, model.spec, origins=origins)
    x = feats.select(model.spec.feature_names).to_numpy().astype(np.float32)
    col = model.spec.feature_names.index("exog_markdown")
    nan_rows = np.isnan(x[:, col])
    assert nan_rows.sum() > 100 and (~nan_rows).sum() > 100
    importance = model.booster.feature_importance()
    assert importance[col] > 0
    native = model.booster.predict(x)
    onnx_pred = OnnxScorer.load(export_lightgbm(model.booster, x.shape[1]), threads=1).predict(x)
    rel = np.abs(onnx_pred - native) / np.maximum(np.abs(native), 1e-3)
    for part in (nan_rows, ~nan_rows):
        assert (rel[part] > 1e-4).sum() <= 0.01 * part.sum()
        assert np.median(rel[part]) <= 1e-6


def test_forecast_global_scores_fed_future_rows(model: GlobalModel, frame: pl.DataFrame) -> None:
    """The edge forecasts from the last known sales and reads the drivers of fed future rows."""
    payloads, entry = export_global(model, frame, [80])
    last = frame.group_by("store_id", "item_id").agg(pl.all().sort_by("ds").last())
    fed = pl.concat(
        [
            last.with_columns(
                pl.col("ds") + pl.duration(days=k),
                pl.lit(None, dtype=pl.Float64).alias("y"),
                pl.lit(9.0).alias("markdown"),
                pl.lit(k == 2).alias("is_holiday"),
            )
            for k in (1, 2, 3)
        ]
    ).select(frame.columns)
    history = pl.concat([frame, fed])
    out = forecast_global(entry, payloads[ONNX_PAYLOAD], history, H, [80], threads=1)
    feats = make_features(history, model.spec)
    assert (feats["origin_ds"] == frame["ds"].max()).all()
    assert feats.filter(pl.col("horizon") <= 3)["exog_markdown"].unique().to_list() == [9.0]
    assert feats.filter(pl.col("horizon") == 2)["holiday"].unique().to_list() == [1.0]
    x = feats.select(model.spec.feature_names).to_numpy().astype(np.float32)
    expected = OnnxScorer.load(payloads[ONNX_PAYLOAD], threads=1).predict(x) * feats["scale"].to_numpy()
    np.testing.assert_allclose(out["forecast"].to_numpy(), expected, rtol=1e-12)
    plain = forecast_global(entry, payloads[ONNX_PAYLOAD], frame, H, [80], threads=1)
    assert not np.allclose(plain["forecast"].to_numpy(), out["forecast"].to_numpy())


def test_old_spec_without_exogenous_fields_still_scores(frame: pl.DataFrame) -> None:
    """A bundle spec written before the drivers existed loads with none and scores a frame that has them."""
    import lightgbm as lgb

    spec = make_spec(frame.drop("is_holiday", "on_promo", "price", "markdown"), TrainSection(), "D", H)
    params = spec.to_params()
    for key in ("holiday", "dynamic_columns"):
        params.pop(key)
    old = FeatureSpec.from_params(params)
    assert old == spec
    assert not old.holiday and old.dynamic_columns == []
    assert old.feature_names == params["feature_names"]
    rows = make_features(frame, old, origins=training_origins(frame, old), with_target=True)
    x = rows.select(old.feature_names).to_numpy().astype(np.float32)
    booster = lgb.train(
        {"objective": "l1", "verbosity": -1, "num_threads": 1}, lgb.Dataset(x, label=rows["y_scaled"]), 20
    )
    payloads, entry = export_global(GlobalModel(booster=booster, spec=old), frame, [80])
    entry = msgspec.structs.replace(entry, params={**entry.params, "features": params})
    out = forecast_global(entry, payloads[ONNX_PAYLOAD], frame, H, [80], threads=1)
    assert out.height == frame.select("store_id", "item_id").n_unique() * H
    assert out["forecast"].is_finite().all()
