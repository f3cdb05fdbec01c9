"""``shelfcast demo``: a server and three store agents on loopback, end to end."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Start a server and three agents on loopback, train, publish and pull forecasts over HTTP."""
