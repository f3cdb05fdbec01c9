"""Shared fixtures: the real data folder (required in CI) and free loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SHELFCAST_TEST_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; in CI its absence is a failure, elsewhere the test is skipped."""
    if not (SHARED_DATA / "README.md").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real test data missing at {SHARED_DATA} (required when CI is set)")
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
