"""The agent's DuckDB store: outbox order, idempotency, bounded size; sales upserts; quarantine."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import msgspec
import polars as pl
import pytest
import structlog

from agent.ingest import ingest_bytes, ingest_folder
from agent.store import LocalStore


def test_outbox_keeps_order_and_ignores_duplicate_keys(tmp_path: Path) -> None:
    """Reports come back in the order queued; a repeated idempotency key is queued once."""
    store = LocalStore(tmp_path / "a.duckdb")
    for i in range(5):
        store.enqueue("accuracy", "/v1/reports", f"{i}".encode(), f"k{i}", max_rows=100)
    store.enqueue("accuracy", "/v1/reports", b"again", "k2", max_rows=100)
    batch = store.outbox_batch()
    assert [item.body for item in batch] == [b"0", b"1", b"2", b"3", b"4"]
    store.outbox_done(batch[0].seq)
    assert [item.idempotency_key for item in store.outbox_batch()] == ["k1", "k2", "k3", "k4"]
    store.close()


def test_outbox_survives_reopening(tmp_path: Path) -> None:
    """Queued reports are durable across a restart of the process."""
    store = LocalStore(tmp_path / "a.duckdb")
    store.enqueue("heartbeat", "/v1/heartbeats", b"{}", "hb-1", max_rows=10)
    store.close()
    again = LocalStore(tmp_path / "a.duckdb")
    assert [item.idempotency_key for item in again.outbox_batch()] == ["hb-1"]
    again.close()


def test_outbox_compaction_drops_oldest_heartbeats_first_and_warns(tmp_path: Path) -> None:
    """Over its bound the outbox drops the oldest heartbeats (never newer reports first), loudly."""
    store = LocalStore(tmp_path / "a.duckdb")
    store.enqueue("accuracy", "/v1/reports", b"acc", "acc-1", max_rows=3)
    with structlog.testing.capture_logs() as logs:
        for i in range(5):
            store.enqueue("heartbeat", "/v1/heartbeats", b"{}", f"hb-{i}", max_rows=3)
    keys = [item.idempotency_key for item in store.outbox_batch()]
    assert keys == ["acc-1", "hb-3", "hb-4"]
    warnings = [entry for entry in logs if entry["event"] == "outbox_compacted"]
    assert warnings and warnings[0]["log_level"] == "warning"
    store.close()


def test_ingest_quarantines_bad_rows_with_reasons(tmp_path: Path) -> None:
    """Bad rows are kept in quarantine with a reason; good rows land in the sales table."""
    store = LocalStore(tmp_path / "a.duckdb")
    csv = (
        b"store_id,item_id,category,ds,y\n"
        b"S001,I1,food,2024-01-01,3\n"
        b"S001,I1,food,2024-01-02,x\n"
        b"S002,I1,food,2024-01-02,1\n"
        b"S001,I2,food,2999-01-01,1\n"
        b"S001,I3,food,2024-01-01,1\n"
        b"S001,I3,food,2024-01-01,2\n"
        b"S001,,food,2024-01-01,2\n"
    )
    result = ingest_bytes(store, csv, "csv", source="t.csv", store_id="S001", today=date(2024, 6, 1))
    assert result.rows_ok == 2  # the first of the two I3 rows is kept
    assert result.rows_quarantined == 5
    assert {reason.split(":")[0] for reason in result.reasons} == {
        "bad_number",
        "other_store",
        "future_date",
        "duplicate_key",
        "missing_key",
    }
    assert store.sales_summary()["quarantined_rows"] == 5
    store.close()


def test_sales_upsert_and_json_and_parquet_extracts(tmp_path: Path) -> None:
    """A later extract corrects an earlier day; JSON and Parquet extracts are accepted too."""
    store = LocalStore(tmp_path / "a.duckdb")
    rows = [{"store_id": "S001", "item_id": "I1", "category": "food", "ds": "2024-01-01", "y": 1.0}]
    ingest_bytes(
        store, msgspec.json.encode(rows), "json", source="a", store_id="S001", today=date(2024, 6, 1)
    )
    frame = pl.DataFrame(
        {"store_id": ["S001"], "item_id": ["I1"], "category": ["food"], "ds": [date(2024, 1, 1)], "y": [5.0]}
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    frame.write_parquet(inbox / "fix.parquet")
    (inbox / "broken.csv").write_text("nothing,useful\n1,2\n")
    results = ingest_folder(store, inbox, store_id="S001", today=date(2024, 6, 1))
    assert [r.rows_ok for r in results] == [1]
    assert (inbox / "processed" / "fix.parquet").is_file()
    assert (inbox / "rejected" / "broken.csv").is_file()
    out = tmp_path / "h.parquet"
    assert store.export_history(out) == 1
    assert pl.read_parquet(out)["y"].to_list() == [5.0]
    store.close()


@pytest.mark.parametrize("body", [b"not json", b'{"rows": 3}'])
def test_unreadable_json_is_an_ingest_error(tmp_path: Path, body: bytes) -> None:
    """A JSON body that is not a list of rows is refused as a whole, with a reason."""
    from agent.errors import IngestError

    store = LocalStore(tmp_path / "a.duckdb")
    with pytest.raises(IngestError):
        ingest_bytes(store, body, "json", source="x", store_id="S001", today=date(2024, 6, 1))
    store.close()


def test_review_cycles_count_successive_posts_by_the_target_in_force(tmp_path: Path) -> None:
    """Each pair of successive posts of an item is a cycle, met with stock left and no more backorders; it
    is judged against the target posted at its start; fill-rate items and posts older than 91 days are
    left out."""
    from datetime import UTC, datetime, timedelta

    from agent.inventory import ingest_inventory
    from agent.store import REVIEW_HISTORY_DAYS

    store = LocalStore(tmp_path / "a.duckdb")
    sales = pl.DataFrame(
        {"store_id": ["S"] * 3, "item_id": ["A", "B", "C"], "category": ["food", "food", "toys"],
         "ds": [date(2024, 1, 1)] * 3, "y": [1.0, 2.0, 3.0]}
    )  # fmt: skip
    store.append_sales(sales, "test")
    header = "item_id,on_hand,backorders,lead_time_days,service_metric,target_service_level\n"
    posts = [
        "A,5,0,2,,0.9\nB,5,0,2,,0.9\nC,5,0,2,fill_rate,0.9\n",
        "A,0,0,2,,0.8\nB,4,0,2,,0.9\nC,0,0,2,fill_rate,0.9\n",  # A: 5 -> 0 missed (judged by 0.9)
        "A,3,0,2,,0.8\nB,4,2,2,,0.9\n",  # A: 0 -> 3 met (by 0.8); B: backorders 0 -> 2 missed
    ]
    for body in posts:
        result = ingest_inventory(store, (header + body).encode(), "csv", source="test", max_periods=14)
        assert result.rows_quarantined == 0, result.reasons
    cycles, met, target = store.review_cycles()["food"]
    assert (cycles, met) == (4, 2)  # A missed, met; B met (5 -> 4), missed
    assert target == pytest.approx((0.9 + 0.8 + 0.9 + 0.9) / 4)
    assert "toys" not in store.review_cycles()  # a fill-rate item has no cycle service level
    old = datetime.now(UTC) - timedelta(days=REVIEW_HISTORY_DAYS + 1)
    store._exec("UPDATE inventory_reviews SET posted_at = ? WHERE item_id = 'B'", [old])  # 92 days ago
    ingest_inventory(store, (header + "A,3,0,2,,0.8\n").encode(), "csv", source="test", max_periods=14)
    assert store.review_cycles()["food"][:2] == (3, 2)  # B's old posts pruned; A: one more cycle, met
    store.close()
