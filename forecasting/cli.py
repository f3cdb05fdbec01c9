"""Shared click options and the forecasting commands (data, train, score)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
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


@data.command("generate")
@click.option("--stores", type=click.IntRange(min=1), default=3, show_default=True, help="Number of stores.")
@click.option("--items", type=click.IntRange(min=1), default=100, show_default=True, help="Items per store.")
@click.option(
    "--days", type=click.IntRange(min=1), default=730, show_default=True, help="History length in days."
)
@click.option(
    "--freq",
    type=click.Choice(["D", "W"]),
    default="D",
    show_default=True,
    help="D: one row per day; W: weekly sums labelled by their Monday (days // 7 weeks).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default="2023-01-01",
    show_default=True,
    help="First day of the history.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output file: .parquet/.pq or .csv.",
)
def generate_command(
    stores: int, items: int, days: int, freq: str, seed: int, start: datetime, out: Path
) -> None:
    """Write synthetic retail sales (the canonical frame store_id, item_id, category, ds, y).

    Categories with different levels, weekly and yearly seasonality, trend, holidays and promotions
    (is_holiday, on_promo columns), intermittent items and rare returns (negative y). Deterministic per seed.
    """
    from forecasting.frames import frame_format, write_frame
    from forecasting.synthetic import generate

    frame_format(out)  # fail on a bad extension before spending time generating
    began = time.perf_counter()
    frame = generate(stores, items, days, freq="W" if freq == "W" else "D", seed=seed, start=start.date())
    generated = time.perf_counter()
    write_frame(frame, out)
    done = time.perf_counter()
    first, last = frame["ds"].min(), frame["ds"].max()
    click.echo(
        f"wrote {out}: {frame.height:,} rows, {stores * items:,} series, {first!s}..{last!s} ({freq}), "
        f"{done - began:.2f} s (generate {generated - began:.2f} s, write {done - generated:.2f} s)"
    )
