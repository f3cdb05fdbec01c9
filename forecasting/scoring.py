"""The scoring engine: a bundle plus a store's history -> forecasts with intervals for every series.

``score`` reads the bundle's per-series model choice, applies fitted-state models to the fresh history
(no re-estimation), refits the cheap models, and returns one row per series and future step. Series in
the history that the bundle does not know (new items) get the bundle's ``fallback_model``; series the
bundle knows but the history lacks are skipped. The caller verifies the bundle first
(:func:`forecasting.bundle.verify`); scoring only reads it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import structlog

from forecasting.bundle import Manifest, ModelEntry, read_manifest
from forecasting.errors import BundleError, DataError
from forecasting.fitted import (
    SERIES_PAYLOAD,
    FittedSet,
    FloatArray,
    forecast_batch,
    level_columns,
    load_fitted,
    model_state,
)

KEYS = ["store_id", "item_id"]
_STEP_DAYS = {"D": 1, "W": 7}


def output_columns(levels: Sequence[int]) -> list[str]:
    """Columns of a scored frame, in order."""
    return [
        "store_id",
        "item_id",
        "category",
        "ds",
        "forecast",
        *[f"forecast-{c}" for c in level_columns(levels)],
        "model",
    ]


@dataclass
class History:
    """A canonical frame reorganised for scoring: one contiguous ``y`` block per series."""

    keys: pl.DataFrame  # store_id, item_id, category, last_ds, n (one row per series, sorted)
    y: FloatArray
    offsets: np.ndarray[Any, np.dtype[np.int64]]

    def series(self, i: int) -> FloatArray:
        """The history of series ``i`` (a view)."""
        return self.y[self.offsets[i] : self.offsets[i + 1]]


def prepare_history(history: pl.DataFrame, freq: str = "D") -> History:
    """Sort by series and date, fill missing dates inside a series with 0 sales, index the series."""
    missing = {"store_id", "item_id", "ds", "y"} - set(history.columns)
    if missing:
        raise DataError(f"history lacks columns {sorted(missing)}")
    cols = ["store_id", "item_id", "ds", "y"]
    if "category" in history.columns:
        cols.insert(2, "category")
    frame = history.select(cols).with_columns(pl.col("y").cast(pl.Float64).fill_null(0.0))
    if "category" not in frame.columns:
        frame = frame.with_columns(category=pl.lit("", dtype=pl.Utf8))
    frame = frame.sort(*KEYS, "ds")
    keys = frame.group_by(KEYS, maintain_order=True).agg(
        pl.col("category").last(), first_ds=pl.col("ds").first(), last_ds=pl.col("ds").last(), n=pl.len()
    )
    step = _step(freq)
    expected = ((keys["last_ds"] - keys["first_ds"]) / step).cast(pl.Int64) + 1
    if (expected != keys["n"]).any():
        frame = _fill_gaps(frame, freq)
        keys = frame.group_by(KEYS, maintain_order=True).agg(
            pl.col("category").last(), last_ds=pl.col("ds").last(), n=pl.len()
        )
    counts = keys["n"].to_numpy().astype(np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return History(
        keys=keys.select(*KEYS, "category", "last_ds", "n"),
        y=frame["y"].to_numpy().astype(np.float64, copy=False),
        offsets=offsets,
    )


def _step(freq: str) -> Any:
    from datetime import timedelta

    if freq == "H":
        return timedelta(hours=1)
    if freq in _STEP_DAYS:
        return timedelta(days=_STEP_DAYS[freq])
    raise DataError(f"unsupported frequency {freq!r} (D, W or H)")


def _fill_gaps(frame: pl.DataFrame, freq: str) -> pl.DataFrame:
    interval = {"D": "1d", "W": "1w", "H": "1h"}[freq]
    filled = (
        frame.upsample("ds", every=interval, group_by=KEYS, maintain_order=True)
        .with_columns(pl.col("y").fill_null(0.0), pl.col("category").forward_fill().over(KEYS))
        .with_columns(pl.col(KEYS).forward_fill())
    )
    return filled.sort(*KEYS, "ds")


def future_dates(last_ds: pl.Series, h: int, freq: str) -> pl.Series:
    """``h`` future dates after each series' last date, flattened series-major."""
    step = _step(freq)
    dtype = last_ds.dtype
    if dtype == pl.Date:
        base = last_ds.cast(pl.Int32).to_numpy().astype(np.int64)
        inc = int(step.days)
        vals = (base[:, None] + inc * np.arange(1, h + 1)[None, :]).reshape(-1)
        return pl.Series("ds", vals.astype(np.int32)).cast(pl.Date)
    if isinstance(dtype, pl.Datetime):
        per_second = {"ns": 1_000_000_000, "us": 1_000_000, "ms": 1_000}[dtype.time_unit or "us"]
        base = last_ds.cast(pl.Int64).to_numpy()
        inc = int(step.total_seconds()) * per_second
        vals = (base[:, None] + inc * np.arange(1, h + 1)[None, :]).reshape(-1)
        return pl.Series("ds", vals).cast(dtype)
    raise DataError(f"history column ds has type {dtype}; expected Date or Datetime")


