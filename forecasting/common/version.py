"""The installed shelfcast version, as the package metadata says: what agents report in heartbeats and
``/metrics``, what the agent's API schema and a training run's lineage name.

``shelfcast/__init__.py`` keeps the literal ``__version__`` that the build reads; the packages below the
CLI read the installed metadata here instead of importing ``shelfcast``.
"""

from __future__ import annotations

import importlib.metadata
from functools import cache


@cache
def shelfcast_version() -> str:
    """The installed distribution's version; ``"unknown"`` when shelfcast is not installed."""
    try:
        return importlib.metadata.version("shelfcast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
