"""The demo end to end: a real server and agents on loopback, two canary rollouts, forecasts over HTTP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port


def _demo_args(state_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shelfcast",
        "demo",
        "--state-dir",
        str(state_dir),
        "--replay-weeks",
        "12",
        *extra,
    ]


def test_demo_rolls_out_promotes_rolls_back_and_stops_everything(tmp_path: Path) -> None:
    """`shelfcast demo -o json`: good promoted (3 waves), x1.3 rolled back, no accuracy alert, the order
    proposals of a store pulled after posting its stock, all stopped."""
    state_dir = tmp_path / "demo"
    result = subprocess.run(
        _demo_args(state_dir, "-o", "json"), capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    good, bad = summary["rollouts"]
    assert (good["outcome"], good["waves_completed"], good["waves"]) == ("promoted", 3, 3), good
    assert (bad["outcome"], bad["waves_completed"]) == ("rolled_back", 0), bad
    assert bad["forecasts_multiplied_by"] == 1.3
    assert "accuracy gate failed" in bad["halt_reason"]
    assert summary["version"] == good["version"]
    assert summary["dashboard_url"] == summary["server_url"] + "/dashboard/"
    assert any(f"rollouts status {bad['rollout_id']}" in c for c in summary["commands"])
    assert len(summary["stores"]) == 12
    assert all(store["served_version"] == good["version"] for store in summary["stores"])
    with_api = [store for store in summary["stores"] if store["url"]]
    assert len(with_api) == 2
    assert all(store["forecast_rows_pulled"] == 120 * 4 for store in with_api)
    assert summary["sample_forecast"], "no forecast for the sampled item"
    for key in ("forecast", "forecast-lo-80", "forecast-hi-95", "ds", "item_id"):
        assert key in summary["sample_forecast"][0]
    _check_proposals(summary["replenishment"], with_api[0])
    for url in [summary["server_url"], *(store["url"] for store in with_api)]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/livez", timeout=2)
    assert _firing_accuracy_alerts(state_dir) == []


def _check_proposals(pulled: dict[str, Any], store: dict[str, Any]) -> None:
    """The proposals the demo pulled after posting the stock of every item of the first agent process:
    one per item, of that store, for the posted policy, each the order-up-to level minus the position."""
    assert (pulled["store_id"], pulled["agent_url"]) == (store["store_id"], store["url"])
    assert (pulled["items_posted"], pulled["rows_quarantined"]) == (120, 0)
    proposals = pulled["proposals"]
    assert len(proposals) == 120 and len({p["item_id"] for p in proposals}) == 120
    assert {p["store_id"] for p in proposals} == {store["store_id"]}
    for p in proposals:
        assert (p["lead_time_days"], p["review_period_days"], p["target_service_level"]) == (1, 1, 0.95)
        shortfall = p["order_up_to"] - p["inventory_position"]
        assert p["proposed_quantity"] == max(0.0, math.ceil(shortfall - 1e-9))  # whole units, no cap
    assert pulled["items_to_order"] == sum(p["proposed_quantity"] > 0 for p in proposals) > 0
    assert pulled["proposed_units"] == pytest.approx(sum(p["proposed_quantity"] for p in proposals))


def _firing_accuracy_alerts(state_dir: Path) -> list[tuple[str, str, str]]:
    """The accuracy alerts still firing in the demo server's database (read once the server has stopped)."""
    import duckdb

    from server.db import DB_FILE_NAME
    from server.quality.alerts import ACCURACY_METRICS

    with duckdb.connect(str(state_dir / "server" / DB_FILE_NAME), read_only=True) as db:
        rows = db.execute(
            "SELECT rule, store_id, category FROM alerts "
            "WHERE status = 'firing' AND list_contains(?, metric)",
            [sorted(ACCURACY_METRICS)],
        ).fetchall()
    return [(str(r), str(s), str(c)) for r, s, c in rows]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_ctrl_c_or_sigterm_stops_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C or SIGTERM during `--keep-running` stops the server and the agents and exits 130; the
    server listens on --port, and progress lines came on stderr while it worked."""
    state_dir = tmp_path / "demo"
    port = free_port()
    proc = subprocess.Popen(
        _demo_args(state_dir, "--keep-running", "--items", "40", "--replay-weeks", "2", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 600
        lines: list[str] = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("running;"):
                break
        assert lines and lines[-1].startswith("running;"), "".join(lines)
        urls = [word for line in lines for word in line.split() if word.startswith("http://127.0.0.1:")]
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    progress = [line for line in proc.stderr.read().splitlines() if line.startswith("demo: ")]
    assert any("training" in line for line in progress) and any("rollout of v" in line for line in progress)
    assert f"http://127.0.0.1:{port}" in {u.split("/v1")[0].rstrip("'") for u in urls}
    assert urls
    for url in {u.split("/v1")[0].rstrip("'") for u in urls}:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/livez", timeout=2)
