"""Disk full on the agent while it downloads and while it stages an update.

First a file-size limit (RLIMIT_FSIZE, set on the running agent with prlimit) makes the download fail
with EFBIG. Then the agent's state folder, on its own 48 MB tmpfs, gets a filler file that leaves too
little room for the download, then for the unpacked copy (ENOSPC). The old version keeps being served
whole, the error names the cause, nothing half-staged stays behind, and with room again the agent updates.
"""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.support import AgentHandle, ServerHandle, fleet, make_bundle, sales_frame, wait_until
from tests.reliability.support import (
    assert_one_whole_verified_version,
    events,
    has_event,
    signed_bundle,
    watch_serving,
)

pytestmark = pytest.mark.slow

PADDING_BYTES = 4 * 1024 * 1024


def padded_bundle(folder: Path, private_key: Path, version: int) -> Path:
    """A signed bundle plus a 4 MB payload, so that its copies need real room."""
    return signed_bundle(folder, private_key, version, padding=PADDING_BYTES)


class SmallDisk:
    """A tmpfs on ``path``: ``leave_free(n)`` fills it up to ``n`` free bytes, ``release()`` empties it."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        path.mkdir(parents=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        self.mounted = mounted.returncode == 0  # needs root; without it only the file-size limit is tested
        self.filler = path / "filler.bin"

    def free(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def leave_free(self, n: int) -> None:
        self.release()
        with self.filler.open("wb") as fh:
            while (room := self.free() - n) > 0:
                fh.write(b"\0" * min(1 << 20, room))
                fh.flush()

    def release(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "agent-state", 48)
    try:
        yield disk
    finally:
        disk.unmount()


def _nothing_half_staged(agent: AgentHandle, version: int) -> None:
    assert not (agent.state_dir / "versions" / f"demand-{version}").exists()
    staging = agent.state_dir / "staging"
    leftovers = (
        [p.name for p in staging.iterdir() if not p.name.startswith("probe-")] if staging.is_dir() else []
    )
    assert leftovers == [], leftovers


def test_disk_full_while_downloading_and_staging_keeps_the_old_version(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    """EFBIG and ENOSPC downloading, ENOSPC staging: v1 served whole, clear errors; with room, updates."""
    with fleet(tmp_path) as (server, private, public):
        agent = _running_agent(tmp_path, server, private, public)
        assert agent.proc is not None
        pid = agent.proc.popen.pid
        try:
            # 0. a file-size limit on the running agent (RLIMIT_FSIZE): EFBIG while downloading
            archive = padded_bundle(tmp_path, private, 2)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (PADDING_BYTES // 2, resource.RLIM_INFINITY))
            with watch_serving(agent, {1}):
                server.publish(archive)
                server.promote(2)
                wait_until(
                    lambda: has_event(agent, "download_failed", reason="File too large"),
                    30,
                    what="download fails at the file-size limit",
                )
                assert agent.status()["active_version"] == 1
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            assert not list((agent.state_dir / "downloads").glob("*.part"))
            _nothing_half_staged(agent, 2)
            if not small_disk.mounted:
                pytest.skip("no small tmpfs could be mounted (needs root): ENOSPC not tested")

            # 1. no room for the download: a sync error that names the full disk; the partial file is gone
            archive = padded_bundle(tmp_path, private, 3)
            small_disk.leave_free(PADDING_BYTES // 2)
            with watch_serving(agent, {1}):
                server.publish(archive)
                server.promote(3)
                wait_until(
                    lambda: has_event(agent, "download_failed", reason="No space left on device"),
                    30,
                    what="download fails for want of space",
                )
                assert agent.status()["active_version"] == 1
            assert not list((agent.state_dir / "downloads").glob("*.part"))
            _nothing_half_staged(agent, 3)

            # 2. room for the archive but not for its unpacked copy: staging fails, nothing half-staged
            archive = padded_bundle(tmp_path, private, 4)
            small_disk.leave_free(archive.stat().st_size + PADDING_BYTES // 2)
            with watch_serving(agent, {1}):
                server.publish(archive)
                server.promote(4)
                wait_until(
                    lambda: any(
                        "No space left on device" in str(e)
                        for e in events(agent, "lifecycle_handler_crashed")
                    ),
                    30,
                    what="staging fails for want of space",
                )
                assert agent.status()["active_version"] == 1
            _nothing_half_staged(agent, 4)
            assert_one_whole_verified_version(agent, public, {1})

            # 3. room again: the update is retried and goes through
            small_disk.release()
            wait_until(lambda: agent.status()["active_version"] == 4, 60, what="v4 active (retried)")
            agent.wait_serving(4, timeout=60)
            assert_one_whole_verified_version(agent, public, {4})
        finally:
            agent.close()


def _running_agent(root: Path, server: ServerHandle, private: Path, public: Path) -> AgentHandle:
    token = server.create_store()
    archive, _ = make_bundle(root, private, 1)
    server.publish(archive)
    server.promote(1)
    agent = AgentHandle(root, server.url, public, enrollment_token=token, agent={"max_backoff_seconds": 1.0})
    agent.drop_sales(sales_frame())
    agent.start()
    agent.wait_serving(1, timeout=120)
    return agent
