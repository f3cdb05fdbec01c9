"""One state folder, one admin: `server init` and `server run` agree on the folder however it is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shelfcast.procs import ServiceProcess
from tests.conftest import free_port

SHELFCAST = [sys.executable, "-m", "shelfcast"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFCAST_")}
    return env | extra


def _run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHELFCAST, *args], capture_output=True, text=True, check=False, env=env or _clean_env(), cwd=cwd
    )


def test_init_then_run_on_one_config_and_the_token_works(tmp_path: Path) -> None:
    """init and run with the same --config use its state_dir, say so on stderr; the printed token signs in."""
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    init = _run("server", "init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    assert len(init.stdout.splitlines()) == 1, "the token alone goes to stdout"
    token = init.stdout.strip()
    assert token.startswith("sca_")
    assert f"state folder: {tmp_path / 'state'} (from {config})" in init.stderr
    port = free_port()
    with ServiceProcess(
        "server",
        ["server", "run", "--config", str(config), "--port", str(port)],
        log_path=tmp_path / "server.log",
        env=_clean_env(),
    ) as server:
        server.wait_http(f"http://127.0.0.1:{port}/readyz")
        answer = httpx.get(
            f"http://127.0.0.1:{port}/v1/stores", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
    log = (tmp_path / "server.log").read_text()
    assert f"state folder: {tmp_path / 'state'} (from {config})" in log


@pytest.mark.parametrize("how", ["flag", "environment", "default"])
def test_init_twice_refuses_unless_add_admin(tmp_path: Path, how: str) -> None:
    """A second init on an initialised folder refuses (naming --add-admin); with it, a second admin."""
    state = tmp_path / "state"
    args: list[str] = ["--state-dir", str(state)] if how == "flag" else []
    env = _clean_env(SHELFCAST_SERVER__STATE_DIR=str(state)) if how == "environment" else _clean_env()
    source = {
        "flag": "--state-dir",
        "environment": "SHELFCAST_SERVER__STATE_DIR",
        "default": "built-in default",
    }
    expected = state if how != "default" else tmp_path / ".shelfcast" / "server"
    first = _run("server", "init", *args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"state folder: {expected} (from " in first.stderr and source[how] in first.stderr
    again = _run("server", "init", *args, env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert "--add-admin" in again.stderr and not again.stdout
    added = _run("server", "init", *args, "--add-admin", env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() != first.stdout.strip()


def test_run_without_an_admin_credential_refuses_and_says_how_to_make_one(tmp_path: Path) -> None:
    """`server run` on a folder without an admin exits 1 naming `shelfcast server init` with its folder."""
    state = tmp_path / "state"
    result = _run("server", "run", "--state-dir", str(state), "--port", str(free_port()))
    assert result.returncode == 1
    assert f"shelfcast server init --state-dir {state}" in result.stderr
    assert "SHELFCAST_SERVER__ADMIN_TOKEN" in result.stderr
    assert not state.exists(), "a refused start creates nothing"
