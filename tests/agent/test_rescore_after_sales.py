"""New sales re-score a real agent (debounced): forecasts then start the day after the last day sold."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from tests.agent.support import STORE, AgentHandle, fleet, make_bundle, sales_frame, wait_until

pytestmark = pytest.mark.slow


def test_posted_sales_move_forecast_start_past_the_last_day_sold(tmp_path: Path) -> None:
    """POST /v1/sales with newer days: soon after, answers say the new history_end and forecast_start."""
    last = date.today() - timedelta(days=3)
    with fleet(tmp_path) as (server, private, public):
        archive, _sha = make_bundle(tmp_path, private, 1)
        server.publish(archive)
        server.promote(1)
        agent = AgentHandle(
            tmp_path, server.url, public, enrollment_token=server.create_store(),
            scoring={"rescore_after_sales_seconds": 1.0},
        )  # fmt: skip
        agent.drop_sales(sales_frame(end=last))
        agent.start()
        try:
            agent.wait_serving(1, timeout=120)
            first = agent.client.get("/v1/forecasts", params={"limit": 1})
            assert first.headers["x-history-end"] == first.json()["history_end"] == last.isoformat()
            assert first.headers["x-forecast-start"] == (last + timedelta(days=1)).isoformat()
            new_day = last + timedelta(days=2)
            week = sales_frame(end=new_day, days=2).with_columns(pl.lit(STORE).alias("store_id"))
            posted = agent.client.post(
                "/v1/sales", content=week.write_csv().encode(), headers={"Content-Type": "text/csv"}
            )
            assert posted.status_code == 200 and posted.json()["rows_accepted"] == week.height, posted.text
            answer = wait_until(
                lambda: (
                    (r := agent.client.get("/v1/forecasts", params={"limit": 1})).headers["x-history-end"]
                    == new_day.isoformat()
                    and r
                ),
                60,
                0.5,
                what="re-scoring after the posted sales",
            )
            assert answer.headers["x-forecast-start"] == (new_day + timedelta(days=1)).isoformat()
            assert answer.json()["forecast_start"] == (new_day + timedelta(days=1)).isoformat()
        finally:
            agent.close()
