"""m5_mini: intermittent item-level series get intermittent models by backtest evidence and beat Naive."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from forecasting.common.config import load_train_config
from forecasting.data.validation import load_canonical
from forecasting.models.families import candidate_specs
from forecasting.training import metrics
from forecasting.training.backtest import run_backtest, sf_frame
from forecasting.training.pipeline import forecast_selected
from forecasting.training.selection import select_models

PROJECT = Path(__file__).resolve().parents[2]


def test_intermittent_models_selected_and_rmsse_beats_naive(shared_data: Path) -> None:
    """Per-series selection on 3 backtest windows picks intermittent models for intermittent series, and
    on the 28 held-out days the selected models' mean RMSSE is below Naive's."""
    cfg = load_train_config([PROJECT / "configs" / "m5.toml"])
    frame = load_canonical(shared_data / "m5_mini" / "sales_d1-d1885.csv", cfg.data).frame
    assert frame.select("store_id", "item_id").n_unique() == 10
    cutoff = frame["ds"].max() - timedelta(days=28)
    train, test = frame.filter(pl.col("ds") <= cutoff), frame.filter(pl.col("ds") > cutoff)
    result = run_backtest(train, cfg.train, "D", intervals=False)
    selection = select_models(result, metric="rmsse", by="series", fallback="Naive")
    zero_share = (
        train.with_columns(pl.concat_str("store_id", "item_id", separator="/").alias("unique_id"))
        .group_by("unique_id")
        .agg((pl.col("y") == 0).mean().alias("zeros"))
    )
    chosen = selection.assignment.join(zero_share, on="unique_id")
    intermittent_family = {n for n, spec in candidate_specs().items() if spec.intermittent}
    sparse = chosen.filter(pl.col("zeros") >= 0.5)
    assert sparse.height >= 4
    picked = sparse.filter(pl.col("model").is_in(sorted(intermittent_family))).height
    assert picked / sparse.height >= 0.5, chosen

    forecasts = forecast_selected(train, selection.assignment, cfg.train, "D", horizon=28)
    naive = forecast_selected(
        train, selection.assignment.with_columns(pl.lit("Naive").alias("model")), cfg.train, "D", horizon=28
    )
    evaluation = (
        sf_frame(test)
        .join(
            forecasts.select("unique_id", "ds", pl.col("forecast").alias("selected")), on=["unique_id", "ds"]
        )
        .join(naive.select("unique_id", "ds", pl.col("forecast").alias("Naive")), on=["unique_id", "ds"])
        .with_columns(pl.lit(cutoff).alias("cutoff"))
    )
    assert evaluation.height == 10 * 28
    scores = metrics.aggregate(
        metrics.per_series(evaluation, ["selected", "Naive"], sf_frame(train), season_length=1)
    )
    rmsse = dict(scores.select("model", "rmsse").iter_rows())
    assert rmsse["selected"] < rmsse["Naive"], rmsse
