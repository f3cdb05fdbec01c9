"""Reports sharing one write batch: one claim for all, duplicates answered, one alert per scope."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path

from forecasting.common.contracts import AccuracyReport, AccuracyRow
from server.auth import Principal
from server.db import Database
from server.quality.alerts import AlertRule, AlertsConfig
from server.quality.repository import QualityRepository
from server.quality.schemas import ReportAccepted
from server.quality.services import QualityService
from server.writer import GroupWriter


def report(report_id: str, store_id: str = "S1") -> AccuracyReport:
    """One category's accuracy with a WAPE of 0.2 (above the test rule's 0.1)."""
    row = AccuracyRow(
        category="food", horizon_bucket="1-7", n=6, abs_err_sum=12.0, abs_y_sum=60.0, err_sum=3.0
    )
    day = date(2026, 12, 1)
    return AccuracyReport(
        report_id=report_id, store_id=store_id, model_name="demand", version=1, period_start=day,
        period_end=day, created_at=datetime(2026, 12, 2, tzinfo=UTC), rows=[row],
    )  # fmt: skip


def test_reports_of_one_batch_are_stored_once_and_fire_one_alert_per_scope(tmp_path: Path) -> None:
    """Three new reports of one store and category, a resend of the first and another store's report, all
    in one batch: four stored, the resend answered ``duplicate``, one alert per store and category fired
    (the second and third reports of the scope find the alert the first one fired and refresh it)."""
    db = Database.open(tmp_path / "q.duckdb")
    writer = GroupWriter(
        db, max_batch=64, max_wait_seconds=0.5, max_queue=64, retry_after_seconds=1, flush_every_seconds=60
    )
    writer.start()
    rule = AlertRule(name="wape-high", metric="wape", threshold=0.1)
    service = QualityService(QualityRepository(db), AlertsConfig(rules=[rule]), writer)
    admin = Principal(role="admin", credential_id="test")
    sent = [report("r1"), report("r2"), report("r3"), report("r1"), report("r1", store_id="S2")]

    async def deliver() -> list[ReportAccepted]:
        return list(await asyncio.gather(*(service.accept_accuracy(r, admin) for r in sent)))

    try:
        answers = asyncio.run(deliver())
    finally:
        writer.stop()
    try:
        assert writer.batches == 1
        assert [a.duplicate for a in answers] == [False, False, False, True, False]
        assert [a.alerts_fired for a in answers] == [1, 0, 0, 0, 1]
        stored = db.fetch_all("SELECT store_id, report_id FROM monitoring_reports ORDER BY ALL")
        assert [(r["store_id"], r["report_id"]) for r in stored] == [("S1", "r1"), ("S1", "r2"), ("S1", "r3"),
                                                                     ("S2", "r1")]  # fmt: skip
        assert db.scalar("SELECT count(*) FROM accuracy_rows") == 4
        firing = db.fetch_all("SELECT store_id, evaluations FROM alerts WHERE status = 'firing' ORDER BY ALL")
        assert [(r["store_id"], r["evaluations"]) for r in firing] == [("S1", 3), ("S2", 1)]
    finally:
        db.close()
