"""``shelfcast server ...``: run the central server."""

from __future__ import annotations

import click


@click.group()
def server() -> None:
    """Run and administer the central server."""
