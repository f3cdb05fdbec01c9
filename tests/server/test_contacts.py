"""Polls and unchanged heartbeats: the store's last contact, kept in memory and written with a later batch."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx

from tests.server.conftest import create_store, enroll, launch, unique


def beat(store_id: str, sent_at: datetime, state: str = "serving") -> dict[str, Any]:
    return {"store_id": store_id, "state": state, "model_name": "contacts", "active_version": 1,
            "sent_at": sent_at.isoformat()}  # fmt: skip


def contact_of(admin: httpx.Client, store_id: str) -> datetime:
    status = admin.get(f"/v1/stores/{store_id}").json()["status"]
    return datetime.fromisoformat(status["last_contact_at"])


def wait_for_contact_after(admin: httpx.Client, store_id: str, after: datetime) -> datetime:
    for _ in range(100):
        contact = contact_of(admin, store_id)
        if contact > after:
            return contact
        time.sleep(0.05)
    raise AssertionError(f"last contact of {store_id} stayed at {after}")


def test_polls_and_unchanged_heartbeats_move_the_last_contact(tmp_path: Path, signing_key: Path) -> None:
    """A poll and a heartbeat repeating the last one (without a key, with one) each move the store's last
    contact within the flush interval and store nothing else; a changed heartbeat is stored at once, and the
    unchanged one's sent_at is kept, so an older heartbeat arriving late does not replace the state."""
    running = launch(tmp_path, signing_key.with_name(signing_key.name + ".pub"),
                     {"SHELFCAST_WRITES__CONTACT_FLUSH_SECONDS": "0.1"})  # fmt: skip
    store_id = unique("ct")
    try:
        with running.admin() as admin:
            token = enroll(running.url, store_id, create_store(admin, store_id, "contacts"))
            agent = running.client(token)
            start = datetime.now(UTC) - timedelta(minutes=1)  # every sent_at lies behind the server clock
            assert agent.post("/v1/heartbeats", json=beat(store_id, start)).status_code == 202
            first = contact_of(admin, store_id)

            agent.get(f"/v1/stores/{store_id}/assignment")  # 404: no champion yet, still a contact
            polled = wait_for_contact_after(admin, store_id, first)

            same = agent.post("/v1/heartbeats", json=beat(store_id, start + timedelta(seconds=2)))
            assert same.status_code == 202 and same.json()["duplicate"] is False
            unchanged = wait_for_contact_after(admin, store_id, polled)

            keyed = {"Idempotency-Key": "same-again"}
            body = beat(store_id, start + timedelta(seconds=3))
            assert agent.post("/v1/heartbeats", json=body, headers=keyed).json()["duplicate"] is False
            assert agent.post("/v1/heartbeats", json=body, headers=keyed).json()["duplicate"] is True
            wait_for_contact_after(admin, store_id, unchanged)

            late = agent.post("/v1/heartbeats", json=beat(store_id, start + timedelta(seconds=1), "degraded"))
            assert late.status_code == 202
            assert admin.get(f"/v1/stores/{store_id}").json()["status"]["state"] == "serving"
            changed = agent.post(
                "/v1/heartbeats", json=beat(store_id, start + timedelta(seconds=4), "degraded")
            )
            assert changed.status_code == 202
            assert admin.get(f"/v1/stores/{store_id}").json()["status"]["state"] == "degraded"
            agent.close()
    finally:
        running.process.stop()
    con = duckdb.connect(str(running.state_dir / "registry.duckdb"), read_only=True)
    try:
        keys = con.execute("SELECT count(*) FROM report_keys WHERE store_id = ?", [store_id]).fetchone()
        sent = con.execute("SELECT sent_at FROM agent_status WHERE store_id = ?", [store_id]).fetchone()
    finally:
        con.close()
    assert keys == (1,)
    assert sent is not None and sent[0] == (start + timedelta(seconds=4)).replace(tzinfo=None)
