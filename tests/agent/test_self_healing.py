"""A store heals itself: a bundle refused under the wrong trust is taken once it is fixed, no state edited."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.agent.support import (
    ADMIN_TOKEN,
    SHELFCAST,
    STORE,
    AgentHandle,
    fleet,
    make_bundle,
    make_keys,
    sales_frame,
    wait_until,
)
from tests.server.dashboard_fleet import sign_in

pytestmark = pytest.mark.slow


def _shelfcast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHELFCAST, *args], capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )


def test_wrong_key_refusal_fixed_trust_restart_serving_and_the_error_resolved(tmp_path: Path) -> None:
    """Wrong key -> refused; `agent retry` tries again; right key, restart: serving; error is history."""
    with fleet(tmp_path) as (server, private, public):
        _wrong_private, wrong_public = make_keys(tmp_path / "wrong")
        archive, sha = make_bundle(tmp_path, private, 1)
        server.publish(archive)
        server.promote(1)
        token = server.create_store()

        def store_status() -> dict[str, Any]:
            status: dict[str, Any] = server.admin.get(f"/v1/stores/{STORE}").json()["status"] or {}
            return status

        agent = AgentHandle(tmp_path, server.url, wrong_public, enrollment_token=token)
        agent.drop_sales(sales_frame())
        agent.start()
        try:
            refused = wait_until(
                lambda: (s := store_status()).get("errors", {}).get("verify") == 1 and s,
                60,
                0.2,
                what="the refusal on the server",
            )
            assert "verify" in refused["current_errors"], refused
            assert "update to v1 refused" in refused["current_errors"]["verify"], refused

            # `agent retry` (through the running agent's API) tries the refused bundle again at once.
            retried = _shelfcast(
                "agent", "retry", "--config", str(agent.config_path), "--state-dir", str(agent.state_dir),
                "-o", "json",
            )  # fmt: skip
            assert retried.returncode == 0, retried.stderr
            assert json.loads(retried.stdout)["cleared"] == [sha]
            wait_until(
                lambda: store_status().get("errors", {}).get("verify") == 2, 60, 0.2, what="a second refusal"
            )
        finally:
            agent.close()
        lifecycle = json.loads((agent.state_dir / "lifecycle.json").read_text())
        assert sha in lifecycle["rejected"], "the refusal is remembered while nothing changed"

        # Store IT fixes the config (the right key) and restarts: the refused bundle is tried again.
        fixed = AgentHandle(tmp_path, server.url, public)
        assert fixed.state_dir == agent.state_dir
        fixed.start()
        try:
            fixed.wait_serving(1, timeout=120)
            assert fixed.status()["current_errors"] == {}
            healed = wait_until(
                lambda: (s := store_status()).get("active_version") == 1 and not s["current_errors"] and s,
                60,
                0.2,
                what="the server to see the store healed",
            )
            assert healed["errors"]["verify"] == 2, "the history keeps the refusals"
            assert healed["last_error"].startswith("verify:"), healed
        finally:
            fixed.close()

        env = {"SHELFCAST_SERVER_URL": server.url, "SHELFCAST_TOKEN": ADMIN_TOKEN}
        listed = _shelfcast("stores", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        header = listed.stdout.splitlines()[0].lower()
        assert "current_errors" in header and "last_error" in header
        browser = sign_in(server.url, ADMIN_TOKEN)
        try:
            page = browser.get("/dashboard/fleet").text
        finally:
            browser.close()
        assert "current errors" in page and ">resolved<" in page