def score(
    bundle_dir: Path,
    history: pl.DataFrame,
    *,
    horizon: int | None = None,
    levels: Sequence[int] | None = None,
    out: Path | None = None,
    threads: int = 2,
) -> pl.DataFrame:
    """Forecast every series of ``history`` with the (already verified) bundle at ``bundle_dir``.

    Returns ``store_id, item_id, category, ds, forecast, forecast-lo-80, forecast-hi-80, ...,
    model`` sorted by series and date; also written to ``out`` (Parquet or CSV by extension).
    ``threads`` bounds the worker processes/threads used.
    """
    started = time.perf_counter()
    log = structlog.get_logger().bind(logger=__name__)
    manifest = read_manifest(bundle_dir)
    h = horizon or manifest.horizon
    lv = sorted(levels if levels is not None else manifest.levels)
    hist = prepare_history(history, manifest.freq)
    fitted = _load_models(bundle_dir, manifest)
    labels = _assign_labels(hist, fitted, manifest)
    n = hist.keys.height
    cols = ["mean", *level_columns(lv)]
    result = {c: np.full((n, h), np.nan) for c in cols}
    for label in sorted(set(labels.to_list())):
        idx = np.flatnonzero((labels == label).to_numpy())
        entry, states = _entry_and_states(label, fitted, manifest, hist, idx)
        ys = [hist.series(int(i)) for i in idx]
        res = forecast_batch(entry, manifest.season_length, ys, h, lv, states)
        for c in cols:
            result[c][idx] = res[c]
    frame = _assemble(hist, labels, result, h, lv, manifest.freq)
    if out is not None:
        write_forecasts(frame, out)
    log.info(
        "forecast_scored",
        model_name=manifest.model_name,
        model_version=manifest.version,
        n_series=n,
        horizon=h,
        threads=threads,
        duration_seconds=round(time.perf_counter() - started, 3),
    )
    return frame


def _load_models(bundle_dir: Path, manifest: Manifest) -> FittedSet:
    if not any(f.path == SERIES_PAYLOAD for f in manifest.files):
        raise BundleError(f"{bundle_dir}: bundle has no {SERIES_PAYLOAD} (per-series model choice)")
    return load_fitted(bundle_dir, manifest)


def _assign_labels(hist: History, fitted: FittedSet, manifest: Manifest) -> pl.Series:
    joined = hist.keys.select(KEYS).join(
        fitted.series.select(*KEYS, "model"), on=KEYS, how="left", maintain_order="left"
    )
    return joined["model"].fill_null(manifest.fallback_model)


def _entry_and_states(
    label: str, fitted: FittedSet, manifest: Manifest, hist: History, idx: np.ndarray[Any, Any]
) -> tuple[ModelEntry, pl.DataFrame | None]:
    entry = manifest.models.get(label)
    if entry is None:
        if label != manifest.fallback_model or model_state(label) != "refit-at-edge":
            raise BundleError(f"series assigned to model {label!r}, which the manifest does not describe")
        entry = ModelEntry(state="refit-at-edge", family=label)
    if entry.state != "fitted-state":
        return entry, None
    keys = hist.keys[idx].select(KEYS)
    table = fitted.states[label].with_columns(_present=pl.lit(value=True))
    states = keys.join(table, on=KEYS, how="left", maintain_order="left")
    if states["_present"].null_count():
        raise BundleError(f"model {label!r}: fitted state missing for some series")
    return entry, states.drop(*KEYS, "_present")


def _assemble(
    hist: History, labels: pl.Series, result: dict[str, FloatArray], h: int, levels: Sequence[int], freq: str
) -> pl.DataFrame:
    n = hist.keys.height
    rep = np.repeat(np.arange(n), h)
    keys = hist.keys.select(*KEYS, "category")[rep]
    data: dict[str, Any] = {
        "ds": future_dates(hist.keys["last_ds"], h, freq),
        "forecast": result["mean"].reshape(-1),
    }
    for c in level_columns(levels):
        data[f"forecast-{c}"] = result[c].reshape(-1)
    frame = keys.with_columns(pl.DataFrame(data), model=labels[rep])
    return frame.select(output_columns(levels))


def write_forecasts(frame: pl.DataFrame, out: Path) -> Path:
    """Write forecasts to Parquet or CSV (by extension), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".csv":
        frame.write_csv(tmp)
    elif out.suffix.lower() in {".parquet", ".pq"}:
        frame.write_parquet(tmp, compression="zstd")
    else:
        raise DataError(f"{out}: unknown output format (use .parquet or .csv)")
    tmp.replace(out)
    return out
