"""`shelfcast simulate` with three separate `shelfcast agent run` processes and a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

PLAN = """
name = "three stores"
stratify_by = []

[[waves]]
name = "first"
stores = ["S001"]
bake_periods = 1

[[waves]]
name = "everyone"
share = 1.0
bake_periods = 1

[health]
activation_timeout_seconds = 120.0
stale_after_seconds = 600.0

[accuracy]
enabled = false   # three stores of 20 items are too few to compare accuracy (the fleet tests do)
"""


def test_simulate_with_three_agent_processes_promotes_a_good_candidate(tmp_path: Path) -> None:
    """Three agent processes replay daily sales; the candidate passes both waves and becomes the champion."""
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    state_dir = tmp_path / "sim"
    args = [
        sys.executable, "-m", "shelfcast", "--log-level", "warning", "simulate", "--source", "synthetic",
        "--stores", "3", "--items", "20", "--freq", "D", "--periods", "8", "--horizon", "7",
        "--agent-processes", "3", "--candidate", "1.0:good", "--plan", str(plan),
        "--state-dir", str(state_dir), "-o", "json",
    ]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [s["store_id"] for s in report["stores"]] == ["S001", "S002", "S003"]
    (rollout,) = report["rollouts"]
    assert (rollout["outcome"], rollout["waves_completed"]) == ("promoted", 2), rollout["decisions"]
    assert rollout["waves"][0]["stores"] == ["S001"]
    assert report["champion_end"] == rollout["version"]
    assert all(versions[-1] == rollout["version"] for versions in report["served"].values()), report["served"]
    assert report["served"]["S001"] == [1, rollout["version"]]
    for store_id in ("S001", "S002", "S003"):
        assert (state_dir / "logs" / f"agent-{store_id}.log").is_file()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{report['server_url']}/livez", timeout=2)
