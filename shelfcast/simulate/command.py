"""The ``shelfcast simulate`` command: options to a :class:`SimulationOptions`, the report as a table or
JSON."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec

from shelfcast.simulate.options import Candidate, SimulationError, SimulationOptions
from shelfcast.simulate.replay import run_simulation
from shelfcast.simulate.report import render_summary


def log_to_file(path: Path, level: str = "info") -> None:
    """Send this process's structlog lines (the in-process agents' too) to ``path`` as JSON lines.

    For the commands that run many agents in one process: their logs would drown the summary on stdout.
    """
    import logging

    import structlog

    path.parent.mkdir(parents=True, exist_ok=True)
    stream = path.open("a", encoding="utf-8")  # stays open for the rest of the process
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _candidate(value: str) -> Candidate:
    """``1.3`` or ``1.3:LABEL``: a candidate whose forecasts are the champion's times the factor."""
    factor, _, label = value.partition(":")
    try:
        return Candidate(multiply=float(factor), label=label)
    except ValueError:
        raise click.BadParameter(f"expected FACTOR[:LABEL], e.g. 1.0 or 1.3:bad, got {value!r}") from None


def _candidate_bundle(value: str) -> Candidate:
    """``DIR`` or ``DIR:LABEL``: a trained bundle rolled out as it forecasts."""
    folder, _, label = value.partition(":")
    path = Path(folder)
    if not (path / "manifest.json").is_file():
        raise click.BadParameter(f"{folder!r} is not a bundle folder (no manifest.json)")
    return Candidate(bundle=path, label=label)


def _candidate_models(value: str) -> Candidate:
    """``MODEL[,MODEL...][:LABEL]``: a candidate the simulation trains on the champion's history."""
    models, _, label = value.partition(":")
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise click.BadParameter(f"expected MODEL[,MODEL...][:LABEL], e.g. Naive:worse, got {value!r}")
    return Candidate(models=names, label=label)


def _candidate_train(value: str) -> Candidate:
    """``FILE`` or ``FILE:LABEL``: a candidate trained like the champion with the file's ``[train]`` table
    laid over the champion's training settings."""
    import tomllib

    name, _, label = value.partition(":")
    path = Path(name)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("train")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{name}: {exc}") from None
    if not isinstance(table, dict) or not table:
        raise click.BadParameter(f"{name}: no [train] table of settings to override")
    try:
        return Candidate(train=table, label=label)
    except SimulationError as exc:
        raise click.BadParameter(f"{name}: {exc}") from None


@click.command("simulate")
@click.option("--source", type=click.Choice(["synthetic", "walmart"]), default="synthetic", show_default=True)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="walmart: the folder holding train.csv.gz and stores.csv.",
)
@click.option("--stores", type=int, default=None, help="Stores (walmart: the first N of 45; synthetic: 12).")
@click.option("--departments", type=int, default=6, show_default=True, help="walmart: complete departments.")
@click.option("--items", type=int, default=12, show_default=True, help="synthetic: items per store.")
@click.option(
    "--freq", type=click.Choice(["D", "W"]), default="W", show_default=True, help="synthetic periods."
)
@click.option("--periods", type=int, default=12, show_default=True, help="Periods replayed at most.")
@click.option("--horizon", type=int, default=4, show_default=True, help="Periods each scoring forecasts.")
@click.option(
    "--agent-history",
    type=int,
    default=None,
    help="Periods of history each agent starts with (default: all).",
)
@click.option(
    "--seed",
    type=int,
    default=7,
    show_default=True,
    help="Seed of the synthetic data, of each rollout's wave draw and of the replay noise.",
)
@click.option(
    "--replay-noise",
    type=float,
    default=0.0,
    show_default=True,
    help="Replayed sales times seeded lognormal noise of this coefficient of variation (0: as they are).",
)
@click.option("--model-name", default="demand", show_default=True)
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    help="FACTOR[:LABEL]: roll out the champion re-signed with forecasts x FACTOR (repeatable, in order).",
)
@click.option(
    "--candidate-bundle",
    "candidate_bundles",
    multiple=True,
    help="DIR[:LABEL]: roll out a trained bundle (repeatable; after the --candidate ones).",
)
@click.option(
    "--candidate-models",
    "candidate_models",
    multiple=True,
    help="MODEL[,MODEL...][:LABEL]: roll out a candidate trained like the champion with these models "
    "(repeatable; after the --candidate-bundle ones).",
)
@click.option(
    "--candidate-train",
    "candidate_trains",
    multiple=True,
    help="FILE[:LABEL]: roll out a candidate trained like the champion with FILE's [train] table (TOML, "
    "e.g. models, windows, ensemble_top_k) laid over the champion's settings (repeatable; last).",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rollout plan (TOML); default: three waves 20/50/100 % with short bakes.",
)
@click.option("--agent-processes", type=int, default=0, show_default=True, help="Agents run as processes.")
@click.option("--engine-interval", type=float, default=0.5, show_default=True, help="Own server: seconds.")
@click.option("--server-url", default="", help="Join this server instead of starting one.")
@click.option("--admin-token", envvar="SHELFCAST_TOKEN", default="", help="Admin token of --server-url.")
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Private key the joined server trusts (default: a new key pair, trusted by the own server).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".shelfcast/simulate"),
    show_default=True,
    help="Folder for data, models, server and agent state (emptied first).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def simulate(
    source: str,
    data_path: Path | None,
    stores: int | None,
    departments: int,
    items: int,
    freq: str,
    periods: int,
    horizon: int,
    agent_history: int | None,
    seed: int,
    replay_noise: float,
    model_name: str,
    candidates: tuple[str, ...],
    candidate_bundles: tuple[str, ...],
    candidate_models: tuple[str, ...],
    candidate_trains: tuple[str, ...],
    plan_file: Path | None,
    agent_processes: int,
    engine_interval: float,
    server_url: str,
    admin_token: str,
    signing_key: Path | None,
    state_dir: Path,
    output: str,
) -> None:
    """Replay a sales history period by period for a fleet of real agents and a real server.

    Each --candidate is rolled out in turn with the plan; the summary shows every rollout's outcome.
    """
    import shutil

    rollouts = [
        *(_candidate(c) for c in candidates),
        *(_candidate_bundle(c) for c in candidate_bundles),
        *(_candidate_models(c) for c in candidate_models),
        *(_candidate_train(c) for c in candidate_trains),
    ]
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    log_to_file(state_dir / "logs" / "simulate.log")
    options = SimulationOptions(
        state_dir=state_dir,
        source=source,  # type: ignore[arg-type]
        data_path=data_path,
        stores=stores,
        departments=departments,
        items=items,
        freq=freq,  # type: ignore[arg-type]
        periods=periods,
        horizon=horizon,
        agent_history_periods=agent_history,
        seed=seed,
        replay_noise=replay_noise,
        model_name=model_name,
        candidates=rollouts,
        plan_file=plan_file,
        agent_processes=agent_processes,
        engine_interval_seconds=engine_interval,
        server_url=server_url,
        admin_token=admin_token,
        signing_key=signing_key,
    )
    report = run_simulation(options)
    if output == "json":
        click.echo(msgspec.json.encode(report).decode())
        return
    click.echo(render_summary(report))
