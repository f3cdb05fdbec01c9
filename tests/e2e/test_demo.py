"""The demo end to end: real server and agent processes on loopback, forecasts pulled over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _demo_args(state_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shelfcast",
        "demo",
        "--state-dir",
        str(state_dir),
        "--items",
        "20",
        "--days",
        "200",
        *extra,
    ]


def test_demo_serves_forecasts_and_stops_everything(tmp_path: Path) -> None:
    """`shelfcast demo -o json` ends with forecasts pulled from an agent and no service left listening."""
    state_dir = tmp_path / "demo"
    result = subprocess.run(
        _demo_args(state_dir, "-o", "json"), capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["version"] == 1
    assert len(summary["stores"]) == 3
    assert all(store["active_version"] == 1 for store in summary["stores"])
    assert all(store["forecast_rows_pulled"] == 20 * 28 for store in summary["stores"])
    assert summary["sample_forecast"], "no forecast for the sampled item"
    for key in ("forecast", "forecast-lo-80", "forecast-hi-95", "ds", "item_id"):
        assert key in summary["sample_forecast"][0]
    for url in [summary["server_url"], *(store["url"] for store in summary["stores"])]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/livez", timeout=2)


def test_demo_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    """Ctrl-C during `--keep-running` stops the server and the agents and exits 130."""
    state_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        _demo_args(state_dir, "--keep-running"),
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
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert urls
    for url in {u.split("/v1")[0].rstrip("'") for u in urls}:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/livez", timeout=2)
