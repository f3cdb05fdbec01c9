"""Rolling-origin backtests of the candidate models (statsforecast ``cross_validation`` on Polars frames).

Series long enough for every candidate and every window are backtested; the rest are listed as short and
get the fallback model at selection. The result keeps the raw cross-validation frame (Nixtla layout:
``unique_id, ds, cutoff, y`` + one column per model and ``<model>-lo-80`` ...) and per-series metrics.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecasting.common.config import TrainSection
from forecasting.common.errors import DataError
from forecasting.common.logs import get_logger
from forecasting.models.families import (
    GLOBAL_MODELS,
    build_models,
    interval_settings,
    min_length,
    model_families,
)
from forecasting.training import metrics

log = get_logger(__name__)
ID = "unique_id"
SERIES_KEYS = ["store_id", "item_id", "category"]
SF_FREQ = {"D": "1d", "W": "1w", "H": "1h"}


@dataclass(frozen=True)
class BacktestResult:
    """Cross-validation forecasts, per-series metrics and which series were too short to backtest."""

    cv: pl.DataFrame
    models: list[str]
    series_metrics: pl.DataFrame
    series: pl.DataFrame
    train: pl.DataFrame
    short_series: list[str]
    horizon: int
    windows: int
    step: int
    duration_seconds: float


def with_unique_id(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds ``unique_id = store_id/item_id`` (statsforecast's series key) as the first column."""
    uid = pl.concat_str([pl.col("store_id"), pl.col("item_id")], separator="/").alias(ID)
    return frame.select(uid, pl.all())


