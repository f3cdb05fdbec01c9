"""Replenishment totals in accuracy reports: the contract, the migration, storage and the API and CLI."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import msgspec
import pytest
from click.testing import CliRunner

from forecasting.common.contracts import AccuracyReport, AccuracyRow, ReplenishmentTotals
from server.db import Database
from server.migrations import MIGRATIONS
from shelfcast.cli import cli
from tests.server.conftest import RunningServer, create_store, enroll, unique

OLD_REPORT = {  # an accuracy report as agents sent it before replenishment totals existed
    "report_id": "acc-old",
    "store_id": "S-old",
    "model_name": "demand",
    "version": 1,
    "role": "served",
    "period_start": "2024-03-01",
    "period_end": "2024-03-07",
    "created_at": "2024-03-08T01:00:00Z",
    "rows": [{"category": "dairy", "horizon_bucket": "1-7", "n": 7, "abs_err_sum": 3.0, "abs_y_sum": 30.0,
              "err_sum": 1.0}],
}  # fmt: skip


def _totals(
    category: str, *, cycles: int, met: int, target: float | None, items: int = 4
) -> ReplenishmentTotals:
    return ReplenishmentTotals(
        category=category, items=items, items_to_order=items // 2, proposed_units=10.0 * items,
        order_up_to_units=25.0 * items, target_service_level=target, cycles=cycles, cycles_met=met,
        achieved_service_level=met / cycles if cycles else None,
    )  # fmt: skip


def _report(
    store_id: str, end: date, totals: list[ReplenishmentTotals], role: str = "served"
) -> AccuracyReport:
    row = AccuracyRow(
        category="dairy", horizon_bucket="1-7", n=7, abs_err_sum=3.0, abs_y_sum=30.0, err_sum=1.0
    )
    return AccuracyReport(
        report_id=f"acc-{store_id}-{end}-{role}", store_id=store_id, model_name="demand", version=1,
        role=role, period_start=end, period_end=end, created_at=datetime.now(UTC), rows=[row],
        replenishment=totals,
    )  # fmt: skip


def _agent(server: RunningServer, store_id: str) -> httpx.Client:
    with server.admin() as admin:
        token = enroll(server.url, store_id, create_store(admin, store_id, "demand"))
    return server.client(token)


def _post(agent: httpx.Client, body: bytes) -> httpx.Response:
    return agent.post("/v1/accuracy", content=body, headers={"Content-Type": "application/json"})


def test_a_report_without_totals_decodes_with_none() -> None:
    """An older agent's report (no ``replenishment`` field) decodes with an empty list; bounds are checked."""
    report = msgspec.json.decode(json.dumps(OLD_REPORT), type=AccuracyReport)
    assert report.replenishment == []
    bad = {**OLD_REPORT, "replenishment": [{"category": "dairy", "achieved_service_level": 1.5}]}
    with pytest.raises(msgspec.ValidationError, match=r"replenishment\[0\]\.achieved_service_level"):
        msgspec.json.decode(json.dumps(bad), type=AccuracyReport)


def test_migration_11_adds_its_table_and_keeps_older_rows(tmp_path: Path) -> None:
    """A database at migration 10 with an accuracy row migrates on: the row stays, the new ones are empty."""
    path = tmp_path / "old.duckdb"
    db = Database.open(path, migrate=False)
    db.migrate([m for m in MIGRATIONS if m.number <= 10])
    db.execute(
        "INSERT INTO accuracy_rows VALUES ('r1', 'S1', 'demand', 1, 'served', DATE '2024-03-01', "
        "DATE '2024-03-07', 'dairy', '1-7', 7, 3.0, 30.0, 1.0, 0.0, 0, NULL, NULL, '{}', NULL, "
        "now()::TIMESTAMP, NULL)"
    )
    db.close()
    db = Database.open(path)
    assert db.schema_version() == MIGRATIONS[-1].number
    db.close()
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM accuracy_rows").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM replenishment_rows").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM replenishment_latest").fetchone() == (0,)
        name = con.execute("SELECT name FROM schema_migrations WHERE number = 11").fetchone()
    assert name is not None and "service level" in name[0]


