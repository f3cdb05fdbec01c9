"""Small deterministic frames for the forecasting-engine tests (no real data needed)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl


def two_category_frame(days: int = 84, short_days: int = 10, seed: int = 0) -> pl.DataFrame:
    """Store S1: 4 weekly-seasonal 'fresh' items, 4 intermittent 'spare' items, 1 short 'fresh' item."""
    rng = np.random.default_rng(seed)
    start = date(2024, 1, 1)
    rows: dict[str, list[object]] = {k: [] for k in ("store_id", "item_id", "category", "ds", "y")}
    weekly = np.array([1.0, 0.8, 0.9, 1.0, 1.3, 1.8, 1.6])
    for i in range(9):
        n = short_days if i == 8 else days
        if i < 4 or i == 8:
            level = 20 + 5 * i
            y = level * weekly[np.arange(n) % 7] + rng.normal(0, 1.0, n)
            category = "fresh"
        else:
            y = np.where(rng.random(n) < 0.2, rng.integers(1, 6, n), 0).astype(float)
            category = "spare"
        for d in range(n):
            rows["store_id"].append("S1")
            rows["item_id"].append(f"I{i:02d}")
            rows["category"].append(category)
            rows["ds"].append(start + timedelta(days=d))
            rows["y"].append(float(y[d]))
    return pl.DataFrame(rows).with_columns(pl.col("ds").cast(pl.Date))
