"""Held-out accuracy through the deployed path (train, signed bundle, score): slices of bench_accuracy."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from forecasting.common.config import TrainConfig, load_train_config
from forecasting.data.validation import load_canonical
from forecasting.training.holdout import evaluate, forecast_holdout, owa, single_model, split_holdout

PROJECT = Path(__file__).resolve().parents[2]


def _config(name: str) -> TrainConfig:
    return load_train_config([PROJECT / "configs" / name])


def test_split_holdout_by_date_and_by_series() -> None:
    """``date`` hides the frame's last dates for every series; ``series`` hides each series' last rows."""
    frame = pl.DataFrame(
        {
            "store_id": ["1"] * 5 + ["2"] * 3,
            "item_id": ["a"] * 5 + ["b"] * 3,
            "ds": [1, 2, 3, 4, 5, 1, 2, 3],
            "y": [1.0] * 8,
        }
    )
    history, actuals = split_holdout(frame, 2)
    assert actuals["ds"].to_list() == [4, 5]
    assert history.height == 6
    history, actuals = split_holdout(frame, 2, by="series")
    assert actuals.select("item_id", "ds").rows() == [("a", 4), ("a", 5), ("b", 2), ("b", 3)]
    assert history.height == 4


def test_walmart_config_beats_seasonal_naive_on_the_held_out_weeks(shared_data: Path) -> None:
    """Two stores, the 13 last weeks hidden: the shipped config (an MSTL + LightGBM ensemble, deployed as
    such) has a clearly lower WMAE than SeasonalNaive(52) computed by the same pipeline."""
    cfg = _config("walmart.toml")
    frame = load_canonical(shared_data / "walmart" / "train.csv.gz", cfg.data).frame
    assert frame["Size"].null_count() == 0  # stores.csv (bare CR line ends) joined for every row
    frame = frame.filter(pl.col("store_id").is_in(["1", "23"]))
    history, actuals = split_holdout(frame, 13)
    runs = [
        forecast_holdout(history, cfg, "shipped", horizon=13),
        forecast_holdout(history, single_model(cfg, "SeasonalNaive"), "snaive", horizon=13),
    ]
    scores = evaluate(runs, history, actuals, scale_seasonality=52)
    assert scores["shipped"]["wmae"] < 0.9 * scores["snaive"]["wmae"], scores
    assert 0.65 <= scores["shipped"]["coverage_80"] <= 0.95, scores["shipped"]


def test_m5_config_at_or_below_ses_with_calibrated_count_intervals(shared_data: Path) -> None:
    """All ten M5 series, the last 28 days hidden: mean RMSSE at or below optimised SES's, 80 % and 95 %
    intervals near their nominal coverage, and nothing below zero on unit sales."""
    cfg = _config("m5.toml")
    frame = load_canonical(shared_data / "m5_mini" / "sales_d1-d1885.csv", cfg.data).frame
    history, actuals = split_holdout(frame, 28)
    runs = [
        forecast_holdout(history, cfg, "shipped", horizon=28),
        forecast_holdout(history, single_model(cfg, "SES"), "ses", horizon=28),
    ]
    scores = evaluate(runs, history, actuals, scale_seasonality=cfg.train.scale_seasonality)
    shipped = scores["shipped"]
    assert shipped["rmsse"] <= scores["ses"]["rmsse"], scores
    assert 0.70 <= shipped["coverage_80"] <= 0.90, shipped
    assert 0.85 <= shipped["coverage_95"] <= 0.99, shipped
    assert shipped["negative_bound_share"] == 0.0


def test_m4_weekly_config_beats_naive2(shared_data: Path) -> None:
    """Every ninth M4 Weekly series (40), their last 13 points hidden: OWA against Naive2 below 0.95 (M4
    rules; 0.840 on all 359 series in `./run bench accuracy`)."""
    cfg = _config("m4-weekly.toml")
    frame = load_canonical(shared_data / "m4" / "Weekly-train.csv", cfg.data).frame
    first = frame["item_id"].unique().sort()[::9]
    history, actuals = split_holdout(frame.filter(pl.col("item_id").is_in(first.implode())), 13, by="series")
    runs = [
        forecast_holdout(history, cfg, "shipped", horizon=13),
        forecast_holdout(history, single_model(cfg, "Naive2"), "naive2", horizon=13),
    ]
    scores = evaluate(runs, history, actuals, scale_seasonality=cfg.train.scale_seasonality)
    assert owa(scores["shipped"], scores["naive2"]) < 0.95, scores
