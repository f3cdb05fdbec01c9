"""The agent measures accuracy (served and shadow) and drift once actuals arrive, and queues each once."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest

from agent.monitoring import measure
from agent.paths import StatePaths
from agent.store import LocalStore
from forecasting.bundle.format import Manifest, write_bundle
from forecasting.bundle.signing import generate_key_files
from forecasting.common.contracts import AccuracyReport, ActualsBatch, DriftReport
from forecasting.monitoring.drift import reference_summary

STORE = "1"


def _walmart_store(shared_data: Path) -> pl.DataFrame:
    from forecasting.data.loading import read_text_table

    raw = read_text_table(shared_data / "walmart" / "train.csv.gz")
    return raw.filter(pl.col("Store") == STORE).select(
        pl.col("Store").alias("store_id"),
        pl.col("Dept").alias("item_id"),
        pl.col("Dept").alias("category"),
        pl.col("Date").str.to_date().alias("ds"),
        pl.col("Weekly_Sales").cast(pl.Float64).alias("y"),
    )


def _seasonal_naive(data: pl.DataFrame, cutoff: date, horizon: int) -> pl.DataFrame:
    """Last year's same week as the forecast, +-20 % / 40 % intervals (a stand-in for a scoring run)."""
    future = [cutoff + timedelta(weeks=h) for h in range(1, horizon + 1)]
    keys = data.select("store_id", "item_id", "category").unique()
    grid = keys.join(pl.DataFrame({"ds": future}), how="cross")
    last_year = data.select("store_id", "item_id", (pl.col("ds") + timedelta(days=364)).alias("ds"), "y")
    f = grid.join(last_year, on=["store_id", "item_id", "ds"], how="inner").rename({"y": "forecast"})
    return f.with_columns(
        (pl.col("forecast") * 0.8).alias("forecast-lo-80"),
        (pl.col("forecast") * 1.2).alias("forecast-hi-80"),
        (pl.col("forecast") * 0.6).alias("forecast-lo-95"),
        (pl.col("forecast") * 1.4).alias("forecast-hi-95"),
        pl.lit("SeasonalNaive").alias("model"),
    ).sort("store_id", "item_id", "ds")


def _bundle(paths: StatePaths, key: Path, version: int, history: pl.DataFrame) -> None:
    manifest = Manifest(
        model_name="demand",
        version=version,
        created_at=datetime.now(UTC),
        freq="W",
        horizon=13,
        season_length=52,
        metrics={c: {"wape": 0.1} for c in history["category"].unique().to_list()},
        reference=reference_summary(history),
    )
    series = (
        history.select("store_id", "item_id", "category")
        .unique()
        .with_columns(pl.lit("SeasonalNaive").alias("model"))
    )
    buf = io.BytesIO()
    series.write_parquet(buf)
    write_bundle(paths.version_dir("demand", version), manifest, {"series.parquet": buf.getvalue()}, key)


def _run(paths: StatePaths, store: LocalStore, version: int, forecasts: pl.DataFrame, run_id: str) -> None:
    run_dir = paths.runs / run_id
    run_dir.mkdir(parents=True)
    forecasts.write_parquet(run_dir / "forecasts.parquet")
    now = datetime.now(UTC)
    store.record_run(
        {"run_id": run_id, "model_name": "demand", "version": version, "trigger": "test", "started_at": now,
         "finished_at": now, "n_series": 1, "n_rows": forecasts.height, "history_rows": 0,
         "path": str((run_dir / "forecasts.parquet").relative_to(paths.root))}
    )  # fmt: skip


def _queued(store: LocalStore) -> list[tuple[str, bytes, str]]:
    items = store.outbox_batch(1000)
    for item in items:
        store.outbox_done(item.seq)
    return [(item.path, item.body, item.idempotency_key) for item in items]


