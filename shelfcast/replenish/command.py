"""The ``shelfcast replenish`` commands: ``simulate`` replays a history with real agents ordering."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec

from shelfcast.replenish.options import ReplenishOptions, check_options
from shelfcast.replenish.replay import run_replenishment
from shelfcast.replenish.report import render_report
from shelfcast.simulate.command import log_to_file
from shelfcast.simulate.options import SimulationError


@click.group()
def replenish() -> None:
    """Order proposals from the store agents, replayed against real sales."""


@replenish.command("simulate")
@click.option(
    "--config",
    "config_files",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="Training config (repeatable; later files win): its [data] reads --data, its [train] trains the "
    "agents' model on the history before the window.",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Sales extract, read with the config's [data] mapping.",
)
@click.option(
    "--service-level", type=float, default=0.95, show_default=True, help="Target cycle service level."
)
@click.option(
    "--lead-time", type=int, required=True, help="Periods (days or weeks of the data) from order to arrival."
)
@click.option("--review-period", type=int, default=1, show_default=True, help="Periods between orders.")
@click.option(
    "--periods", type=int, default=13, show_default=True, help="The last N dates of the data are replayed."
)
@click.option("--stores", type=click.IntRange(min=1), default=None, help="The first N stores (default: all).")
@click.option("--items", type=click.IntRange(min=1), default=None, help="The first N items of each store.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".shelfcast/replenish"),
    show_default=True,
    help="Folder for the model, server and agent state, logs and ledgers (emptied first).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def simulate(
    config_files: tuple[Path, ...],
    data_path: Path,
    service_level: float,
    lead_time: int,
    review_period: int,
    periods: int,
    stores: int | None,
    items: int | None,
    state_dir: Path,
    output: str,
) -> None:
    """Replay the last --periods of a sales history with one real agent process per store ordering.

    Every period each store posts its items' stock and open orders to its agent, orders what the agent
    proposes (arriving --lead-time periods later), and sells the period's real sales from the shelf; sales
    beyond the stock are lost. Reports the achieved cycle service level, fill rate, average stock and
    stock-outs per category, next to a classic policy from the same forecasts (at the same achieved
    service level) and to perfect foresight. Ledgers of every item and period land in the state folder.

    Example (two m5_mini stores, a week's lead time, the last 28 days; it trains the shipped m5 config,
    a few minutes, so CI runs the command on one Walmart store with a small config instead):

    \b
        shelfcast replenish simulate --config configs/m5.toml --data m5_mini/sales_d1-d1885.csv \\
          --service-level 0.95 --lead-time 7 --periods 28 --stores 2 -o json
    """
    import shutil

    options = ReplenishOptions(
        config_files=list(config_files),
        data_path=data_path,
        state_dir=state_dir.resolve(),
        service_level=service_level,
        lead_time=lead_time,
        review_period=review_period,
        periods=periods,
        stores=stores,
        items=items,
        on_progress=(lambda message: click.echo(message, err=True)) if output == "table" else None,
    )
    try:
        check_options(options)
    except SimulationError as exc:
        raise click.UsageError(str(exc)) from None
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    log_to_file(options.state_dir / "logs" / "replenish.log")
    report = run_replenishment(options)
    if output == "json":
        click.echo(msgspec.json.encode(report).decode())
        return
    click.echo(render_report(report))