def test_old_report_is_accepted_and_totals_are_stored_latest_first_and_pooled(server: RunningServer) -> None:
    """An old report is stored without totals; each store answers its newest report's totals (a category
    it no longer names is gone); by category and by store the cycles pool (achieved = met / cycles, target
    weighted by cycles); a shadow report with totals and a level above 1 are refused."""
    a, b, old = unique("RA"), unique("RB"), unique("RO")
    dairy, bakery, gone = unique("dairy"), unique("bakery"), unique("gone")  # categories of these stores only
    with _agent(server, old) as agent:
        body = json.dumps({**OLD_REPORT, "store_id": old, "report_id": unique("acc")}).encode()
        assert _post(agent, body).status_code == 202
    with _agent(server, a) as agent:
        stale = [_totals(dairy, cycles=10, met=10, target=0.9), _totals(bakery, cycles=4, met=4, target=0.8),
                 _totals(gone, cycles=3, met=1, target=0.9)]  # fmt: skip
        assert _post(agent, msgspec.json.encode(_report(a, date(2024, 3, 7), stale))).status_code == 202
        newer = [_totals(dairy, cycles=20, met=17, target=0.9), _totals(bakery, cycles=0, met=0, target=0.8)]
        assert _post(agent, msgspec.json.encode(_report(a, date(2024, 3, 14), newer))).status_code == 202
    with _agent(server, b) as agent:
        mine = [_totals(dairy, cycles=30, met=29, target=0.95, items=6)]
        assert _post(agent, msgspec.json.encode(_report(b, date(2024, 3, 14), mine))).status_code == 202
        shadow = _report(b, date(2024, 3, 14), mine, role="shadow")
        refused = _post(agent, msgspec.json.encode(shadow))
        assert refused.status_code == 422 and "served report" in refused.json()["detail"]
        out_of_range = msgspec.json.encode(_report(b, date(2024, 3, 21), mine)).replace(b"0.95", b"1.95")
        refused = _post(agent, out_of_range)
        assert refused.status_code == 422 and "target_service_level" in refused.text

    def get(**params: Any) -> list[dict[str, Any]]:
        with server.admin() as admin:
            answer = admin.get("/v1/replenishment", params=params)
        assert answer.status_code == 200, answer.text
        rows: list[dict[str, Any]] = answer.json()
        return rows

    assert get(store=old) == []
    cells = {(r["store_id"], r["category"]): r for r in get() if r["store_id"] in (a, b)}
    assert set(cells) == {(a, bakery), (a, dairy), (b, dairy)}  # gone: not in a's newest report
    dairy_a = cells[(a, dairy)]
    assert (dairy_a["cycles"], dairy_a["cycles_met"], dairy_a["items"], dairy_a["items_to_order"]) == (
        20,
        17,
        4,
        2,
    )
    assert dairy_a["achieved_service_level"] == pytest.approx(0.85)
    assert dairy_a["target_service_level"] == pytest.approx(0.9)
    assert dairy_a["below_target"] is True
    assert (dairy_a["proposed_units"], dairy_a["order_up_to_units"]) == (40.0, 100.0)
    assert dairy_a["last_period_end"] == "2024-03-14"
    bakery_a = cells[(a, bakery)]  # no cycle in the newest report: no achieved level, the items' target
    assert "achieved_service_level" not in bakery_a and "below_target" not in bakery_a
    assert bakery_a["target_service_level"] == pytest.approx(0.8)
    assert cells[(b, dairy)]["below_target"] is False
    pooled = get(category=dairy, group_by=["category"])
    assert [(r["category"], r["stores"], r["cycles"], r["cycles_met"], r["items"]) for r in pooled] == [
        (dairy, 2, 50, 46, 10)
    ]
    assert pooled[0]["achieved_service_level"] == pytest.approx(46 / 50)
    assert pooled[0]["target_service_level"] == pytest.approx((0.9 * 20 + 0.95 * 30) / 50)
    assert pooled[0]["below_target"] is True  # 92 % against 93 %
    with server.admin() as admin:
        per_store = admin.get("/v1/replenishment", params={"store": a, "group_by": ["store_id"]}).json()
    assert per_store == [
        {"store_id": a, "stores": 1, "items": 8, "items_to_order": 4, "proposed_units": 80.0,
         "order_up_to_units": 200.0, "target_service_level": pytest.approx(0.9), "cycles": 20,
         "cycles_met": 17, "achieved_service_level": pytest.approx(0.85), "below_target": True,
         "last_period_end": "2024-03-14", "last_reported_at": per_store[0]["last_reported_at"]}
    ]  # fmt: skip
    with server.admin() as admin:
        wrong = admin.get("/v1/replenishment", params={"group_by": ["region"]})
    assert wrong.status_code == 422 and "cannot group by region" in wrong.text

    runner = CliRunner()
    env = {"SHELFCAST_SERVER_URL": server.url, "SHELFCAST_TOKEN": server.admin_token}
    result = runner.invoke(
        cli, ["replenishment", "--store", a, "-o", "json"], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    shown = {(r["category"], r["cycles_met"], r["cycles"]) for r in json.loads(result.stdout)}
    assert shown == {(bakery, 0, 0), (dairy, 17, 20)}
    table = runner.invoke(cli, ["replenishment", "--store", a], env=env)
    assert table.exit_code == 0 and "ACHIEVED_SERVICE_LEVEL" in table.output and dairy in table.output
