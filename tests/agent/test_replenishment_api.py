"""Inventory in, order proposals out, on a real agent: validation, quarantine, formats, paging, ETags."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import polars as pl
import pytest

from tests.agent.support import AgentHandle, fleet, make_bundle, sales_frame, wait_until

pytestmark = pytest.mark.slow
ITEMS = 6


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentHandle]:
    """An agent serving v1 (SeasonalNaive) over six items of sales."""
    tmp_path = tmp_path_factory.mktemp("replenishment")
    with fleet(tmp_path) as (server, private, public):
        archive, _sha = make_bundle(tmp_path, private, 1)
        server.publish(archive)
        server.promote(1)
        handle = AgentHandle(tmp_path, server.url, public, enrollment_token=server.create_store())
        handle.drop_sales(sales_frame(items=ITEMS))
        handle.start()
        try:
            handle.wait_serving(1, timeout=120)
            yield handle
        finally:
            handle.close()


def _post(agent: AgentHandle, body: bytes, content_type: str) -> dict[str, Any]:
    answer = agent.client.post("/v1/inventory", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _proposal(agent: AgentHandle, item: str, on_hand: float | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        answer = agent.client.get(f"/v1/replenishment/{item}")
        if answer.status_code != 200:
            return None
        row: dict[str, Any] = answer.json()
        return row if on_hand is None or row["inventory_position"] >= on_hand - 1e-9 else None

    return dict(wait_until(check, 60, 0.2, what=f"a proposal for {item}"))


def test_bad_rows_are_quarantined_and_never_get_a_proposal(agent: AgentHandle) -> None:
    """Negative stock, unknown items, lead time 0 and pack size 0 are row errors; good rows get proposals."""
    due = (date.today() + timedelta(days=2)).isoformat()
    csv = (
        "item_id,category,on_hand,on_order,on_order_due,lead_time_days,review_period_days,"
        "target_service_level,pack_size,min_order,shelf_capacity\n"
        f"I00001,,5,12,{due},3,4,0.95,6,,\n"
        "I00002,,-1,,,3,4,0.95,1,,\n"
        "NOPE,,5,,,3,4,0.95,1,,\n"
        "I00003,,5,,,0,4,0.95,1,,\n"
        "I00004,,5,,,3,4,0.95,0,,\n"
        ",food,,,,2,5,0.9,,,\n"
        "I00005,,4,,,,,,,,\n"
        "I00006,,4,,,,,,,,\n"
    )
    answer = _post(agent, csv.encode(), "text/csv")
    assert answer["items_accepted"] == 2 and answer["categories_accepted"] == 1, answer
    assert answer["rows_quarantined"] == 5
    rules = sorted(reason.split(":")[0] for reason in answer["reasons"])
    assert rules == ["bad_lead_time", "bad_pack_size", "missing_lead_time", "negative_stock", "unknown_item"]
    first = _proposal(agent, "I00001")
    assert first["inventory_position"] == 17.0
    for item in ("I00002", "I00003", "I00004", "I00006"):
        assert agent.client.get(f"/v1/replenishment/{item}").status_code == 404
    defaulted = _proposal(agent, "I00005")  # category food: its posted default
    assert (defaulted["lead_time_days"], defaulted["review_period_days"]) == (2, 5)
    assert defaulted["target_service_level"] == 0.9


def test_proposal_is_the_order_up_to_level_from_the_served_forecasts(agent: AgentHandle) -> None:
    """Demand mean = the first L + R served forecasts summed; order = S - position in packs, target met."""
    rows = [
        {"item_id": "I00003", "on_hand": 10, "lead_time_days": 3, "review_period_days": 4, "pack_size": 6},
        {
            "item_id": "I00004",
            "on_hand": 500,
            "lead_time_days": 3,
            "review_period_days": 4,
            "shelf_capacity": 600,
        },
    ]
    answer = _post(agent, pl.DataFrame(rows).write_json().encode(), "application/json")
    assert answer["items_accepted"] == 2 and not answer["rows_quarantined"], answer
    low = _proposal(agent, "I00003", on_hand=10)
    forecasts = agent.client.get("/v1/forecasts/I00003").json()["rows"]
    assert low["demand_mean"] == pytest.approx(sum(r["forecast"] for r in forecasts[:7]))
    assert low["order_up_to"] > low["demand_mean"]
    assert low["proposed_quantity"] % 6 == 0
    assert low["order_up_to"] - 10 <= low["proposed_quantity"] < low["order_up_to"] - 10 + 6
    assert low["target_service_level"] == 0.9  # its category default, posted by the test above
    assert low["expected_service_level"] >= 0.9 and low["model_version"] == 1
    assert low["history_end"] and low["forecast_start"]
    high = _proposal(agent, "I00004", on_hand=500)
    assert high["proposed_quantity"] == 0
    assert high["expected_stock_end_of_lead_time"] > 500 - high["demand_mean"]


def test_listing_formats_paging_filters_and_etags(agent: AgentHandle) -> None:
    """Like /v1/forecasts: JSON pages with cursors, Parquet export, category filter, strong ETags and 304."""
    _proposal(agent, "I00001")
    whole = agent.client.get("/v1/replenishment", params={"format": "parquet"})
    frame = pl.read_parquet(io.BytesIO(whole.content))
    assert frame.height >= 3 and frame["item_id"].is_sorted()
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        page = agent.client.get("/v1/replenishment", params=params)
        body = page.json()
        seen += [r["item_id"] for r in body["rows"]]
        if not body["next_cursor"]:
            break
        params = {"limit": 1, "cursor": body["next_cursor"]}
    assert seen == frame["item_id"].to_list()
    food = agent.client.get("/v1/replenishment", params={"category": "food"}).json()["rows"]
    assert food and {r["category"] for r in food} == {"food"}
    etag = whole.headers["etag"]
    again = agent.client.get(
        "/v1/replenishment", params={"format": "parquet"}, headers={"If-None-Match": etag}
    )
    assert again.status_code == 304
    buffer = io.BytesIO()
    pl.DataFrame({"item_id": ["I00001"], "on_hand": [1.0], "lead_time_days": [2]}).write_parquet(buffer)
    assert _post(agent, buffer.getvalue(), "application/vnd.apache.parquet")["items_accepted"] == 1
    wait_until(
        lambda: agent.client.get("/v1/replenishment/I00001").json()["inventory_position"] == 1.0,
        60,
        0.2,
        what="proposals recomputed after the inventory post",
    )
    changed = agent.client.get(
        "/v1/replenishment", params={"format": "parquet"}, headers={"If-None-Match": etag}
    )
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_inventory_in_unknown_or_unreadable_formats_is_refused(agent: AgentHandle) -> None:
    """Unknown formats are refused with 415 and unreadable bodies with 422 problem details."""
    png = agent.client.post("/v1/inventory", content=b"x", headers={"Content-Type": "image/png"})
    assert png.status_code == 415
    bad = agent.client.post("/v1/inventory", content=b"{", headers={"Content-Type": "application/json"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
