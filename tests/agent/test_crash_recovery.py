"""SIGKILL in each lifecycle state: the restarted agent serves the old or the new version, never a mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent.support import AgentHandle, fleet, make_bundle, sales_frame, wait_until

pytestmark = pytest.mark.slow

# Killed in each state in turn while moving from v1 to v2; the next start holds in the next state.
# A kill during ACTIVATE rolls back (then ROLLBACK is killed too) and the update is retried.
HOLDS = ["download", "verify", "stage", "health_check", "activate", "rollback", "commit"]


def _lifecycle_state(agent: AgentHandle) -> str | None:
    try:
        return str(json.loads((agent.state_dir / "lifecycle.json").read_text())["state"])
    except (FileNotFoundError, ValueError):
        return None


def _served_versions(agent: AgentHandle) -> set[int]:
    """Versions found in one whole listing plus one item document (must be a single version)."""
    listing = agent.client.get("/v1/forecasts", params={"limit": 1000})
    assert listing.status_code == 200, listing.text
    rows = listing.json()["rows"]
    assert len(rows) == 4 * 14
    item = agent.client.get("/v1/forecasts/I00002").json()
    return (
        {row["model_version"] for row in rows}
        | {row["model_version"] for row in item["rows"]}
        | {listing.json()["model_version"]}
    )


def test_sigkill_in_every_lifecycle_state_never_serves_a_mix(tmp_path: Path) -> None:
    """Killed with SIGKILL in each state of an update, the restarted agent serves v1 or v2 whole, then v2."""
    with fleet(tmp_path) as (server, private, public):
        token = server.create_store()
        archive, _ = make_bundle(tmp_path, private, 1)
        server.publish(archive)
        server.promote(1)
        agent = AgentHandle(tmp_path, server.url, public, enrollment_token=token)
        agent.drop_sales(sales_frame())
        agent.start()
        try:
            agent.wait_serving(1, timeout=120)
            assert agent.proc is not None
            agent.proc.stop()
            archive, _ = make_bundle(tmp_path, private, 2)
            server.publish(archive)
            server.promote(2)
            seen_states = []
            for hold in HOLDS:
                proc = agent.start(
                    env={
                        "SHELFCAST_AGENT__FAULT_HOLD_STATE": hold,
                        "SHELFCAST_AGENT__FAULT_HOLD_SECONDS": "120",
                    }
                )
                wait_until(lambda: agent.status()["served_version"] is not None, 30, what="forecasts loaded")
                assert len(_served_versions(agent)) == 1
                wait_until(lambda h=hold: _lifecycle_state(agent) == h, 120, what=f"agent held in {hold}")
                seen_states.append(hold)
                versions = _served_versions(agent)
                assert len(versions) == 1 and versions <= {1, 2}, (hold, versions)
                proc.kill()
            agent.start()
            status = agent.wait_serving(2, timeout=120)
            assert status["state"] == "idle" and status["active_version"] == 2
            assert _served_versions(agent) == {2}
            assert (agent.state_dir / "current").resolve().name == "demand-2"
            assert (agent.state_dir / "versions" / "demand-1").is_dir()
            assert seen_states == HOLDS
            log = agent.proc.log() if agent.proc else ""
            assert '"event": "lifecycle_resumed"' in log and '"event": "update_rolled_back"' in log
        finally:
            agent.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong-types"])
def test_damaged_lifecycle_file_is_rebuilt_and_the_agent_keeps_serving(tmp_path: Path, damage: str) -> None:
    """lifecycle.json cut in half, overwritten, or of the wrong shape: the restarted agent rebuilds it from
    ``current`` and ``versions/`` (error ``lifecycle_state_rebuilt``, a ``state`` error reported to the
    server), serves v2 throughout, keeps v1 for rollback and still takes the next update."""
    with fleet(tmp_path) as (server, private, public):
        token = server.create_store()
        agent = AgentHandle(tmp_path, server.url, public, enrollment_token=token)
        agent.drop_sales(sales_frame())
        try:
            for version in (1, 2):
                archive, _ = make_bundle(tmp_path, private, version)
                server.publish(archive)
                server.promote(version)
                if version == 1:
                    agent.start()
                agent.wait_serving(version, timeout=120)
            assert agent.proc is not None
            agent.proc.kill()
            state_file = agent.state_dir / "lifecycle.json"
            whole = state_file.read_bytes()
            state_file.write_bytes(
                {
                    "truncated": whole[: len(whole) // 2],
                    "garbage": b"\x00" * 64,
                    "wrong-types": b'{"state": 7}',
                }[damage]
            )
            proc = agent.start()
            status = agent.wait_serving(2, timeout=60)
            assert status["active_version"] == 2
            assert _served_versions(agent) == {2}
            assert '"event": "lifecycle_state_rebuilt"' in proc.log()
            assert (agent.state_dir / "lifecycle.json.damaged").read_bytes() != whole
            record = json.loads(state_file.read_text())
            assert record["active"] == {"model_name": "demand", "version": 2}
            assert record["previous"] == {"model_name": "demand", "version": 1}
            assert record["highest_version"] == 2
            wait_until(
                lambda: server.admin.get("/v1/stores/S001").json()["status"]["errors"].get("state") == 1,
                60,
                what="the state error reported to the server",
            )
            archive, _ = make_bundle(tmp_path, private, 3)
            server.publish(archive)
            server.promote(3)
            agent.wait_serving(3, timeout=120)
        finally:
            agent.close()
