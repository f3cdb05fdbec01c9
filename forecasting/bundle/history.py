"""A store's history made ready for scoring: one contiguous, gap-filled ``y`` block per series, sorted by
series, and the future dates each series is forecast for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecasting.common.errors import DataError
from forecasting.models.fitted import FloatArray

KEYS = ["store_id", "item_id"]
_STEP_DAYS = {"D": 1, "W": 7}
_SLICE_ROWS = 1 << 20


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
    """Index the series of a canonical frame: one contiguous ``y`` block per series, in date order.

    A frame already sorted by ``store_id, item_id, ds`` (what ``generate`` and the agent's store
    produce) is used as it is, without copying; anything else is sorted first (duplicate dates keep
    the last row). Missing dates inside a series count as zero sales.
    """
    missing = {"store_id", "item_id", "ds", "y"} - set(history.columns)
    if missing:
        raise DataError(f"history lacks columns {sorted(missing)}")
    cols = ["store_id", "item_id", "ds", "y"]
    if "category" in history.columns:
        cols.insert(2, "category")
    frame = history.select(cols)
    if frame.schema["y"] != pl.Float64 or frame["y"].null_count():
        frame = frame.with_columns(pl.col("y").cast(pl.Float64).fill_null(0.0))
    if "category" not in frame.columns:
        frame = frame.with_columns(category=pl.lit("", dtype=pl.Utf8))
    indexed = _index_sorted(frame, freq)
    if indexed is None:
        frame = frame.unique([*KEYS, "ds"], keep="last").sort(*KEYS, "ds")
        indexed = _index_sorted(frame, freq)
    if indexed is None:
        frame = _fill_gaps(frame, freq)
        indexed = _index_sorted(frame, freq)
    if indexed is None:  # pragma: no cover - a sorted, gap-free frame always indexes
        raise DataError("history could not be indexed by series and date")
    return indexed


def _index_sorted(frame: pl.DataFrame, freq: str) -> History | None:
    """The History of ``frame`` when it is sorted by series and date without gaps; None otherwise."""
    if frame.height == 0:
        keys = frame.select(*KEYS, "category", last_ds="ds").with_columns(n=pl.lit(0, pl.Int64))
        return History(keys=keys, y=np.zeros(0), offsets=np.zeros(1, dtype=np.int64))
    starts = _series_starts(frame)
    step = _step_physical(frame.schema["ds"], freq)
    ds = frame["ds"].to_physical().to_numpy()
    boundary = np.zeros(frame.height, dtype=bool)
    boundary[starts] = True
    if not np.all((np.diff(ds) == step) | boundary[1:]):
        return None
    ends = np.append(starts[1:], frame.height)
    keys = frame.select(*KEYS)[starts]
    if keys.height > 1 and not _strictly_increasing(keys):
        return None
    offsets = np.append(starts, frame.height)
    last_rows = ends - 1
    keys = keys.with_columns(
        category=frame["category"][last_rows],
        last_ds=frame["ds"][last_rows],
        n=pl.Series(ends - starts, dtype=pl.Int64),
    )
    y = frame["y"].to_numpy()
    return History(keys=keys, y=y.astype(np.float64, copy=False), offsets=offsets)


def _series_starts(frame: pl.DataFrame) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Row numbers where a new (store_id, item_id) run begins, computed in slices to bound memory."""
    parts = []
    n = frame.height
    changed = (
        (pl.col("store_id") != pl.col("store_id").shift(1))
        | (pl.col("item_id") != pl.col("item_id").shift(1))
    ).fill_null(value=True)
    for a in range(0, n, _SLICE_ROWS):
        lead = 1 if a else 0  # include the previous row so the slice's first row is compared too
        part = frame.slice(a - lead, _SLICE_ROWS + lead).select(KEYS)
        flags = part.select(changed).to_series().slice(lead)
        parts.append(flags.arg_true().to_numpy().astype(np.int64) + a)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _strictly_increasing(keys: pl.DataFrame) -> bool:
    prev = keys.select(pl.all().shift(1)).slice(1)
    cur = keys.slice(1)
    s_cur, s_prev = cur["store_id"], prev["store_id"]
    i_cur, i_prev = cur["item_id"], prev["item_id"]
    ok = (s_cur > s_prev) | ((s_cur == s_prev) & (i_cur > i_prev))
    return bool(ok.all())


def _step_physical(dtype: Any, freq: str) -> int:
    step = _step(freq)
    if dtype == pl.Date:
        return int(step.days)
    if isinstance(dtype, pl.Datetime):
        per_second = {"ns": 1_000_000_000, "us": 1_000_000, "ms": 1_000}[dtype.time_unit or "us"]
        return int(step.total_seconds()) * per_second
    raise DataError(f"history column ds has type {dtype}; expected Date or Datetime")


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
