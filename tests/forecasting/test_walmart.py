"""Walmart: per-category selected models beat SeasonalNaive(52) by WMAE on the last 13 weeks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from forecasting.backtest import run_backtest, with_unique_id
from forecasting.config import load_train_config
from forecasting.selection import select_models
from forecasting.training import forecast_selected
from forecasting.validation import load_canonical

PROJECT = Path(__file__).resolve().parents[2]
STORES = [str(s) for s in range(1, 46, 11)]  # 5 of the 45 stores, spread over types and sizes


def _wmae(frame: pl.DataFrame, column: str) -> float:
    weight = pl.when(pl.col("is_holiday")).then(5.0).otherwise(1.0)
    return float(frame.select(((pl.col(column) - pl.col("y")).abs() * weight).sum() / weight.sum()).item())


def test_selected_models_beat_seasonal_naive_on_last_13_weeks(shared_data: Path) -> None:
    """Selection on the earlier weeks, then the 13 held-out weeks: lower WMAE than SeasonalNaive(52)
    overall and in most departments."""
    cfg = load_train_config([PROJECT / "configs" / "walmart.toml"])
    frame = load_canonical(shared_data / "walmart" / "train.csv.gz", cfg.data).frame
    assert frame["Size"].null_count() == 0  # stores.csv (bare CR line ends) joined for every row
    frame = frame.filter(pl.col("store_id").is_in(STORES))
    complete = frame.group_by("store_id", "item_id").agg(pl.len().alias("n")).filter(pl.col("n") == 130)
    frame = frame.join(complete, on=["store_id", "item_id"], how="semi")
    cutoff = frame["ds"].max() - timedelta(weeks=13)
    train, test = frame.filter(pl.col("ds") <= cutoff), frame.filter(pl.col("ds") > cutoff)

    result = run_backtest(train, cfg.train, "W", intervals=False)
    selection = select_models(result, metric="wmae", by="category", fallback="Naive")
    chosen = forecast_selected(train, selection.assignment, cfg.train, "W", horizon=13)
    baseline = forecast_selected(
        train,
        selection.assignment.with_columns(pl.lit("SeasonalNaive").alias("model")),
        cfg.train,
        "W",
        horizon=13,
    )
    evaluation = (
        with_unique_id(test)
        .select("unique_id", "category", "ds", "y", "is_holiday")
        .join(chosen.select("unique_id", "ds", pl.col("forecast").alias("selected")), on=["unique_id", "ds"])
        .join(baseline.select("unique_id", "ds", pl.col("forecast").alias("snaive")), on=["unique_id", "ds"])
    )
    assert evaluation.height == complete.height * 13
    overall_selected, overall_snaive = _wmae(evaluation, "selected"), _wmae(evaluation, "snaive")
    assert overall_selected < overall_snaive, (overall_selected, overall_snaive)
    per_category = [
        (_wmae(group, "selected"), _wmae(group, "snaive")) for _, group in evaluation.group_by("category")
    ]
    better = sum(1 for ours, theirs in per_category if ours < theirs)
    assert better > len(per_category) / 2, (better, len(per_category))
