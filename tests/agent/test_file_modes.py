"""Started with umask 022, the server and the agent still create every file 0600 and every folder 0700."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.support import ADMIN_TOKEN, SHELFCAST, AgentHandle, fleet, make_bundle, sales_frame


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The child processes inherit a permissive umask, as outside systemd."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _open_to_others(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Files not 0600 and folders not 0700 under ``root`` (links are not followed)."""
    found = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink() or any(part in skip for part in path.relative_to(root).parts):
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            found.append(f"{path.relative_to(root.parent)}: {mode:o}")
    return found


@pytest.mark.usefixtures("umask_022")
def test_state_backups_and_databases_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """registry.duckdb (and its log), blobs, the backup folder, agent.duckdb, lifecycle.json, the
    credential, versions and scoring runs: files 0600, folders 0700."""
    with fleet(tmp_path) as (server, private, public):
        token = server.create_store()
        archive, _ = make_bundle(tmp_path, private, 1)
        server.publish(archive)
        server.promote(1)
        agent = AgentHandle(tmp_path, server.url, public, enrollment_token=token)
        agent.state_dir.mkdir()
        agent.state_dir.chmod(0o755)  # an existing folder is tightened too
        agent.drop_sales(sales_frame())
        agent.start()
        try:
            agent.wait_serving(1, timeout=120)
        finally:
            agent.close()
        backup = tmp_path / "backups" / "first"
        done = subprocess.run(
            [
                *SHELFCAST,
                "server",
                "backup",
                "--to",
                str(backup),
                "--server",
                server.url,
                "--token",
                ADMIN_TOKEN,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    names = {p.name for p in server.state_dir.rglob("*")} | {p.name for p in agent.state_dir.rglob("*")}
    assert {"registry.duckdb", "agent.duckdb", "lifecycle.json", "credential", "serving.json"} <= names
    assert _open_to_others(server.state_dir) == []
    assert _open_to_others(agent.state_dir, skip=("inbox",)) == []  # the inbox is written by the store
    assert _open_to_others(backup) == []
