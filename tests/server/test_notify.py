"""systemd's notify protocol from a real server process: READY once listening, WATCHDOG, STOPPING."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.server.conftest import launch


def test_server_sends_ready_watchdog_and_stopping(tmp_path: Path, signing_key: Path) -> None:
    """Under systemd the server sends READY=1 once listening, then WATCHDOG=1, then STOPPING=1."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(30)
        running = launch(tmp_path / "srv", signing_key, {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        try:
            messages = [listener.recv(4096).decode()]
            assert "READY=1" in messages[0]
            with running.client() as client:
                assert client.get("/livez").status_code == 200
            for _ in range(50):  # bounded: WATCHDOG comes every 0.2 s
                messages.append(listener.recv(4096).decode())
                if "WATCHDOG=1" in messages[-1]:
                    break
            assert "WATCHDOG=1" in messages[-1]
        finally:
            running.process.stop()
        for _ in range(50):
            messages.append(listener.recv(4096).decode())
            if "STOPPING=1" in messages[-1]:
                break
        assert "STOPPING=1" in messages[-1]
