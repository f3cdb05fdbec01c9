"""A healthy Walmart replay raises no accuracy alert; the same stores' real errors made 3x worse do.

A slice of the fleet replay (4 stores, 6 departments, 12 weeks; ``benchmarks/bench_gates.py``
runs the whole fleet): real agents report their live accuracy to a real server with the default rules.
Then one store keeps reporting its own last real week with every error tripled, as a model gone bad
would: the default rule learns that store's baseline from the replayed weeks and fires after its
persistence, with the numbers on the alert and on its dashboard page.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from forecasting.common.contracts import AccuracyReport
from server.quality.alerts import default_rules
from shelfcast.simulate import SimulationOptions, simulation
from tests.server.dashboard_fleet import sign_in

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
RULE = next(r for r in default_rules() if r.name == "accuracy-degradation")
assert RULE.baseline is not None
PERSISTENCE = RULE.baseline.persistence


def _last_report(root: Path) -> AccuracyReport:
    reports = [
        msgspec.json.decode(p.read_bytes(), type=AccuracyReport)
        for p in (root / "monitoring" / "accuracy").glob("*.json")
    ]
    served = [r for r in reports if r.role == "served"]
    assert served, f"no served accuracy report under {root}"
    return max(served, key=lambda r: r.period_end)


def _worse(report: AccuracyReport, weeks: int, factor: float) -> AccuracyReport:
    """The report moved ``weeks`` later with every error ``factor`` times larger."""
    shift = timedelta(weeks=weeks)
    rows = [msgspec.structs.replace(r, abs_err_sum=r.abs_err_sum * factor) for r in report.rows]
    return msgspec.structs.replace(
        report, report_id=f"{report.report_id}-worse-{weeks}", period_start=report.period_start + shift,
        period_end=report.period_end + shift, created_at=datetime.now(UTC), rows=rows,
    )  # fmt: skip


def test_healthy_replay_is_quiet_and_a_tripled_error_fires_with_its_numbers(
    tmp_path: Path, shared_data: Path
) -> None:
    """No accuracy alert in 4 stores x 6 departments x 12 healthy weeks; tripled errors fire, persistently."""
    options = SimulationOptions(
        state_dir=tmp_path / "replay",
        source="walmart",
        data_path=shared_data / "walmart",
        stores=4,
        periods=12,
    )
    with simulation(options) as sim:
        report = sim.run()
        assert report.periods_replayed == 12
        with sim.admin() as admin:
            healthy = admin.get("/v1/alerts").json()
            groups = admin.get("/v1/accuracy", params={"group_by": ["store_id", "category"]}).json()
            assert [a for a in healthy if a["rule"] == RULE.name] == []
            assert len(groups) == 4 * 6
            agent = sim.agents["W01"]
            last = _last_report(agent.root)
            fired_at = []
            with sim.admin() as client:
                client.headers["Authorization"] = f"Bearer {agent.credential()}"
                for week in range(1, RULE.window + PERSISTENCE + 1):
                    answer = client.post(
                        "/v1/accuracy",
                        content=msgspec.json.encode(_worse(last, week, 3.0)),
                        headers={"Content-Type": "application/json"},
                    )
                    assert answer.status_code == 202, answer.text
                    if answer.json()["alerts_fired"]:
                        fired_at.append(week)
            alerts = [
                a
                for a in admin.get("/v1/alerts", params={"store": "W01", "status": "firing"}).json()
                if a["rule"] == RULE.name
            ]
        assert fired_at and fired_at[0] >= PERSISTENCE + 1, fired_at
        assert {a["category"] for a in alerts} <= {r.category for r in last.rows}
        alert = alerts[0]
        details = alert["details"]
        assert details["periods_beyond"] >= details["persistence"] == PERSISTENCE
        assert details["ratio"] > details["upper_ratio"] > details["baseline_ratio"]
        assert details["history_windows"] > 0 and details["version"] == report.champion_end
        assert alert["threshold"] == pytest.approx(details["upper_ratio"])
        client = sign_in(sim.server_url, sim.admin_token)
        page = client.get(f"/dashboard/alerts/{alert['alert_id']}")
        client.close()
    assert page.status_code == 200
    assert "learnt baseline" in page.text and "periods beyond in a row" in page.text