def series_table(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per series: ``unique_id, store_id, item_id, category, n, last_ds``."""
    return (
        with_unique_id(frame)
        .group_by(ID, maintain_order=True)
        .agg(
            pl.col("store_id").first(),
            pl.col("item_id").first(),
            pl.col("category").first(),
            pl.len().alias("n"),
            pl.col("ds").max().alias("last_ds"),
        )
        .sort(ID)
    )


def sf_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The statsforecast input ``unique_id, ds, y`` sorted by series and date."""
    return with_unique_id(frame).select(ID, "ds", "y").sort(ID, "ds")


def backtest_length(cfg: TrainSection, horizon: int, windows: int, step: int, models: list[str]) -> int:
    """Rows a series needs to take part in every window of the backtest."""
    local = [m for m in models if m not in GLOBAL_MODELS]
    return min_length(local, cfg, horizon) + horizon + step * (windows - 1)


def run_backtest(
    frame: pl.DataFrame,
    cfg: TrainSection,
    freq: str,
    *,
    horizon: int | None = None,
    windows: int | None = None,
    step: int | None = None,
    models: list[str] | None = None,
    intervals: bool = True,
) -> BacktestResult:
    """Backtest ``models`` (default: ``cfg.models``) over ``windows`` rolling origins on ``frame``."""
    started = time.perf_counter()
    h = horizon or cfg.horizon
    n_windows = windows or cfg.windows
    step_size = step or cfg.step or h
    names = list(models or cfg.models)
    series = series_table(frame)
    need = backtest_length(cfg, h, n_windows, step_size, names)
    eligible = series.filter(pl.col("n") >= need)
    short = series.filter(pl.col("n") < need)[ID].to_list()
    if eligible.height == 0:
        raise DataError(
            f"no series has the {need} periods the backtest needs (horizon {h}, {n_windows} windows)"
        )
    data = sf_frame(frame).join(eligible.select(ID), on=ID, how="semi")
    levels = list(cfg.levels) if intervals else []
    local = [m for m in names if m not in GLOBAL_MODELS]
    log.info(
        "backtest_started", series=eligible.height, short_series=len(short), models=names, windows=n_windows
    )
    cv: pl.DataFrame | None = None
    if local:
        cv = cross_validation(data, local, cfg, freq, h=h, n_windows=n_windows, step=step_size, levels=levels)
    if "LightGBM" in names:
        from forecasting.models import gbm

        gcv = gbm.cross_validation(frame, eligible[ID], cfg, freq, h=h, n_windows=n_windows, step=step_size)
        cv = gcv if cv is None else cv.join(gcv.drop("y"), on=[ID, "ds", "cutoff"], how="left")
    assert cv is not None
    cv = calibrate_backtest(cv, data, names, cfg, frame)
    cv = cv.join(series.select(ID, *SERIES_KEYS), on=ID, how="left")
    extra = [c for c in ("is_holiday",) if c in frame.columns]
    if extra:
        cv = cv.join(with_unique_id(frame).select(ID, "ds", *extra), on=[ID, "ds"], how="left")
    first_cutoff = cv.group_by(ID).agg(pl.col("cutoff").min().alias("_c"))
    train = data.join(first_cutoff, on=ID).filter(pl.col("ds") <= pl.col("_c")).drop("_c")
    sm = metrics.per_series(
        cv,
        names,
        train,
        season_length=cfg.scale_seasonality,
        levels=levels,
        holiday_col="is_holiday" if extra else None,
    )
    sm = sm.join(series.select(ID, *SERIES_KEYS), on=ID, how="left")
    duration = time.perf_counter() - started
    log.info(
        "backtest_finished",
        series=eligible.height,
        models=len(names),
        windows=n_windows,
        duration_seconds=round(duration, 3),
    )
    return BacktestResult(
        cv=cv,
        models=names,
        series_metrics=sm,
        series=series,
        train=train,
        short_series=short,
        horizon=h,
        windows=n_windows,
        step=step_size,
        duration_seconds=duration,
    )


def cross_validation(
    data: pl.DataFrame,
    names: list[str],
    cfg: TrainSection,
    freq: str,
    *,
    h: int,
    n_windows: int,
    step: int,
    levels: list[int],
) -> pl.DataFrame:
    """statsforecast ``cross_validation`` on the local or Dask engine; rows sorted by series, cutoff, ds."""
    models = build_models(names, cfg, h, intervals=bool(levels))
    if cfg.engine == "dask":
        from forecasting.training import distributed

        out = distributed.cross_validation(
            data, models, freq, h=h, n_windows=n_windows, step=step, levels=levels, cfg=cfg
        )
    else:
        sf = _statsforecast(models, freq, cfg)
        out = sf.cross_validation(
            df=data, h=h, n_windows=n_windows, step_size=step, level=levels or None, refit=True
        )
    return normalise_output(out, names, levels, keys=[ID, "ds", "cutoff", "y"])


def _statsforecast(models: list[Any], freq: str, cfg: TrainSection) -> Any:
    from statsforecast import StatsForecast

    return StatsForecast(models=models, freq=SF_FREQ[freq], n_jobs=cfg.n_jobs, verbose=sys.stderr.isatty())


def normalise_output(out: Any, names: list[str], levels: list[int], keys: list[str]) -> pl.DataFrame:
    """Polars frame with a stable column order (keys, then each model with its intervals) and row order."""
    df = out if isinstance(out, pl.DataFrame) else pl.from_pandas(out.reset_index(drop=False))
    cols = [k for k in keys if k in df.columns]
    for name in names:
        cols.append(name)
        for level in sorted(levels):
            for side in ("lo", "hi"):
                col = f"{name}-{side}-{level}"
                if col in df.columns:
                    cols.append(col)
    sort_keys = [k for k in (ID, "cutoff", "ds") if k in df.columns]
    return df.select(cols).with_columns(pl.col(ID).cast(pl.Utf8)).sort(sort_keys)


def calibrate_backtest(cv: Any, data: Any, names: list[str], cfg: TrainSection, frame: Any) -> Any:
    """Cross-validation forecasts with the edge's intervals, floored at 0 for unit sales.

    ``cv``: Nixtla layout (``unique_id, ds, cutoff, y`` and per model its forecast and bounds); ``data``:
    the ``unique_id, ds, y`` histories. For each cutoff, the interval columns of the local candidates
    whose intervals are calibrated (those without native intervals, and the cheap native ones of
    ``RECALIBRATED_NATIVE``) are recomputed from the history up to the cutoff with
    :func:`forecasting.models.fitted_forecast.forecast_batch`, the very function the edge scores with (a
    fitted-state model is fitted on that history first); then, when :func:`interval_settings` says so,
    every forecast and bound below 0 becomes 0.
    """
    import polars as pl

    from forecasting.models.fitted import CONFORMAL_ONLY, RECALIBRATED_NATIVE, model_state
    from forecasting.models.fitted_forecast import fit_states, forecast_batch
    from forecasting.models.kernels import pad_right_aligned

    settings = interval_settings(cfg, frame)
    levels = sorted({int(c.rsplit("-", 1)[1]) for c in cv.columns if "-lo-" in c})
    families, params = model_families(cfg)
    recalibrate = (
        [
            name
            for name in names
            if settings.method == "calibrated"
            and families.get(name, name) in CONFORMAL_ONLY | RECALIBRATED_NATIVE
            and f"{name}-lo-{levels[0]}" in cv.columns
        ]
        if levels
        else []
    )
    if recalibrate:
        from forecasting.bundle.format import ModelEntry

        origins = cv.select("unique_id", "cutoff").unique().sort("unique_id", "cutoff").with_row_index("_o")
        hist = data.join(origins, on="unique_id").filter(pl.col("ds") <= pl.col("cutoff")).sort("_o", "ds")
        counts = hist.group_by("_o", maintain_order=True).len()["len"].to_numpy()
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        y, lengths = pad_right_aligned(
            hist["y"].to_numpy().astype(np.float64), offsets, np.arange(len(counts))
        )
        h = int(cv.group_by("unique_id", "cutoff").len()["len"].max())
        rows = cv.join(origins, on=["unique_id", "cutoff"], maintain_order="left").with_columns(
            _step=pl.col("ds").rank("ordinal").over("_o").cast(pl.Int64) - 1
        )
        o_idx, s_idx = rows["_o"].to_numpy(), rows["_step"].to_numpy()
        new: dict[str, Any] = {}
        for name in recalibrate:
            family = families.get(name, name)
            entry = ModelEntry(state=model_state(family), family=family, params=params.get(name, {}))
            fitted = entry.state == "fitted-state"
            states = fit_states(entry, cfg.season_length, y, lengths) if fitted else None
            out = forecast_batch(entry, cfg.season_length, y, lengths, h, levels, states, settings)
            for lv in levels:
                for side in ("lo", "hi"):
                    new[f"{name}-{side}-{lv}"] = out[f"{side}-{lv}"][o_idx, s_idx]
        cv = rows.with_columns(pl.Series(k, v) for k, v in new.items()).drop("_o", "_step")
    if settings.nonnegative:
        value_cols = [
            c
            for c in cv.columns
            if c in names or any(c.startswith(f"{n}-lo-") or c.startswith(f"{n}-hi-") for n in names)
        ]
        cv = cv.with_columns(
            pl.when(pl.col(c) < 0).then(0.0).otherwise(pl.col(c)).alias(c) for c in value_cols
        )
    return cv
