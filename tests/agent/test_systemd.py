"""systemd integration: the notify protocol of a real agent, the unit files, ``shelfcast agent install``."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from agent.install import unit_text
from tests.agent.support import AgentHandle, free_port, prepare_served_state
from tests.conftest import PROJECT_ROOT

UNITS = ["shelfcast-agent.service", "shelfcast-server.service"]


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is required in CI (apt-get install -y systemd)")
        pytest.skip("systemd-analyze not installed")
    return found


def test_agent_sends_ready_then_watchdog(tmp_path: Path) -> None:
    """With $NOTIFY_SOCKET set, the agent sends READY=1 once its API listens, then WATCHDOG=1 regularly."""
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(30)
    handle = AgentHandle(tmp_path, f"http://127.0.0.1:{free_port()}", tmp_path / "none.pub")
    prepare_served_state(handle.state_dir, 3, 7)
    started = time.monotonic()
    handle.start(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}, wait=False)
    try:
        messages: list[str] = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
            if len(messages) == 1:
                ready_after = time.monotonic() - started
                # READY only once the API answers.
                assert handle.client.get("/livez").status_code == 200
        assert "READY=1" in messages[0]
        assert ready_after < 30
        assert handle.proc is not None
        handle.proc.stop()
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
    finally:
        handle.close()
        listener.close()


def test_packaged_units_match_the_systemd_folder() -> None:
    """The unit `shelfcast agent install` writes is the one in systemd/ (one source of truth, checked)."""
    for name in UNITS:
        assert (PROJECT_ROOT / "systemd" / name).read_text() == unit_text(name)


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened_to_exposure_2_or_lower(name: str) -> None:
    """systemd-analyze security --offline=true rates each unit's exposure at 2.0 or lower."""
    analyze = _systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", str(PROJECT_ROOT / "systemd" / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    last = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert last, result.stdout + result.stderr
    exposure = float(last[0].split(":")[1].split()[0])
    assert exposure <= 2.0, last[0]
    assert result.returncode == 0, result.stderr


def test_install_writes_private_config_and_a_unit_that_verifies(tmp_path: Path) -> None:
    """`agent install` writes agent.toml 0600 (valid config) and a unit `systemd-analyze verify` accepts."""
    key = tmp_path / "signing.key.pub"
    key.write_text("public key\n")
    root = tmp_path / "root"
    result = subprocess.run(
        [sys.executable, "-m", "shelfcast", "agent", "install", "--server", "https://central.example:8470",
         "--store-id", "S042", "--enrollment-token", "one-time-xyz", "--trusted-key", str(key),
         "--root", str(root)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = root / "etc" / "shelfcast" / "agent.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    data = tomllib.loads(config.read_text())
    assert data["agent"]["store_id"] == "S042"
    assert data["agent"]["enrollment_token"] == "one-time-xyz"
    assert data["agent"]["trusted_keys"] == ["/etc/shelfcast/keys/signing.key.pub"]
    check = subprocess.run(
        [sys.executable, "-m", "shelfcast", "config", "check", str(config), "--kind", "agent"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    unit = root / "etc" / "systemd" / "system" / "shelfcast-agent.service"
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "StateDirectory=shelfcast-agent" in text
    again = subprocess.run(
        [sys.executable, "-m", "shelfcast", "agent", "install", "--server", "https://x", "--store-id", "S1",
         "--enrollment-token", "t", "--root", str(root)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert again.returncode == 1 and "--force" in again.stderr
    analyze = _systemd_analyze()
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    assert not verify.stderr.strip(), verify.stderr


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shelfcast", "agent", "install", "--server", "https://central.example:8470",
         "--store-id", "S042", "--enrollment-token", "one-time-xyz", "--root", str(root), *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_install_refuses_a_config_that_trusts_no_key(tmp_path: Path) -> None:
    """Without --trusted-key nothing is written and the error names the option (exit 1)."""
    root = tmp_path / "root"
    result = _install(root)
    assert result.returncode == 1
    assert "--trusted-key" in result.stderr
    assert not (root / "etc" / "shelfcast" / "agent.toml").exists()


@pytest.mark.parametrize(
    ("executable", "setting"),
    [("/home/ops/venv/bin/shelfcast", "ProtectHome"), ("/tmp/venv/bin/shelfcast", "PrivateTmp")],
)
def test_install_warns_when_the_unit_hides_its_executable(
    tmp_path: Path, executable: str, setting: str
) -> None:
    """An ExecStart under a path the unit's sandbox hides is installed with a warning naming the setting."""
    key = tmp_path / "signing.key.pub"
    key.write_text("public key\n")
    result = _install(tmp_path / "root", "--trusted-key", str(key), "--executable", executable)
    assert result.returncode == 0, result.stderr
    assert f"{setting}=yes hides {executable}" in result.stderr
    assert "/opt/shelfcast" in result.stderr
    exe = "/opt/shelfcast/bin/shelfcast"
    quiet = _install(tmp_path / "root", "--trusted-key", str(key), "--executable", exe, "--force")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