def test_agent_reports_accuracy_and_drift_once_per_new_actuals_on_walmart_weeks(
    tmp_path: Path, shared_data: Path
) -> None:
    """Accuracy of served v3 and shadow v4 on real weeks matches NumPy WAPE; nothing is reported twice."""
    data = _walmart_store(shared_data)
    weeks = sorted(data["ds"].unique().to_list())
    cutoff = weeks[-14]
    history = data.filter(pl.col("ds") <= cutoff)
    paths = StatePaths(tmp_path / "state")
    paths.ensure()
    key, _, _ = generate_key_files(tmp_path / "signing.key")
    store = LocalStore(paths.database)
    try:
        store.append_sales(history, "history")
        _bundle(paths, key, 3, history)
        _bundle(paths, key, 4, history)
        served = _seasonal_naive(data, cutoff, 13)
        shadow = served.with_columns(pl.col("forecast") * 1.1)
        _run(paths, store, 3, served, "run-v3")
        _run(paths, store, 4, shadow, "run-v4")

        first = data.filter(pl.col("ds").is_between(weeks[-13], weeks[-10]))  # 4 new weeks of actuals
        store.append_sales(first, "week-batch-1")
        outcome = measure(paths, store, store_id=STORE, active=("demand", 3), outbox_max_rows=10_000)
        assert (outcome.accuracy_reports, outcome.drift_reports) == (2, 1)
        queued = _queued(store)
        pushed = [msgspec.json.decode(b, type=ActualsBatch) for p, b, _ in queued if p == "/v1/actuals"]
        assert sum(len(b.rows) for b in pushed) == history.height + first.height  # all history, in chunks
        assert len({b.batch_id for b in pushed}) == len(pushed) > 1
        reports = {
            key: msgspec.json.decode(body, type=AccuracyReport)
            for path, body, key in queued
            if path == "/v1/accuracy"
        }
        by_role = {r.role: r for r in reports.values()}
        assert set(by_role) == {"served", "shadow"}
        assert (by_role["served"].version, by_role["shadow"].version) == (3, 4)
        for role, forecasts in (("served", served), ("shadow", shadow)):
            report = by_role[role]
            assert (report.period_start, report.period_end) == (weeks[-13], weeks[-10])
            joined = forecasts.join(first, on=["store_id", "item_id", "category", "ds"])
            for row in report.rows:
                first_week = pl.col("ds") == weeks[-13]
                in_bucket = first_week if row.horizon_bucket == "1" else ~first_week
                part = joined.filter((pl.col("category") == row.category) & in_bucket)
                y, f = part["y"].to_numpy(), part["forecast"].to_numpy()
                assert row.n == len(y)
                if np.abs(y).sum() > 0:
                    assert row.wape == pytest.approx(np.abs(f - y).sum() / np.abs(y).sum(), rel=1e-9)
                assert row.backtest_wape == 0.1
        drift = next(msgspec.json.decode(b, type=DriftReport) for p, b, _ in queued if p == "/v1/drift")
        assert drift.period_end == weeks[-10]
        assert drift.unknown_item_share == 0.0
        comparisons = [c.comparison for c in drift.categories]
        assert comparisons.count("seasonal") > 0.8 * len(comparisons)  # a year of history: seasonal
        assert set(comparisons) <= {"seasonal", "reference"}  # short departments: the bundle's reference

        kept = {p.stem for p in (paths.root / "monitoring" / "accuracy").glob("*.json")}
        assert kept == set(reports)  # also kept at the store
        again = measure(paths, store, store_id=STORE, active=("demand", 3), outbox_max_rows=10_000)
        assert (again.accuracy_reports, again.drift_reports) == (0, 0)
        assert _queued(store) == []

        store.append_sales(data.filter(pl.col("ds").is_between(weeks[-9], weeks[-8])), "week-batch-2")
        later = measure(paths, store, store_id=STORE, active=("demand", 3), outbox_max_rows=10_000)
        assert (later.accuracy_reports, later.drift_reports) == (2, 1)  # a week later: drift again
        assert later.actuals_batches == 1  # the 2 new weeks, for the central dataset
        for path, body, _ in _queued(store):
            if path == "/v1/actuals":
                batch = msgspec.json.decode(body, type=ActualsBatch)
                assert {r.ds for r in batch.rows} == {weeks[-9], weeks[-8]}
                continue
            if path == "/v1/drift":
                assert msgspec.json.decode(body, type=DriftReport).period_end == weeks[-8]
                continue
            report = msgspec.json.decode(body, type=AccuracyReport)
            assert (report.period_start, report.period_end) == (weeks[-9], weeks[-8])
            assert {r.horizon_bucket for r in report.rows} == {"5-8"}
    finally:
        store.close()
