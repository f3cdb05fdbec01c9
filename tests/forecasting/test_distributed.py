"""The Dask engine (statsforecast's Fugue backend on a 2-worker LocalCluster) matches the local engine."""

from __future__ import annotations

import msgspec
import polars as pl
from polars.testing import assert_frame_equal

from forecasting.common.config import TrainSection
from forecasting.training.backtest import run_backtest
from tests.forecasting._engine import two_category_frame


def test_dask_engine_gives_identical_backtest() -> None:
    """Backtest frames and metrics from engine=dask on 2 workers equal the local engine's, value for value."""
    local_cfg = TrainSection(
        horizon=7, season_length=7, windows=2, step=7, models=["Naive", "SeasonalNaive", "AutoETS", "TSB"]
    )
    dask_cfg = msgspec.structs.replace(local_cfg, engine="dask", dask_workers=2, dask_processes=False)
    frame = two_category_frame()
    local = run_backtest(frame, local_cfg, "D")
    dask = run_backtest(frame, dask_cfg, "D")
    assert_frame_equal(local.cv, dask.cv, check_exact=True)
    assert_frame_equal(local.series_metrics, dask.series_metrics, check_exact=True)
    assert local.cv.schema["AutoETS"] == pl.Float64
