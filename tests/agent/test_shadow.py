"""Shadow scoring on a real agent: a rollout's shadow version is verified, scored beside the served one,
reported with role shadow, never served, dropped with the assignment; a failing shadow never disturbs serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.agent.support import AgentHandle, ServerHandle, make_bundle, make_keys, sales_frame, wait_until
from tests.agent.test_heartbeat_errors import ENGINE_ENV

pytestmark = pytest.mark.slow

HISTORY_END_DAYS_AGO = 15  # forecasts cover the 14 days after: actuals for them can arrive in the test


class Setup:
    def __init__(self, root: Path, server: ServerHandle, agent: AgentHandle, private: Path) -> None:
        self.root, self.server, self.agent, self.private = root, server, agent, private

    def start_shadow_rollout(self, version: int) -> str:
        plan = {
            "shadow": {"enabled": True, "bake_periods": 50},
            "waves": [{"name": "canary", "stores": ["S001"], "bake_periods": 1}],
            "health": {"activation_timeout_seconds": 600},
        }
        answer = self.server.admin.post(
            "/v1/rollouts", json={"model_name": "demand", "version": version, "plan": plan}
        )
        assert answer.status_code == 201, answer.text
        rollout_id: str = answer.json()["rollout"]["rollout_id"]
        return rollout_id

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.server.admin.get(f"/v1/rollouts/{rollout_id}").json()
        return body

    def wait_agent(self, check: Any, what: str, timeout: float = 60) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            status = self.agent.status()
            return status if check(status) else None

        try:
            return dict(wait_until(ready, timeout, 0.2, what=what))
        except AssertionError as exc:
            log = self.agent.proc.log()[-3000:] if self.agent.proc else ""
            raise AssertionError(f"{exc}\n--- agent log ---\n{log}") from None

    def served_versions(self) -> set[int]:
        rows = self.agent.client.get("/v1/forecasts", params={"limit": 1000}).json()["rows"]
        return {int(r["model_version"]) for r in rows}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A server with v1 champion and v2 published; an agent serving v1 on history ending 15 days ago."""
    root = tmp_path_factory.mktemp("shadow")
    private, public = make_keys(root)
    server = ServerHandle(root, public)
    server.env |= ENGINE_ENV
    server.start()
    agent = None
    try:
        token = server.create_store()
        for version in (1, 2):
            server.publish(make_bundle(root, private, version)[0])
        server.promote(1)
        agent = AgentHandle(root, server.url, public, enrollment_token=token)
        today = datetime.now().astimezone().date()
        agent.drop_sales(sales_frame(end=today - timedelta(days=HISTORY_END_DAYS_AGO)))
        agent.start()
        agent.wait_serving(1, timeout=120)
        yield Setup(root, server, agent, private)
    finally:
        if agent is not None:
            agent.close()
        server.close()


def test_shadow_is_scored_reported_as_shadow_and_never_served(setup: Setup) -> None:
    """v2 as shadow: kept under shadow/, scored on the same history, reported with role shadow, not served."""
    agent, server = setup.agent, setup.server
    rollout_id = setup.start_shadow_rollout(2)
    status = setup.wait_agent(lambda s: s["shadow_version"] == 2, "the agent to keep shadow v2")
    state = agent.state_dir
    assert (state / "shadow" / "demand-2" / "manifest.json").is_file()
    assert not (state / "versions" / "demand-2").exists()
    assert (state / "current").resolve().name == "demand-1"
    proc = agent.proc
    assert proc is not None
    wait_until(lambda: '"role": "shadow"' in proc.log(), 60, what="a shadow run")
    assert '"event": "shadow_ready"' in proc.log()
    served_runs = list((state / "runs").glob("*-v1-*/forecasts.parquet"))
    shadow_runs = list((state / "runs").glob("*-v2-*/forecasts.parquet"))
    assert served_runs and shadow_runs
    status = agent.status()
    assert status["served_version"] == 1 and status["active_version"] == 1
    assert setup.served_versions() == {1}
    # actuals of the first forecast week arrive: both versions are measured on the same dates
    today = datetime.now().astimezone().date()
    agent.drop_sales(
        sales_frame(end=today - timedelta(days=HISTORY_END_DAYS_AGO - 7), days=7), "week.parquet"
    )

    def accuracy(role: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"model": "demand", "role": role, "group_by": ["version", "role", "period"]}
        rows: list[dict[str, Any]] = server.admin.get("/v1/accuracy", params=params).json()
        return rows

    shadow_rows = wait_until(lambda: accuracy("shadow"), 60, 0.3, what="shadow accuracy on the server")
    served_rows = wait_until(lambda: accuracy("served"), 30, 0.3, what="served accuracy on the server")
    assert {r["version"] for r in shadow_rows} == {2}
    assert {r["version"] for r in served_rows} == {1}
    assert {r["period"] for r in shadow_rows} == {r["period"] for r in served_rows}
    assert all(r["n"] > 0 and r["wape"] is not None for r in shadow_rows)
    assert setup.served_versions() == {1}
    assert server.admin.get("/v1/stores/S001").json()["status"]["shadow_version"] == 2
    # the rollout is aborted: the assignment stops naming the shadow, and the agent drops it
    aborted = server.admin.post(f"/v1/rollouts/{rollout_id}/abort", json={"reason": "test over"})
    assert aborted.status_code == 200, aborted.text
    setup.wait_agent(lambda s: s["shadow_version"] is None, "the agent to drop the shadow")
    assert not (state / "shadow" / "demand-2").exists()
    assert agent.status()["served_version"] == 1


