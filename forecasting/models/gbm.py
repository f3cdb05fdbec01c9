"""The global gradient-boosting model: one LightGBM over every series, direct multi-horizon.

Each training row is (series, origin t, horizon k): the target is ``y[t+k] / scale`` where ``scale`` is the
series' mean absolute level over the last season before ``t``; features are the horizon, lags taken from
the target date (``y[t+k-L]`` for each lag ``L >= k``, so only known history is used), recent window means,
the year-earlier window mean around the target date, calendar of the target date, static
series/store attributes and the dynamic drivers of the target date (its holiday flag and those of the
periods either side, the per-period covariates such as promotions, prices or markdowns) — sales features
scaled. The loss is L1 (MAE) weighted by 5 on holiday targets and, for metrics in sales units (``[train]
gbm_weighting``), by ``scale``, so it minimises WMAE in original units; for scale-free metrics (MASE,
RMSSE, sMAPE) every row weighs alike.

The features are computed by one function for training and for the edge, in
:mod:`forecasting.models.gbm_features`; this module fits the model, cross-validates it and fingerprints its
feature spec.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecasting.common.config import TrainSection
from forecasting.common.logs import get_logger
from forecasting.models.gbm_features import (
    FeatureSpec,
    make_features,
    make_spec,
    training_origins,
)

log = get_logger(__name__)
ID = "unique_id"


@dataclass
class GlobalModel:
    """A trained booster with its feature spec."""

    booster: Any
    spec: FeatureSpec

    def predict(self, history: pl.DataFrame, origins: pl.DataFrame | None = None) -> pl.DataFrame:
        """Forecast rows ``store_id, item_id, category, ds, forecast`` from each origin (default: the end)."""
        feats = make_features(history, self.spec, origins=origins)
        x = feats.select(self.spec.feature_names).to_numpy().astype(np.float32)
        pred = self.booster.predict(x) if len(x) else np.zeros(0)
        return feats.select("store_id", "item_id", "category", "origin_ds", "ds", "horizon").with_columns(
            (pl.Series(pred, dtype=pl.Float64) * feats["scale"]).alias("forecast")
        )


def fit(
    history: pl.DataFrame, spec: FeatureSpec, cfg: TrainSection, *, last_t: pl.DataFrame | None = None
) -> GlobalModel:
    """Train the booster on ``history`` (targets up to ``last_t`` per series when given)."""
    import lightgbm as lgb

    started = time.perf_counter()
    origins = training_origins(history, spec, last_t=last_t, count=cfg.gbm_origins)
    rows = make_features(history, spec, origins=origins, with_target=True)
    if last_t is not None:
        cap = (
            history.sort("store_id", "item_id", "ds")
            .with_columns(pl.int_range(pl.len()).over("store_id", "item_id").alias("t"))
            .join(last_t, on=["store_id", "item_id"])
            .filter(pl.col("t") == pl.col("t_max"))
            .select("store_id", "item_id", pl.col("ds").alias("_cap"))
        )
        rows = rows.join(cap, on=["store_id", "item_id"]).filter(pl.col("ds") <= pl.col("_cap")).drop("_cap")
    x = rows.select(spec.feature_names).to_numpy().astype(np.float32)
    params = {
        "objective": cfg.gbm_objective,
        "learning_rate": cfg.gbm_learning_rate,
        "num_leaves": cfg.gbm_leaves,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": cfg.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": cfg.gbm_threads,
        "verbosity": -1,
    }
    data = lgb.Dataset(x, label=rows["y_scaled"].to_numpy(), weight=_weights(rows, cfg), free_raw_data=True)
    booster = lgb.train(params, data, num_boost_round=cfg.gbm_rounds)
    log.info(
        "gbm_trained",
        rows=rows.height,
        features=len(spec.feature_names),
        duration_seconds=round(time.perf_counter() - started, 3),
    )
    return GlobalModel(booster=booster, spec=spec)


def _weights(rows: pl.DataFrame, cfg: TrainSection) -> Any:
    """Row weights: the features' level x holiday weight, or the holiday weight alone (``gbm_weighting``)."""
    weight = rows["weight"]
    return (weight if cfg.gbm_scale_weighted else weight / rows["scale"]).to_numpy()


def cross_validation(
    frame: pl.DataFrame,
    unique_ids: pl.Series,
    cfg: TrainSection,
    freq: str,
    *,
    h: int,
    n_windows: int,
    step: int,
) -> pl.DataFrame:
    """Rolling-origin backtest of the global model in statsforecast's layout (``LightGBM`` column)."""
    keys = ["store_id", "item_id"]
    spec = make_spec(frame, cfg, freq, h)
    indexed = frame.sort([*keys, "ds"]).with_columns(
        pl.concat_str(keys, separator="/").alias(ID), pl.int_range(pl.len()).over(keys).alias("t")
    )
    sizes = (
        indexed.group_by(keys)
        .agg(pl.len().alias("n"), pl.col(ID).first())
        .filter(pl.col(ID).is_in(unique_ids.implode()))
    )
    parts = []
    for i in range(n_windows):
        back = h + step * (n_windows - 1 - i)
        last_t = sizes.select(*keys, (pl.col("n") - 1 - back).alias("t_max"))
        hist = indexed.join(last_t, on=keys).filter(pl.col("t") <= pl.col("t_max")).drop("t", "t_max", ID)
        model = fit(hist, spec, cfg)
        pred = model.predict(hist)
        parts.append(pred.rename({"origin_ds": "cutoff", "forecast": "LightGBM"}))
    cv = pl.concat(parts).with_columns(pl.concat_str(keys, separator="/").alias(ID))
    actual = indexed.select(ID, "ds", "y")
    return (
        cv.join(actual, on=[ID, "ds"], how="inner")
        .select(ID, "ds", "cutoff", "y", "LightGBM")
        .sort(ID, "cutoff", "ds")
    )


def spec_digest(spec: FeatureSpec) -> str:
    """Short hash of the feature spec (ties a model file to its feature function)."""
    return hashlib.sha256(repr(spec.to_params()).encode()).hexdigest()[:16]
