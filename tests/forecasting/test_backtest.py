"""Rolling-origin backtests: windows, cutoffs, short series, metrics per series."""

from __future__ import annotations

import itertools

import polars as pl

from forecasting.common.config import TrainSection
from forecasting.training.backtest import run_backtest
from tests.forecasting._engine import two_category_frame

CFG = TrainSection(
    horizon=7, season_length=7, windows=3, step=7, models=["Naive", "SeasonalNaive", "WindowAverage", "TSB"]
)


def test_backtest_has_windows_times_horizon_rows_per_series() -> None:
    """Each backtested series gets windows x horizon rows, cutoffs `step` apart, before its last date."""
    result = run_backtest(two_category_frame(), CFG, "D")
    per_series = result.cv.group_by("unique_id").agg(pl.len(), pl.col("cutoff").n_unique().alias("cutoffs"))
    assert set(per_series["len"].to_list()) == {21}
    assert set(per_series["cutoffs"].to_list()) == {3}
    cutoffs = sorted(result.cv["cutoff"].unique().to_list())
    assert [(b - a).days for a, b in itertools.pairwise(cutoffs)] == [7, 7]
    assert (result.cv["ds"] > result.cv["cutoff"]).all()
    assert {"Naive-lo-80", "TSB-hi-95", "category", "store_id"} <= set(result.cv.columns)


def test_short_series_are_listed_not_backtested() -> None:
    """A series shorter than the backtest needs is listed as short and absent from the CV frame."""
    result = run_backtest(two_category_frame(), CFG, "D")
    assert result.short_series == ["S1/I08"]
    assert "S1/I08" not in result.cv["unique_id"].to_list()


def test_seasonal_naive_wins_on_weekly_seasonal_series() -> None:
    """On weekly-seasonal series, SeasonalNaive's MAE beats Naive's in the per-series metrics."""
    result = run_backtest(two_category_frame(), CFG, "D")
    fresh = result.series_metrics.filter(pl.col("category") == "fresh")
    mae = dict(fresh.group_by("model").agg(pl.col("mae").mean()).iter_rows())
    assert mae["SeasonalNaive"] < mae["Naive"]
    assert {"mae", "wape", "smape", "mase", "rmsse", "bias", "coverage_80", "coverage_95"} <= set(
        fresh.columns
    )