def test_failing_shadow_never_disturbs_serving_and_fails_the_gate(setup: Setup) -> None:
    """A shadow that cannot score is counted (kind shadow), serving goes on with v1, the rollout halts."""
    agent, server = setup.agent, setup.server
    server.publish(make_bundle(setup.root, setup.private, 3, family="Bogus")[0])
    rollout_id = setup.start_shadow_rollout(3)
    status = setup.wait_agent(lambda s: s["errors"].get("shadow", 0) >= 1, "a counted shadow failure")
    assert status["served_version"] == 1
    assert status["last_counted_error"].startswith("shadow: v3:")
    assert setup.served_versions() == {1}
    assert agent.client.get("/readyz").status_code == 200

    def halted() -> dict[str, Any] | None:
        body = setup.rollout(rollout_id)
        return body if body["rollout"]["status"] != "running" else None

    body = wait_until(halted, 30, 0.2, what="the rollout to halt")
    assert body["rollout"]["status"] == "rolled_back", body["decisions"]
    assert "shadow x" in body["decisions"][-1]["reason"]
    setup.wait_agent(lambda s: s["shadow_version"] is None, "the agent to drop the failing shadow")
    assert agent.status()["served_version"] == 1


def test_serving_candidate_scores_the_kept_champion_in_shadow_for_paired_evidence(setup: Setup) -> None:
    """Serving v2 in a rollout, the agent scores v1 (kept on disk, never fetched again) in shadow on the
    same history; both versions' reports pair on the server, store x category by store x category."""
    agent, server = setup.agent, setup.server
    plan = {
        "shadow": {"enabled": True, "bake_periods": 0},
        "waves": [{"name": "canary", "stores": ["S001"], "bake_periods": 50}],
        "health": {"activation_timeout_seconds": 600},
        "accuracy": {"enabled": False},
    }
    answer = server.admin.post("/v1/rollouts", json={"model_name": "demand", "version": 2, "plan": plan})
    assert answer.status_code == 201, answer.text
    rollout_id = answer.json()["rollout"]["rollout_id"]
    status = setup.wait_agent(
        lambda s: s["served_version"] == 2 and s["shadow_version"] == 1, "v2 served with v1 in shadow", 120
    )
    state = agent.state_dir
    assert (state / "versions" / "demand-1" / "manifest.json").is_file()
    assert not (state / "shadow" / "demand-1").exists()
    assert status["errors"].get("verify", 0) == 0
    today = datetime.now().astimezone().date()
    agent.drop_sales(sales_frame(end=today - timedelta(days=1), days=7), "week2.parquet")

    def paired() -> dict[str, Any] | None:
        accuracy = setup.rollout(rollout_id)["gates"]["accuracy"]
        return accuracy if accuracy.get("units") else None

    accuracy = wait_until(paired, 90, 0.5, what="paired evidence of v2 and v1 on the server")
    assert accuracy["comparison"].startswith("paired")
    assert accuracy["stores"] == 1
    assert accuracy["step_stores_reporting"] == 1
    assert all(c["candidate_n"] > 0 for c in accuracy["categories"].values())
    aborted = server.admin.post(f"/v1/rollouts/{rollout_id}/abort", json={"reason": "test over"})
    assert aborted.status_code == 200, aborted.text
    setup.wait_agent(lambda s: s["served_version"] == 1 and s["shadow_version"] is None, "back on v1")
