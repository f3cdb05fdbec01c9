"""Pieces of the sync client and the notify protocol that need no server."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.sync import backoff_seconds
from forecasting.systemd_notify import notify, watchdog_interval_seconds


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    """Delays stay within [base/2, min(cap, base*2^n)], spread out, and never exceed the cap."""
    first = [backoff_seconds(0, 2.0, 60.0) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in first)
    later = [backoff_seconds(4, 2.0, 60.0) for _ in range(200)]
    assert all(1.0 <= d <= 32.0 for d in later) and max(later) > 16.0
    assert len({round(d, 3) for d in later}) > 50  # jittered, not in lockstep
    capped = [backoff_seconds(50, 2.0, 60.0) for _ in range(200)]
    assert max(capped) <= 60.0


def test_notify_sends_one_datagram_and_is_silent_without_a_socket(tmp_path: Path) -> None:
    """notify() writes one datagram to $NOTIFY_SOCKET and returns False when there is none."""
    address = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(5)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": address})
        assert listener.recv(100) == b"READY=1"
    assert not notify("READY=1", environ={})
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_seconds({}) is None
