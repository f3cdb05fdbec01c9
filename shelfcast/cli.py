"""The ``shelfcast`` console script: wires the subcommands of forecasting, server and agent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from agent import cli as agent_cli
from agent.config import AgentConfig
from agent.errors import AgentError
from forecasting.commands import bundle as bundle_cli
from forecasting.commands import train as forecasting_cli
from forecasting.common.config import TrainConfig
from forecasting.common.errors import ForecastingError
from forecasting.common.logs import configure_logging
from forecasting.common.settings import file_errors
from server import admin_cli, fleet_cli
from server import cli as server_cli
from server.config import ServerConfig
from server.errors import ServerError
from server.quality import cli as monitoring_cli
from server.retraining import cli as retraining_cli
from server.rollouts import cli as rollouts_cli
from server.rollouts.plan import RolloutPlan, plan_problems
from shelfcast import __version__
from shelfcast import demo as demo_cmd
from shelfcast import replenish as replenish_cmd
from shelfcast import simulate as simulate_cmd

CONFIG_KINDS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "agent": AgentConfig,
    "train": TrainConfig,
    "rollout": RolloutPlan,
}


class ShelfcastGroup(click.Group):
    """Turns the packages' own errors into one clear sentence on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ForecastingError, ServerError, AgentError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=ShelfcastGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shelfcast")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level for commands that do not read it from their config.",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
    help="auto: readable on a terminal, JSON lines otherwise.",
)
def cli(log_level: str, log_format: str) -> None:
    """shelfcast: demand forecasting for retail stores, trained centrally, served at the edge.

    Run `shelfcast demo` to see a server and three store agents at work on loopback.
    """
    configure_logging(log_level, log_format)  # type: ignore[arg-type]


@cli.group()
def config() -> None:
    """Check configuration files."""


@config.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(sorted(CONFIG_KINDS)),
    default=None,
    help="Which component the file configures (default: guessed from the file's sections or name).",
)
def config_check(file: Path, kind: str | None) -> None:
    """Validate FILE: every unknown key, wrong type and out-of-range value, each with its field path."""
    chosen = kind or _guess_kind(file)
    config, errors = file_errors(CONFIG_KINDS[chosen], file)
    if isinstance(config, RolloutPlan):
        errors = [f"{file}: {problem}" for problem in plan_problems(config)]
    if errors:
        for error in errors:
            click.echo(f"error: {error}", err=True)
        click.echo(f"{file}: {len(errors)} error(s) in this {chosen} config", err=True)
        sys.exit(1)
    click.echo(f"{file}: valid {chosen} config")


def _guess_kind(file: Path) -> str:
    from forecasting.common.settings import read_toml

    sections = set(read_toml(file))
    for name in CONFIG_KINDS:
        if name in file.stem:
            return name
    if sections & {"data", "train"}:
        return "train"
    if sections & {"agent", "api", "scoring"}:
        return "agent"
    if "server" in sections:
        return "server"
    if "waves" in sections:
        return "rollout"
    raise click.UsageError(f"{file}: cannot tell which component it configures; pass --kind")


cli.add_command(forecasting_cli.data)
cli.add_command(forecasting_cli.backtest_cmd)
cli.add_command(forecasting_cli.train_cmd)
for key_command in fleet_cli.KEY_COMMANDS:
    bundle_cli.keys.add_command(key_command)
cli.add_command(bundle_cli.keys)
cli.add_command(bundle_cli.bundle)
cli.add_command(bundle_cli.score_cmd)
cli.add_command(server_cli.server)
for admin_group in admin_cli.ADMIN_GROUPS:
    cli.add_command(admin_group)
cli.add_command(agent_cli.agent)
cli.add_command(monitoring_cli.accuracy)
cli.add_command(monitoring_cli.drift)
cli.add_command(monitoring_cli.replenishment)
cli.add_command(monitoring_cli.alerts)
cli.add_command(retraining_cli.retrain)
cli.add_command(rollouts_cli.rollouts)
cli.add_command(demo_cmd.demo)
cli.add_command(simulate_cmd.simulate)
cli.add_command(replenish_cmd.replenish)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="shelfcast")
