"""Error counts in heartbeats from a real agent: refused updates reach the server and halt a rollout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.support import (
    AgentHandle,
    ServerHandle,
    make_bundle,
    make_keys,
    sales_frame,
    wait_until,
)

pytestmark = pytest.mark.slow

ENGINE_ENV = {
    "SHELFCAST_ROLLOUTS__ENGINE_INTERVAL_SECONDS": "0.2",
    "SHELFCAST_ROLLOUTS__LEASE_SECONDS": "2",
}


class Setup:
    def __init__(self, root: Path, server: ServerHandle, agent: AgentHandle, keys: dict[str, Path]) -> None:
        self.root, self.server, self.agent, self.keys = root, server, agent, keys

    def store_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.server.admin.get("/v1/stores/S001").json()["status"] or {}
        return status

    def wait_errors(self, kind: str, count: int) -> dict[str, Any]:
        """The server's view of the store once its agent reported ``count`` errors of ``kind``."""
        return dict(
            wait_until(
                lambda: (s := self.store_status()).get("errors", {}).get(kind) == count and s,
                60,
                0.2,
                what=f"server to store {count} {kind} error(s)",
            )
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A server trusting two keys, an agent trusting one of them and serving v1."""
    root = tmp_path_factory.mktemp("errors")
    private, public = make_keys(root)
    other_private, other_public = make_keys(root / "other")
    server = ServerHandle(root, public)
    server.env |= ENGINE_ENV | {"SHELFCAST_SERVER__TRUSTED_KEYS": f'["{public}", "{other_public}"]'}
    server.start()
    agent = None
    try:
        token = server.create_store()
        archive, _sha = make_bundle(root, private, 1)
        server.publish(archive)
        server.promote(1)
        agent = AgentHandle(root, server.url, public, enrollment_token=token)
        agent.drop_sales(sales_frame())
        agent.start()
        agent.wait_serving(1, timeout=120)
        yield Setup(root, server, agent, {"trusted": private, "untrusted": other_private})
    finally:
        if agent is not None:
            agent.close()
        server.close()


def test_failed_health_check_fails_the_rollout_health_gate(setup: Setup) -> None:
    """A candidate failing its health check is counted, reported, halts the rollout; the store keeps v1."""
    server, agent = setup.server, setup.agent
    archive, _sha = make_bundle(setup.root, setup.keys["trusted"], 2, family="Bogus")
    server.publish(archive)
    # a second store of the model (never started) keeps the canary from covering the whole fleet, which
    # would score the candidate in shadow first (tests/agent/test_shadow.py covers that path)
    server.create_store("S002")
    plan = {
        "waves": [{"name": "canary", "stores": ["S001"], "bake_periods": 1}],
        "health": {"activation_timeout_seconds": 600},
    }
    started = server.admin.post("/v1/rollouts", json={"model_name": "demand", "version": 2, "plan": plan})
    assert started.status_code == 201, started.text
    rollout_id = started.json()["rollout"]["rollout_id"]
    shown = setup.wait_errors("health_check", 1)
    assert shown["last_error"].startswith("health_check: update to v2 refused: health check failed")

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = server.admin.get(f"/v1/rollouts/{rollout_id}").json()
        return body if body["rollout"]["status"] != "running" else None

    body = wait_until(finished, 30, 0.2, what="the rollout to stop")
    assert body["rollout"]["status"] == "rolled_back", body["decisions"]
    halt = body["decisions"][-1]
    assert "health gate failed" in halt["reason"] and "health_check x1" in halt["reason"]
    assert halt["numbers"]["health"]["error_stores"] == ["S001"]
    assert server.admin.get("/v1/models/demand/aliases/champion").json()["version"] == 1
    status = agent.status()
    assert status["served_version"] == 1 and status["active_version"] == 1
    assert status["errors"]["health_check"] == 1


def test_refused_signature_is_counted_and_named(setup: Setup) -> None:
    """A bundle signed by a key the agent does not trust is refused, counted as verify and named."""
    server, agent = setup.server, setup.agent
    archive, _sha = make_bundle(setup.root / "other", setup.keys["untrusted"], 3)
    server.publish(archive)
    server.promote(3)
    shown = setup.wait_errors("verify", 1)
    assert shown["last_error"].startswith("verify: update to v3 refused:")
    assert "key" in shown["last_error"].lower() or "signature" in shown["last_error"].lower()
    assert agent.status()["served_version"] == 1
    assert agent.status()["errors"]["verify"] == 1
