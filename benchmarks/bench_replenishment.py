"""Order proposals at the store: computing them for a whole store, exporting them, one item at a time.

- ``proposals_seconds``: :func:`forecasting.replenishment.proposals.proposals` for every item of a
  20,000-item store (28 days of forecasts with 80/95 % bounds; half the items on a cycle service level,
  half on a fill rate; one open order each), what the scoring process runs after each scoring and
  inventory post (target <= 5 s);
- ``export_seconds``: ``GET /v1/replenishment?format=parquet`` of the whole store from a real agent
  process, parsed back (target <= 1 s);
- ``item_rps``: ``GET /v1/replenishment/{item_id}`` JSON at 32 connections, random items (target
  >= 2,000 requests/s), with the load generator of the agent suite.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from benchmarks.bench_agent import SHAPES, Agent, _load, _prepare_state
from forecasting.replenishment.policy import CYCLE, FILL_RATE
from forecasting.replenishment.proposals import proposals

LOAD_SECONDS = {"full": 4, "tiny": 1}
RUN_DIR = "runs/20260101T000000Z-v1-bench"


def _inputs(forecasts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Error structure (as the scoring child writes it for these families), positions and open orders."""
    keys = forecasts.select("store_id", "item_id", "model").unique("item_id", keep="first").sort("item_id")
    n = keys.height
    rng = np.random.default_rng(3)
    seasonal = (keys["model"] == "SeasonalNaive").to_numpy()
    structure = keys.select(
        "store_id",
        "item_id",
        alpha=pl.Series(np.where(seasonal, 0.0, 0.2)),
        season=pl.Series(np.where(seasonal, 7, 0), dtype=pl.Int32),
        count=pl.lit(value=True),
        dispersion=pl.Series(rng.uniform(1.0, 3.0, n)),
        count_law=pl.lit(value=False),
    )
    positions = keys.select(
        "item_id",
        on_hand=pl.Series(rng.integers(0, 200, n).astype(np.float64)),
        backorders=pl.lit(0.0),
        lead_time_days=pl.Series(rng.integers(2, 4, n), dtype=pl.Int32),
        review_period_days=pl.lit(3, dtype=pl.Int32),
        service_metric=pl.Series(np.where(np.arange(n) % 2 == 0, CYCLE, FILL_RATE)),
        target_service_level=pl.lit(0.95),
        pack_size=pl.Series(np.array([1.0, 6.0, 12.0])[np.arange(n) % 3]),
        min_order=pl.lit(0.0),
        shelf_capacity=pl.lit(None, dtype=pl.Float64),
    )
    first = forecasts["ds"].min()
    orders = keys.select("item_id", due_date=pl.lit(first + timedelta(days=1)), quantity=pl.lit(12.0))
    return structure, positions, orders


def _prepare_with_proposals(state: Path, items: int, horizon: int) -> None:
    """The agent suite's whole-store state, plus the proposals of its served run."""
    _prepare_state(state, items, horizon)
    run_dir = state / RUN_DIR
    forecasts = pl.read_parquet(run_dir / "forecasts.parquet").with_columns(
        model_name=pl.lit("demand"), model_version=pl.lit(1, dtype=pl.Int32)
    )
    proposals(forecasts, *_inputs(forecasts)).write_parquet(run_dir / "proposals.parquet")


@pytest.fixture(scope="module")
def agent(bench_size: str) -> Iterator[Agent]:
    """One agent process serving a whole store's forecasts and proposals."""
    items, horizon = SHAPES[bench_size]
    with tempfile.TemporaryDirectory(prefix="bench-replenishment-") as tmp:
        running = Agent(Path(tmp), items, horizon, prepare=_prepare_with_proposals)
        try:
            yield running
        finally:
            running.stop()


def test_proposals_for_a_whole_store(figures: Any, benchmark: Any, bench_size: str, tmp_path: Path) -> None:
    """Proposals of every item from the scored frame, its error structure and the posted inventory."""
    items, horizon = SHAPES[bench_size]
    _prepare_state(tmp_path / "state", items, horizon)
    forecasts = pl.read_parquet(tmp_path / "state" / RUN_DIR / "forecasts.parquet").with_columns(
        model_name=pl.lit("demand"), model_version=pl.lit(1, dtype=pl.Int32)
    )
    inputs = _inputs(forecasts)
    figures.timing("proposals_seconds", target="value <= 5")
    result = benchmark.pedantic(proposals, args=(forecasts, *inputs), rounds=3, iterations=1)
    assert result.height == items


def test_whole_store_export(agent: Agent, figures: Any, benchmark: Any, bench_size: str) -> None:
    """GET /v1/replenishment?format=parquet of every item, parsed back."""
    items, _horizon = SHAPES[bench_size]
    figures.timing("export_seconds", target="value <= 1")
    client = httpx.Client(timeout=60)

    def export() -> int:
        response = client.get(f"{agent.url}/v1/replenishment", params={"format": "parquet"})
        response.raise_for_status()
        import io

        return pl.read_parquet(io.BytesIO(response.content)).height

    rows = benchmark.pedantic(export, rounds=3, iterations=1, warmup_rounds=1)
    client.close()
    assert rows == items


def test_item_throughput(agent: Agent, figures: Any, benchmark: Any, bench_size: str) -> None:
    """GET /v1/replenishment/{item_id} JSON at 32 connections, random items."""
    items, _horizon = SHAPES[bench_size]
    figures.timing(None)
    _load(agent.url, 1, items, "/v1/replenishment/")  # warm-up
    result: list[tuple[float, float]] = []
    benchmark.pedantic(
        lambda: result.append(_load(agent.url, LOAD_SECONDS[bench_size], items, "/v1/replenishment/")),
        rounds=1,
        iterations=1,
    )
    figures.value("item_rps", result[0][0], "req/s", target="value >= 2000")
    figures.value("item_p99", result[0][1], "ms")
