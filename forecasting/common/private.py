"""What the server and the agent write is private to their user, whatever umask they were started with."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077  # files 0600, folders 0700 (unless created with an explicit mode)


def private_files() -> None:
    """From now on, files and folders this process creates are readable by its user only.

    Called by the ``server`` and ``agent`` commands before they touch any state: DuckDB creates its
    database and write-ahead log with the process umask, and so do backups, blobs and scoring runs.
    """
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` as a folder of mode 0700 (created if missing, tightened if it existed)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path
