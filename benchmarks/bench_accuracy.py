"""Accuracy and calibration of the shipped configs on held-out real data, against references computed by
the same code in the same run.

Each test hides the last periods of a real data set, trains the shipped config on the rest through the
deployed path (``train`` + a signed bundle + ``score`` from that bundle:
:mod:`forecasting.training.holdout`) and scores the hidden actuals. The reference is the same pipeline
with one candidate.

- ``walmart_wmae``: ``configs/walmart.toml`` as shipped, the 13 last shared weeks held out (WMAE, holiday
  weeks x5); baseline ``walmart_wmae_seasonal_naive`` (SeasonalNaive(52)); target ratio <= 0.70.
- ``m5_rmsse``: ``configs/m5.toml``, the last 28 days held out (mean RMSSE, M5 scale); baseline
  ``m5_rmsse_ses`` (optimised SES); target ratio <= 1.
- ``m4_weekly_owa``: ``configs/m4-weekly.toml``, the last 13 points of each training series held out; OWA
  against ``Naive2`` computed in the same run (sMAPE, MASE with m=1); target <= 0.85.
- ``<set>_coverage_80`` / ``_95``: share of held-out actuals inside the 80 % / 95 % intervals, with
  ``<set>_coverage_80_gap`` = |coverage - 0.80| (target <= 0.05, i.e. 75-85 %) and ``_95_gap`` =
  |coverage - 0.94| (target <= 0.04, i.e. 90-98 %).
- ``m5_negative_bound_share``: share of forecasts or lower bounds below 0 on unit sales (target 0).
- ``walmart_train_seconds``: training the shipped Walmart config (backtest, selection, final fit, the
  bundle's own scoring) on the held-out history (target <= 600 s on the full data).

The tiny size runs each on a slice (one Walmart store, 20 M4 series; m5_mini is small already).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from forecasting.common.config import TrainConfig, load_train_config
from forecasting.data.validation import load_canonical
from forecasting.training.holdout import (
    HoldoutRun,
    evaluate,
    forecast_holdout,
    owa,
    single_model,
    split_holdout,
)

# Whole-data-set trainings run for many minutes on a shared two-core machine (the suite default is 10).
pytestmark = pytest.mark.timeout(3 * 3600)
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SHELFCAST_TEST_DATA", ROOT.parent / "shared" / "data"))


def _config(name: str) -> TrainConfig:
    return load_train_config([ROOT / "configs" / name])


def _load(relative: str, cfg: TrainConfig) -> pl.DataFrame:
    path = DATA / relative
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real data missing at {path} (required when CI is set)")
        pytest.skip(f"real data not found at {path}")
    return load_canonical(path, cfg.data).frame


def _coverage(figures: Any, prefix: str, scores: dict[str, float]) -> None:
    for level, centre, tolerance in ((80, 0.80, 0.05), (95, 0.94, 0.04)):
        value = scores[f"coverage_{level}"]
        figures.value(f"{prefix}_coverage_{level}", value, "share")
        figures.value(
            f"{prefix}_coverage_{level}_gap", abs(value - centre), "share", target=f"value <= {tolerance}"
        )


def _run(
    benchmark: Any, history: pl.DataFrame, configs: dict[str, TrainConfig], horizon: int
) -> list[HoldoutRun]:
    def work() -> list[HoldoutRun]:
        return [forecast_holdout(history, cfg, label, horizon=horizon) for label, cfg in configs.items()]

    runs: list[HoldoutRun] = benchmark.pedantic(work, rounds=1, iterations=1)
    return runs


def test_walmart_holdout(benchmark: Any, figures: Any, bench_size: str) -> None:
    """configs/walmart.toml on the 13 last shared weeks against SeasonalNaive(52)."""
    cfg = _config("walmart.toml")
    frame = _load("walmart/train.csv.gz", cfg)
    if bench_size == "tiny":
        frame = frame.filter(pl.col("store_id") == "1")
    history, actuals = split_holdout(frame, 13)
    figures.timing(None)
    runs = _run(benchmark, history, {"shipped": cfg, "snaive": single_model(cfg, "SeasonalNaive")}, 13)
    scores = evaluate(runs, history, actuals, scale_seasonality=cfg.train.scale_seasonality)
    figures.value("walmart_wmae_seasonal_naive", scores["snaive"]["wmae"], "wmae")
    figures.value("walmart_wmae", scores["shipped"]["wmae"], "wmae", baseline="walmart_wmae_seasonal_naive",
                  target="ratio <= 0.7")  # fmt: skip
    _coverage(figures, "walmart", scores["shipped"])
    full = bench_size == "full"
    figures.value(
        "walmart_train_seconds", runs[0].train_seconds, "s", target="value <= 600" if full else None
    )


def test_m5_holdout(benchmark: Any, figures: Any) -> None:
    """configs/m5.toml on the last 28 shared days against optimised SES."""
    cfg = _config("m5.toml")
    frame = _load("m5_mini/sales_d1-d1885.csv", cfg)
    history, actuals = split_holdout(frame, 28)
    figures.timing(None)
    runs = _run(benchmark, history, {"shipped": cfg, "ses": single_model(cfg, "SES")}, 28)
    scores = evaluate(runs, history, actuals, scale_seasonality=cfg.train.scale_seasonality)
    figures.value("m5_rmsse_ses", scores["ses"]["rmsse"], "rmsse")
    figures.value(
        "m5_rmsse", scores["shipped"]["rmsse"], "rmsse", baseline="m5_rmsse_ses", target="ratio <= 1"
    )
    _coverage(figures, "m5", scores["shipped"])
    figures.value(
        "m5_negative_bound_share", scores["shipped"]["negative_bound_share"], "share", target="value <= 0"
    )


def test_m4_weekly_holdout(benchmark: Any, figures: Any, bench_size: str) -> None:
    """configs/m4-weekly.toml on the last 13 points of each training series, OWA against Naive2."""
    cfg = _config("m4-weekly.toml")
    frame = _load("m4/Weekly-train.csv", cfg)
    if bench_size == "tiny":
        frame = frame.filter(pl.col("item_id").is_in(frame["item_id"].unique().sort()[:20].implode()))
    history, actuals = split_holdout(frame, 13, by="series")
    figures.timing(None)
    runs = _run(benchmark, history, {"shipped": cfg, "naive2": single_model(cfg, "Naive2")}, 13)
    scores = evaluate(runs, history, actuals, scale_seasonality=cfg.train.scale_seasonality)
    figures.value("m4_weekly_smape", scores["shipped"]["smape"], "smape", baseline="m4_weekly_smape_naive2")
    figures.value("m4_weekly_smape_naive2", scores["naive2"]["smape"], "smape")
    figures.value("m4_weekly_mase", scores["shipped"]["mase"], "mase", baseline="m4_weekly_mase_naive2")
    figures.value("m4_weekly_mase_naive2", scores["naive2"]["mase"], "mase")
    figures.value("m4_weekly_owa", owa(scores["shipped"], scores["naive2"]), "owa", target="value <= 0.85")
    _coverage(figures, "m4_weekly", scores["shipped"])
