"""Shared click options and the forecasting commands (data, train, score)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def output_option(func: F) -> F:
    """``-o table|json`` for every listing command."""
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Print a table for people or JSON for programs.",
    )(func)


def config_option(func: F) -> F:
    """``--config FILE`` (repeatable; later files override earlier ones)."""
    return click.option(
        "--config",
        "config_files",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        multiple=True,
        help="TOML config file (repeatable; later files win; SHELFCAST_<SECTION>__<KEY> overrides all).",
    )(func)


@click.group()
def data() -> None:
    """Generate, validate and inspect sales data."""
