"""Real Walmart weeks through a real agent and server: accuracy and drift reports, a x1.5 category alerts."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from forecasting.monitoring.drift import reference_summary
from tests.agent.support import STORE, AgentHandle, fleet, wait_until

pytestmark = pytest.mark.slow

CHANGED = "92"  # Walmart store 1's largest department


def _walmart_store(shared_data: Path) -> pl.DataFrame:
    from forecasting.data.loading import read_text_table

    raw = read_text_table(shared_data / "walmart" / "train.csv.gz")
    return raw.filter(pl.col("Store") == "1").select(
        pl.lit(STORE).alias("store_id"),
        pl.col("Dept").alias("item_id"),
        pl.col("Dept").alias("category"),
        pl.col("Date").str.to_date().alias("ds"),
        pl.col("Weekly_Sales").cast(pl.Float64).alias("y"),
    )


def _bundle(root: Path, key: Path, history: pl.DataFrame) -> Path:
    from forecasting.bundle.format import Manifest, ModelEntry, pack_archive, write_bundle

    series = history.select("store_id", "item_id", "category").unique().sort("item_id")
    buffer = io.BytesIO()
    series.with_columns(model=pl.lit("SeasonalNaive")).write_parquet(buffer)
    manifest = Manifest(
        model_name="demand",
        version=1,
        created_at=datetime.now(UTC),
        freq="W",
        horizon=13,
        season_length=52,
        models={"SeasonalNaive": ModelEntry(state="refit-at-edge", family="SeasonalNaive")},
        fallback_model="SeasonalNaive",
        metrics={c: {"wape": 0.15} for c in series["category"].to_list()},
        reference=reference_summary(history),
    )
    bundle_dir = write_bundle(root / "walmart-v1", manifest, {"series.parquet": buffer.getvalue()}, key)
    archive = root / "walmart-v1.tar"
    pack_archive(bundle_dir, archive)
    return archive


def test_walmart_weeks_through_an_agent_report_accuracy_and_raise_a_drift_alert(
    tmp_path: Path, shared_data: Path
) -> None:
    """Server WAPE equals NumPy's on the agent's forecasts; a x1.5 category alerts in 2 weeks."""
    data = _walmart_store(shared_data)
    weeks = sorted(data["ds"].unique().to_list())
    cutoff = weeks[-9]
    history = data.filter(pl.col("ds") <= cutoff)
    with fleet(tmp_path) as (server, private, public):
        token = server.create_store()
        server.publish(_bundle(tmp_path, private, history))
        server.promote(1)
        agent = AgentHandle(tmp_path, server.url, public, enrollment_token=token, scoring={"horizon": 13})
        agent.drop_sales(history, "history.parquet")
        agent.start()
        try:
            agent.wait_serving(1, timeout=180)
            forecasts = pl.DataFrame(agent.client.get("/v1/forecasts", params={"limit": 5000}).json()["rows"])
            # Week by week, as the store would send them; department 92 sells x1.5 from the 3rd week on.
            future = data.filter(pl.col("ds") > cutoff).with_columns(
                pl.when((pl.col("category") == CHANGED) & (pl.col("ds") >= weeks[-6]))
                .then(pl.col("y") * 1.5)
                .otherwise(pl.col("y"))
            )
            sent = []
            alert_week = None
            for week in weeks[-8:-4]:
                agent.drop_sales(future.filter(pl.col("ds") == week), f"week-{week}.parquet")
                sent.append(week)
                wait_until(
                    lambda w=week: any(
                        r["last_period_end"] == str(w)
                        for r in server.admin.get("/v1/drift", params={"group_by": ["store_id"]}).json()
                    ),
                    60,
                    0.2,
                    what=f"drift report of {week}",
                )
                # A report and the alerts it fires are stored in one transaction: no wait for them.
                firing = server.admin.get("/v1/alerts", params={"store": STORE, "status": "firing"}).json()
                if firing and alert_week is None:
                    alert_week = week
                    assert [(a["rule"], a["category"]) for a in firing] == [("category-drift", CHANGED)]
            assert alert_week is not None, "no drift alert"
            assert (alert_week - weeks[-6]).days <= 7  # fired by the report of the change's second week
            actuals = future.filter(pl.col("ds").is_in(sent))
            wait_until(
                lambda: (
                    sum(
                        r["n"]
                        for r in server.admin.get("/v1/accuracy", params={"group_by": ["store_id"]}).json()
                    )
                    >= actuals.height - 5
                ),
                60,
                0.2,
                what="accuracy reports",
            )
            rows = server.admin.get(
                "/v1/accuracy", params={"group_by": ["category"], "role": "served"}
            ).json()
            metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        finally:
            agent.close()
    joined = (
        forecasts.with_columns(pl.col("ds").str.to_date())
        .join(actuals, on=["item_id", "ds"])
        .filter(pl.col("y").is_finite())
    )
    for row in rows:
        part = joined.filter(pl.col("category") == row["category"])
        y, f = part["y"].to_numpy(), part["forecast"].to_numpy()
        assert row["n"] == len(y)
        if np.abs(y).sum() > 0:
            assert row["wape"] == pytest.approx(np.abs(f - y).sum() / np.abs(y).sum(), rel=1e-6)
    assert len(rows) > 50
    assert metrics.count("shelfcast_alerts_firing{") == 1
