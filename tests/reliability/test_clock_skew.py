"""Clock skew of one day ahead and behind, on the agent and on the server (libfaketime on the process).

Only the wall clock of the skewed process moves (``FAKETIME_DONT_FAKE_MONOTONIC``): timeouts and
backoff still run on real time, every timestamp the process reads or writes is a day off.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.agent.support import AgentHandle, ServerHandle, make_keys, sales_frame, wait_until
from tests.reliability.support import (
    assert_one_whole_verified_version,
    has_event,
    reports_queued,
    signed_bundle,
    stored_report_keys,
)

pytestmark = pytest.mark.slow

LIBFAKETIME = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))


def skewed(offset: str) -> dict[str, str]:
    """Environment that runs a process with its wall clock moved by ``offset`` (``+1d``, ``-1d``)."""
    if not LIBFAKETIME:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    return {"LD_PRELOAD": str(LIBFAKETIME[0]), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


class Ledger:
    """Reports queued by each agent run, to compare with what the server stored at the end."""

    def __init__(self) -> None:
        self.queued = 0
        self.runs = 0

    def close_run(self, agent: AgentHandle) -> None:
        """Wait until the outbox is drained, count what this run queued, stop the agent."""
        wait_until(lambda: agent.status()["outbox_size"] == 0, 30, what="outbox drained")
        self.queued += reports_queued(agent)
        self.runs += 1
        assert agent.proc is not None
        agent.proc.stop()

    def check(self, server: ServerHandle) -> None:
        server.stop()
        keys = stored_report_keys(server.state_dir / "registry.duckdb")
        assert len(keys) == len(set(keys))
        # all queued up to each drain arrived; a heartbeat or two of a run's last second may follow
        assert self.queued <= len(keys) <= self.queued + 3 * self.runs, (self.queued, len(keys))


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ServerHandle, Path, Path]]:
    private, public = make_keys(tmp_path)
    server = ServerHandle(tmp_path, public)
    try:
        yield server, private, public
    finally:
        server.close()


def _store_status(server: ServerHandle) -> dict[str, Any]:
    status: dict[str, Any] = server.admin.get("/v1/stores/S001").json()["status"]
    return status


def _publish(server: ServerHandle, root: Path, private: Path, version: int) -> None:
    server.publish(signed_bundle(root, private, version, expires_in=timedelta(days=7)))
    server.promote(version)


def test_agent_clock_a_day_ahead_then_a_day_behind(
    setup: tuple[ServerHandle, Path, Path], tmp_path: Path
) -> None:
    """Agent at +1 day, then -1 day: enrols, updates, refuses what expired for it; reports counted once."""
    server, private, public = setup
    server.start()
    token = server.create_store()
    _publish(server, tmp_path, private, 1)
    agent = AgentHandle(tmp_path, server.url, public, enrollment_token=token)
    agent.drop_sales(sales_frame())
    ledger = Ledger()
    try:
        agent.start(env=skewed("+1d"))
        agent.wait_serving(1, timeout=120)
        assert_one_whole_verified_version(agent, public, {1})
        assert not agent.status()["stale"]
        wait_until(
            lambda: (_store_status(server) or {}).get("active_version") == 1, 20, what="server sees v1"
        )
        assert not _store_status(server)["stale"]
        # A bundle valid for 12 more hours has expired for an agent a day ahead: refused, v1 kept whole.
        server.publish(signed_bundle(tmp_path, private, 2, expires_in=timedelta(hours=12)))
        server.promote(2)
        wait_until(lambda: has_event(agent, "update_rejected", reason="expired"), 30, what="expiry refusal")
        assert_one_whole_verified_version(agent, public, {1})
        ledger.close_run(agent)

        _publish(server, tmp_path, private, 3)
        agent.start(env=skewed("-1d"))
        agent.wait_serving(3, timeout=120)
        assert_one_whole_verified_version(agent, public, {3})
        assert not agent.status()["stale"]
        wait_until(
            lambda: (_store_status(server) or {}).get("active_version") == 3, 30, what="server sees v3"
        )
        ledger.close_run(agent)
    finally:
        agent.close()
    ledger.check(server)


def test_server_clock_a_day_ahead_then_a_day_behind(
    setup: tuple[ServerHandle, Path, Path], tmp_path: Path
) -> None:
    """Server at +1 day, then restarted at -1 day: enrolment, assignments, updates, staleness, one count."""
    server, private, public = setup
    server.env.update(skewed("+1d"))
    server.start()
    token = server.create_store()
    _publish(server, tmp_path, private, 1)
    agent = AgentHandle(tmp_path, server.url, public, enrollment_token=token)
    agent.drop_sales(sales_frame())
    ledger = Ledger()
    try:
        agent.start()
        agent.wait_serving(1, timeout=120)
        assert_one_whole_verified_version(agent, public, {1})
        wait_until(
            lambda: (_store_status(server) or {}).get("active_version") == 1, 20, what="server sees v1"
        )
        assert not _store_status(server)["stale"]

        server.stop()
        server.env.update(skewed("-1d"))
        server.start()
        _publish(server, tmp_path, private, 2)
        agent.wait_serving(2, timeout=120)
        assert_one_whole_verified_version(agent, public, {2})
        wait_until(
            lambda: (_store_status(server) or {}).get("active_version") == 2, 20, what="server sees v2"
        )
        assert not _store_status(server)["stale"] and not agent.status()["stale"]
        ledger.close_run(agent)
    finally:
        agent.close()
    ledger.check(server)
