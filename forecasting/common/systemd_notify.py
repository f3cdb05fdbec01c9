"""systemd's notify protocol: datagrams such as ``READY=1`` or ``WATCHDOG=1`` on ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket


def notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send one notify message; False when not started by systemd (no ``$NOTIFY_SOCKET``) or on error."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval_seconds(environ: dict[str, str] | None = None) -> float | None:
    """Half of systemd's ``WatchdogSec`` (``$WATCHDOG_USEC``), when it applies to this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
