"""Synthetic data: generating a 20,000-series x 730-day store and writing it to Parquet.

Baselines, measured in the same run on the same shape:
- ``generate_plain``: the cheapest frame with the same columns, types and row order (ids gathered the same
  way, i.i.d. Poisson sales with the same mean, random flags): what any generator of this size must pay.
  ``generate`` / ``generate_plain`` is the price of the realism (seasonality, holidays, promotions, trend,
  intermittent items, returns).
- ``write_parquet_pyarrow``: ``pyarrow.parquet.write_table`` of the same frame (converted with ``to_arrow``),
  not atomic, pyarrow defaults: the obvious way to write it. ``write_parquet`` / ``write_parquet_pyarrow``
  below 1 means our atomic, fsync'ed writer costs less than the obvious one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from forecasting.data.frames import write_frame
from forecasting.data.synthetic import generate

# stores, items, days
SHAPES = {"full": (20, 1000, 730), "tiny": (2, 20, 60)}
ROUNDS = {"full": 3, "tiny": 1}


def plain_frame(stores: int, items: int, days: int, seed: int = 0) -> pl.DataFrame:
    """Same columns, types and order as ``generate``, with i.i.d. values: the floor for a frame this size."""
    rng = np.random.default_rng(seed)
    n_rows = stores * items * days
    store_ids = pl.Series([f"S{s:03d}" for s in range(1, stores + 1)])
    item_ids = pl.Series([f"I{i:05d}" for i in range(1, items + 1)])
    item_rows = np.repeat(np.arange(items, dtype=np.uint32), days)
    categories = pl.Series(["produce", "dairy", "bakery", "frozen", "pantry", "household"])
    return pl.DataFrame(
        {
            "store_id": store_ids.gather(np.repeat(np.arange(stores, dtype=np.uint32), items * days)),
            "item_id": item_ids.gather(np.tile(item_rows, stores)),
            "category": categories.gather(np.tile(item_rows % len(categories), stores)),
            "ds": pl.Series(np.tile(np.arange(19358, 19358 + days, dtype=np.int32), stores * items)).cast(
                pl.Date
            ),
            "y": rng.poisson(6.8, n_rows).astype(np.float64),
            "is_holiday": rng.random(n_rows) < 0.02,
            "on_promo": rng.random(n_rows) < 0.05,
        }
    )


@pytest.fixture(scope="module")
def frame(bench_size: str) -> pl.DataFrame:
    """The generated store the write benchmarks write."""
    return generate(*SHAPES[bench_size])


def _rows(bench_size: str) -> int:
    stores, items, days = SHAPES[bench_size]
    return stores * items * days


def test_generate(benchmark: Any, figures: Any, bench_size: str) -> None:
    """generate(): the realistic store, in memory."""
    figures.timing("generate", baseline="generate_plain", target="ratio <= 3")
    result = benchmark.pedantic(
        figures.with_cpu(generate), args=SHAPES[bench_size], rounds=ROUNDS[bench_size]
    )
    assert result.height == _rows(bench_size)
    figures.value("generate_cpu", figures.cpu_seconds(), "cpu-s", baseline="generate_plain_cpu")
    figures.value("generate_rows_per_second", _rows(bench_size) / figures.seconds(), "rows/s")


def test_generate_plain(benchmark: Any, figures: Any, bench_size: str) -> None:
    """Baseline: a plain random frame of the same shape and types."""
    figures.timing("generate_plain")
    result = benchmark.pedantic(
        figures.with_cpu(plain_frame), args=SHAPES[bench_size], rounds=ROUNDS[bench_size]
    )
    assert result.height == _rows(bench_size)
    figures.value("generate_plain_cpu", figures.cpu_seconds(), "cpu-s")


def test_write_parquet(
    benchmark: Any, figures: Any, bench_size: str, frame: pl.DataFrame, tmp_path: Path
) -> None:
    """write_frame(): atomic Parquet write of the generated store."""
    out = tmp_path / "sales.parquet"
    figures.timing("write_parquet", baseline="write_parquet_pyarrow", target="ratio <= 1.5")
    benchmark.pedantic(figures.with_cpu(write_frame), args=(frame, out), rounds=ROUNDS[bench_size])
    figures.value("write_parquet_cpu", figures.cpu_seconds(), "cpu-s", baseline="write_parquet_pyarrow_cpu")
    figures.value("parquet_size", out.stat().st_size / 2**20, "MiB", baseline="parquet_size_pyarrow")


def test_write_parquet_pyarrow(
    benchmark: Any, figures: Any, bench_size: str, frame: pl.DataFrame, tmp_path: Path
) -> None:
    """Baseline: pyarrow's write_table of the same frame."""
    out = tmp_path / "sales.parquet"
    figures.timing("write_parquet_pyarrow")
    write = figures.with_cpu(lambda: pq.write_table(frame.to_arrow(), out))
    benchmark.pedantic(write, rounds=ROUNDS[bench_size])
    figures.value("write_parquet_pyarrow_cpu", figures.cpu_seconds(), "cpu-s")
    figures.value("parquet_size_pyarrow", out.stat().st_size / 2**20, "MiB")


def test_generate_and_write(benchmark: Any, figures: Any, bench_size: str, tmp_path: Path) -> None:
    """What `shelfcast data generate` does: generate and write the store (target: seconds, not minutes)."""
    out = tmp_path / "sales.parquet"
    figures.timing("generate_and_write", target="value <= 10")
    both = figures.with_cpu(lambda: write_frame(generate(*SHAPES[bench_size]), out))
    benchmark.pedantic(both, rounds=ROUNDS[bench_size])
    figures.value("generate_and_write_cpu", figures.cpu_seconds(), "cpu-s", target="value <= 6")
