"""Held-out evaluation through the deployed path: train on the history, bundle, score, compare with actuals.

What a retailer would see: the last ``periods`` of every series are hidden, ``train`` + ``write_run`` build a
signed bundle from the rest, :func:`forecasting.bundle.scoring.score` forecasts from that bundle, and
the forecasts are scored against the hidden actuals with the same metric code as the backtests
(``forecasting.training.metrics``: MAE, WAPE, WMAE, sMAPE, MASE, RMSSE, interval coverage). A baseline is
the same pipeline with one candidate (``SeasonalNaive``, ``SES``, ``Naive2`` ...), so both sides share
every line of code.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import polars as pl

from forecasting.common.config import TrainConfig
from forecasting.models.fitted_forecast import level_columns
from forecasting.training import metrics
from forecasting.training.backtest import ID, with_unique_id

KEYS = ["store_id", "item_id"]


@dataclass(frozen=True)
class HoldoutRun:
    """The forecasts of one configuration on the held-out periods, and how long training and scoring took."""

    label: str
    forecasts: pl.DataFrame
    train_seconds: float
    series_per_model: dict[str, int]


def split_holdout(
    frame: pl.DataFrame, periods: int, *, by: Literal["date", "series"] = "date"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(history, actuals)``: the last ``periods`` dates of the frame (``date``: one cutoff for every series,
    as a chain's calendar) or the last ``periods`` rows of each series (``series``: M4, whose series end
    at different points)."""
    if by == "date":
        dates = frame["ds"].unique().sort()
        cutoff = dates[-periods - 1]
        return frame.filter(pl.col("ds") <= cutoff), frame.filter(pl.col("ds") > cutoff)
    ordered = frame.sort(*KEYS, "ds").with_columns(
        (pl.len().over(KEYS) - pl.int_range(pl.len()).over(KEYS)).alias("_from_end")
    )
    history = ordered.filter(pl.col("_from_end") > periods).drop("_from_end")
    actuals = ordered.filter(pl.col("_from_end") <= periods).drop("_from_end")
    return history, actuals


def single_model(config: TrainConfig, model: str) -> TrainConfig:
    """``config`` with one candidate: the baseline computed by the same pipeline."""
    section = msgspec.structs.replace(
        config.train, models=[model], ensemble_top_k=0, select_by="all", windows=1, fallback="Naive"
    )
    return msgspec.structs.replace(config, train=section)


def forecast_holdout(
    history: pl.DataFrame, config: TrainConfig, label: str, *, horizon: int, signing_key: Path | None = None
) -> HoldoutRun:
    """Train on ``history`` with ``config``, write the signed bundle, score ``horizon`` periods from it."""
    import time

    from forecasting.bundle.scoring import score
    from forecasting.bundle.signing import generate_key_files
    from forecasting.training.pipeline import train, write_run

    config = msgspec.structs.replace(config, train=msgspec.structs.replace(config.train, horizon=horizon))
    with tempfile.TemporaryDirectory(prefix="holdout-") as tmp:
        root = Path(tmp)
        key = signing_key or generate_key_files(root / "signing.key")[0]
        began = time.perf_counter()
        result = train(history, config)
        record = write_run(result, root / "bundle", signing_key=key)
        seconds = time.perf_counter() - began
        forecasts = score(root / "bundle", history, horizon=horizon)
    return HoldoutRun(
        label=label,
        forecasts=forecasts,
        train_seconds=seconds,
        series_per_model={str(k): int(v) for k, v in record["selection"]["models"].items()},
    )


def evaluate(
    runs: Sequence[HoldoutRun],
    history: pl.DataFrame,
    actuals: pl.DataFrame,
    *,
    scale_seasonality: int,
    levels: Sequence[int] = (80, 95),
) -> dict[str, dict[str, float]]:
    """Metrics of every run on the held-out actuals (per label: mae, wape, wmae, smape, mase, rmsse,
    coverage_<level>, negative_bound_share, points, new_series_points). Every run must forecast every
    held-out point of every series that has a history."""
    # A series that first sells inside the held-out periods has no history to forecast from: it is left
    # out of every run's score alike (``new_series_points`` says how many points that was).
    known = actuals.join(history.select(KEYS).unique(), on=KEYS, how="semi")
    new_points = actuals.height - known.height
    actuals = known
    holiday = "is_holiday" if "is_holiday" in actuals.columns else None
    cv = with_unique_id(actuals).select(ID, "ds", "y", *([holiday] if holiday else []))
    cutoff = with_unique_id(history).group_by(ID).agg(pl.col("ds").max().alias("cutoff"))
    cv = cv.join(cutoff, on=ID, how="left")
    bounds = level_columns(levels)
    negative: dict[str, float] = {}
    for run in runs:
        fc = with_unique_id(run.forecasts).select(
            ID,
            "ds",
            pl.col("forecast").alias(run.label),
            *[pl.col(f"forecast-{b}").alias(f"{run.label}-{b}") for b in bounds],
        )
        cv = cv.join(fc, on=[ID, "ds"], how="left")
        missing = cv.filter(pl.col(run.label).is_null()).height
        if missing:
            raise ValueError(f"{run.label}: {missing} held-out points have no forecast")
        negative[run.label] = float(
            cv.select(
                (pl.min_horizontal(pl.col(f"{run.label}-lo-{min(levels)}"), run.label) < 0).mean()
            ).item()
        )
    labels = [run.label for run in runs]
    train_df = with_unique_id(history).select(ID, "ds", "y")
    per_series = metrics.per_series(
        cv, labels, train_df, season_length=scale_seasonality, levels=levels, holiday_col=holiday
    )
    out: dict[str, dict[str, float]] = {}
    for row in metrics.aggregate(per_series).iter_rows(named=True):
        label = str(row["model"])
        values = {k: float(v) for k, v in row.items() if k not in {"model"} and v is not None}
        values["negative_bound_share"] = negative[label]
        values["points"] = float(actuals.height)
        values["new_series_points"] = float(new_points)
        out[label] = values
    return out


def owa(scores: dict[str, float], naive2: dict[str, float]) -> float:
    """The M4 organisers' OWA of ``scores`` against Naive2's (sMAPE and MASE)."""
    return metrics.owa(scores["smape"], scores["mase"], naive2["smape"], naive2["mase"])
