"""A real agent measures the cycle service level from successive inventory posts and reports it, with its
proposals' totals per category, to a real server in its served accuracy report."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.agent.support import AgentHandle, fleet, make_bundle, sales_frame, wait_until

pytestmark = pytest.mark.slow
HISTORY_END_DAYS_AGO = 10
POLICIES = ",food,,,,2,3,cycle_service_level,0.9\n,drinks,,,,2,3,cycle_service_level,0.95\n"
HEADER = "item_id,category,on_hand,backorders,on_order,lead_time_days,review_period_days,service_metric,"
HEADER += "target_service_level\n"
# Three reviews of four items: (on_hand, backorders) per post. I00001 and I00003 are food, I00002 and
# I00004 drinks; I00004 is held to a fill rate, so its cycles do not count towards the cycle service level.
POSTS = [
    {"I00001": (5, 0), "I00002": (5, 0), "I00003": (5, 0), "I00004": (5, 0)},
    {"I00001": (0, 0), "I00002": (3, 0), "I00003": (4, 0), "I00004": (0, 0)},
    {"I00001": (6, 0), "I00002": (2, 1), "I00003": (3, 0), "I00004": (5, 0)},
]
# food: I00001 5->0 missed, 0->6 met; I00003 5->4, 4->3 met. drinks: I00002 5->3 met, backorders 0->1 missed.
EXPECTED_CYCLES = {"food": (4, 3, 0.9), "drinks": (2, 1, 0.95)}


def _post(agent: AgentHandle, post: dict[str, tuple[int, int]]) -> None:
    rows = "".join(
        f"{item},,{on_hand},{backorders},,,,{'fill_rate,' if item == 'I00004' else ','}\n"
        for item, (on_hand, backorders) in post.items()
    )
    answer = agent.client.post(
        "/v1/inventory", content=(HEADER + POLICIES + rows).encode(), headers={"Content-Type": "text/csv"}
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["items_accepted"], answer.json()["rows_quarantined"]) == (4, 0), answer.text

    def computed() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = agent.client.get("/v1/replenishment").json()["rows"]
        positions = {r["item_id"]: r["inventory_position"] for r in rows}
        wanted = {item: float(on_hand - backorders) for item, (on_hand, backorders) in post.items()}
        return rows if positions == wanted else None

    wait_until(computed, 60, 0.2, what="the proposals of the posted positions")


def test_served_report_carries_proposal_totals_and_achieved_service_level(tmp_path: Path) -> None:
    """After three inventory posts and a week of sales, the server holds per category what the agent's
    proposals add up to and the share of review cycles met, against the targets posted."""
    with fleet(tmp_path) as (server, private, public):
        archive, _sha = make_bundle(tmp_path, private, 1)
        server.publish(archive)
        server.promote(1)
        agent = AgentHandle(tmp_path, server.url, public, enrollment_token=server.create_store())
        today = datetime.now().astimezone().date()
        agent.drop_sales(sales_frame(end=today - timedelta(days=HISTORY_END_DAYS_AGO)))
        agent.start()
        try:
            agent.wait_serving(1, timeout=120)
            for post in POSTS:
                _post(agent, post)
            proposals = agent.client.get("/v1/replenishment").json()["rows"]
            agent.drop_sales(
                sales_frame(end=today - timedelta(days=HISTORY_END_DAYS_AGO - 7), days=7), "week.parquet"
            )

            def reported() -> list[dict[str, Any]] | None:
                rows: list[dict[str, Any]] = server.admin.get(
                    "/v1/replenishment", params={"store": "S001"}
                ).json()
                return rows or None

            rows = wait_until(reported, 90, 0.5, what="replenishment totals on the server")
        finally:
            agent.close()
    assert {r["category"] for r in rows} == {"food", "drinks"}
    for row in rows:
        mine = [p for p in proposals if p["category"] == row["category"]]
        assert row["items"] == len(mine) == 2
        assert row["items_to_order"] == sum(p["proposed_quantity"] > 0 for p in mine)
        assert row["proposed_units"] == pytest.approx(sum(p["proposed_quantity"] for p in mine))
        assert row["order_up_to_units"] == pytest.approx(sum(p["order_up_to"] for p in mine))
        cycles, met, target = EXPECTED_CYCLES[row["category"]]
        assert (row["cycles"], row["cycles_met"]) == (cycles, met)
        assert row["achieved_service_level"] == pytest.approx(met / cycles)
        assert row["target_service_level"] == pytest.approx(target)
        assert row["below_target"] is True
    assert sum(r["proposed_units"] for r in rows) > 0  # the low positions ask for an order
