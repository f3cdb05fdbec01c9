"""Candidate models from config, and the M4 seasonality test / classical multiplicative decomposition."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from forecasting.common.config import TrainSection
from forecasting.common.errors import ConfigError
from forecasting.models import gbm_features
from forecasting.models.families import (
    build_models,
    candidate_specs,
    check_candidates,
    min_length,
    multiplicative_indices,
    naive2_forecast,
    seasonality_test,
)
from forecasting.training.backtest import run_backtest


def test_every_candidate_builds_with_its_alias() -> None:
    """Each named candidate builds a statsforecast model whose alias is its name."""
    cfg = TrainSection(mstl_season_lengths=[7, 28])
    names = list(candidate_specs())
    models = build_models(names, cfg, horizon=14)
    assert [m.alias for m in models] == names
    no_native = [m for m, n in zip(models, names, strict=True) if not candidate_specs()[n].native_intervals]
    assert all(m.prediction_intervals is not None for m in no_native)


def test_unknown_candidate_or_fallback_is_a_config_error() -> None:
    """An unknown candidate name fails early, naming [train] models."""
    with pytest.raises(ConfigError, match=r"\[train\] models"):
        check_candidates(TrainSection(models=["Naive", "Prophet"]))
    with pytest.raises(ConfigError, match="fallback"):
        check_candidates(TrainSection(fallback="Nope"))


def test_min_length_accounts_for_seasons_and_conformal_windows() -> None:
    """Seasonal window averages need seasons x windows; conformal intervals need windows x horizon + 1."""
    cfg = TrainSection(season_length=7, season_windows=3, conformal_windows=2)
    assert min_length(["SeasonalWindowAverage"], cfg, 5, intervals=False) == 21
    assert min_length(["SeasonalWindowAverage"], cfg, 28, intervals=True) == 57
    assert min_length(["Naive"], cfg, 28) == 1


def test_seasonality_test_detects_strong_season_and_ignores_noise() -> None:
    """The 90 % autocorrelation test finds a clear daily cycle and not white noise."""
    rng = np.random.default_rng(0)
    t = np.arange(24 * 20)
    seasonal = 100 + 30 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, t.size)
    assert seasonality_test(seasonal, 24)
    assert not seasonality_test(rng.normal(100, 1, t.size), 24)
    assert not seasonality_test(seasonal[:60], 24)  # fewer than 3 seasons


def test_multiplicative_indices_recover_the_pattern_and_average_one() -> None:
    """Classical decomposition indices average 1 and recover a multiplicative pattern."""
    pattern = np.array([0.5, 1.0, 1.5, 1.0])
    y = np.tile(pattern, 12) * 10.0
    idx = multiplicative_indices(y, 4)
    assert idx.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(idx, pattern, rtol=1e-9)
    fc = naive2_forecast(y, 4, 6)
    np.testing.assert_allclose(fc, np.r_[pattern, pattern][:6] * 10.0, rtol=1e-9)


def _weekly_frame(weeks: int = 120) -> pl.DataFrame:
    rng = np.random.default_rng(1)
    start = date(2021, 1, 1)
    rows = []
    for item, level in (("A", 100.0), ("B", 30.0)):
        season = 1 + 0.3 * np.sin(2 * np.pi * np.arange(weeks) / 52)
        y = level * season + rng.normal(0, 2, weeks)
        rows += [
            {
                "store_id": "S1",
                "item_id": item,
                "category": item,
                "ds": start + timedelta(weeks=w),
                "y": float(y[w]),
            }
            for w in range(weeks)
        ]
    return pl.DataFrame(rows)


def test_gbm_features_use_only_history_before_the_origin() -> None:
    """Features of an origin do not change when later rows exist; lags shorter than h are null."""
    frame = _weekly_frame()
    spec = gbm_features.make_spec(frame, TrainSection(season_length=52, gbm_lags=[1, 52]), "W", horizon=4)
    cut = frame["ds"].unique().sort()[99]
    past = frame.filter(pl.col("ds") <= cut)
    edge = gbm_features.make_features(past, spec)
    origins = pl.DataFrame({"store_id": ["S1", "S1"], "item_id": ["A", "B"], "t": [99, 99]})
    full = gbm_features.make_features(frame, spec, origins=origins)
    assert edge.select(spec.feature_names).equals(full.select(spec.feature_names))
    assert edge.height == 2 * 4
    first = edge.filter((pl.col("item_id") == "A") & (pl.col("horizon") == 1)).row(0, named=True)
    a_last = past.filter(pl.col("item_id") == "A")["y"][-1]
    assert first["lag_1"] == pytest.approx(a_last / first["scale"], rel=1e-6)
    assert edge.filter(pl.col("horizon") >= 2)["lag_1"].null_count() == 2 * 3
    assert edge["ds"].min() > cut


def test_gbm_candidate_backtests_beside_local_models() -> None:
    """LightGBM runs in the rolling backtest with the same cutoffs as the statsforecast candidates."""
    cfg = TrainSection(
        horizon=4, season_length=52, windows=2, step=4, models=["SeasonalNaive", "LightGBM"], gbm_rounds=20
    )
    result = run_backtest(_weekly_frame(), cfg, "W", intervals=False)
    assert result.cv["LightGBM"].null_count() == 0
    assert result.cv.height == 2 * 2 * 4
    mae = dict(result.series_metrics.group_by("model").agg(pl.col("mae").mean()).iter_rows())
    assert set(mae) == {"SeasonalNaive", "LightGBM"}


def test_gbm_training_origins_and_row_weights_follow_the_config() -> None:
    """``gbm_origins`` sets the origins per series (never before half a season); ``gbm_weighting`` weighs
    rows by level for metrics in sales units and alike for scale-free ones."""
    from forecasting.models.gbm import _weights

    frame = _weekly_frame()
    n = frame.filter(pl.col("item_id") == "A").height
    spec = gbm_features.make_spec(frame, TrainSection(season_length=52), "W", horizon=4)
    default = gbm_features.training_origins(frame, spec)
    assert default.group_by("item_id").len()["len"].to_list() == [52 + 4 - 1] * 2
    assert (
        gbm_features.training_origins(frame, spec, count=30).group_by("item_id").len()["len"].to_list()
        == [30] * 2
    )
    wide = gbm_features.training_origins(frame, spec, count=10_000)
    assert wide["t"].min() == 26 and wide.group_by("item_id").len()["len"].to_list() == [n - 1 - 26] * 2
    rows = gbm_features.make_features(frame, spec, origins=default, with_target=True)
    by_level = _weights(rows, TrainSection(metric="wmae"))
    alike = _weights(rows, TrainSection(metric="mase"))
    assert by_level == pytest.approx(rows["weight"].to_numpy())
    assert set(np.round(alike, 9)) <= {1.0, 5.0}
    assert TrainSection(metric="mase", gbm_weighting="scale").gbm_scale_weighted
    assert not TrainSection(metric="wape", gbm_weighting="equal").gbm_scale_weighted
