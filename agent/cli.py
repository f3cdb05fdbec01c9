"""``shelfcast agent ...``: run the store agent."""

from __future__ import annotations

import click


@click.group()
def agent() -> None:
    """Run and inspect the store agent."""
