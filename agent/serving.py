"""The served scoring run: ``serving.json`` (which run the inventory API serves) and the run's serving
index (the arrays the API memory-maps, written by the scoring child)."""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path

import msgspec

from agent.paths import StatePaths, atomic_write_bytes


class ServingPointer(msgspec.Struct, frozen=True, kw_only=True):
    """``serving.json``: the scoring run the inventory API serves."""

    run_id: str
    model_name: str
    version: int
    path: str
    scored_at: datetime
    n_series: int
    n_rows: int
    history_end: date | None = None  # the last day of sales the run forecast from (None: older runs)


def read_serving(paths: StatePaths) -> ServingPointer | None:
    try:
        return msgspec.json.decode(paths.serving.read_bytes(), type=ServingPointer)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


VALUES_FILE = "serving-values.npy"
DAYS_FILE = "serving-days.npy"
ITEMS_FILE = "serving-items.json"


class ServingItems(msgspec.Struct, frozen=True):
    """``serving-items.json``: the value columns and, per item in row order, its constants and row count."""

    value_columns: list[str]
    items: list[tuple[str, str, str, str | None, int]]


def write_serving_index(run_dir: Path, forecasts: Path) -> None:
    """Write the serving index of a scoring run (done by the scoring child, which has Polars loaded).

    ``serving-values.npy`` (float64, one row per forecast row, one column per value column, rows sorted
    by item and day), ``serving-days.npy`` (int32 days since 1970-01-01) and ``serving-items.json``.
    The agent memory-maps the arrays: start-up reads nothing, idle memory holds only what was served.
    """
    import numpy as np
    import polars as pl

    frame = pl.read_parquet(forecasts).sort("item_id", "ds")
    value_columns = [c for c in frame.columns if c == "forecast" or c.startswith("forecast-")]
    has_model = "model" in frame.columns
    heads = frame.group_by("item_id", maintain_order=True).agg(
        pl.col("store_id").first().cast(pl.Utf8),
        (pl.col("category").first().cast(pl.Utf8) if "category" in frame.columns else pl.lit("")).alias(
            "category"
        ),
        (pl.col("model").first().cast(pl.Utf8) if has_model else pl.lit(None, dtype=pl.Utf8)).alias("model"),
        pl.len().alias("n"),
    )
    items = ServingItems(value_columns=value_columns, items=[tuple(row) for row in heads.iter_rows()])
    values = np.ascontiguousarray(frame.select(value_columns).cast(pl.Float64).to_numpy())
    days = frame["ds"].cast(pl.Date).to_physical().cast(pl.Int32).to_numpy()
    for name, array in ((VALUES_FILE, values), (DAYS_FILE, days)):
        tmp = run_dir / f".{name}.tmp"
        with tmp.open("wb") as fh:
            np.save(fh, array, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(run_dir / name)
    atomic_write_bytes(run_dir / ITEMS_FILE, msgspec.json.encode(items))
