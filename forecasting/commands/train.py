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
    from forecasting.data.frames import frame_format, write_frame
    from forecasting.data.synthetic import generate

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


# --- data validate, backtest, train ---------------------------------------------------------------------


def _data_option(func: F) -> F:
    return click.option(
        "--data",
        "data_file",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Sales extract (CSV, CSV.gz or Parquet), mapped to the canonical frame by the [data] section.",
    )(func)


def _load_config(config_files: tuple[Path, ...]) -> Any:
    from forecasting.common.config import load_train_config

    return load_train_config(list(config_files))


@data.command("validate")
@config_option
@_data_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for validation.json, validation.txt and quarantine.csv [default: ./<data name>.validation].",
)
@click.option("--strict", is_flag=True, help="Fail (exit 1) when any row is quarantined.")
@output_option
def validate_cmd(
    config_files: tuple[Path, ...], data_file: Path, out_dir: Path | None, strict: bool, output: str
) -> None:
    """Check a sales extract: every broken rule counted, bad rows quarantined with their line numbers.

    Exits non-zero only when nothing usable remains, or with --strict when any row was quarantined.
    """
    from forecasting.common.tables import render
    from forecasting.data.validation import load_canonical, render_text, require_usable, write_reports

    cfg = _load_config(config_files)
    result = load_canonical(data_file, cfg.data)
    target = out_dir or Path(f"{data_file.name.split('.')[0]}.validation")
    paths = write_reports(result, target)
    if output == "json":
        import msgspec

        click.echo(render(msgspec.to_builtins(result.report), "json"))
    else:
        click.echo(render_text(result.report), nl=False)
        click.echo(f"reports: {paths['json']}, {paths['text']}; quarantined rows: {paths['quarantine']}")
    require_usable(result, strict=strict)


def _validated_frame(cfg: Any, data_file: Path, report_dir: Path, strict: bool = False) -> Any:
    from forecasting.data.validation import load_canonical, require_usable, write_reports

    result = load_canonical(data_file, cfg.data)
    write_reports(result, report_dir)
    require_usable(result, strict=strict)
    return result.frame


@click.command("backtest")
@config_option
@_data_option
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder."
)
@click.option("--strict", is_flag=True, help="Refuse data with quarantined rows.")
@output_option
def backtest_cmd(
    config_files: tuple[Path, ...], data_file: Path, out_dir: Path, strict: bool, output: str
) -> None:
    """Rolling-origin backtest of the candidate models: metric tables (CSV, JSON), selection and plots."""
    from forecasting.common.tables import render
    from forecasting.models.families import check_candidates
    from forecasting.training import metrics, plots
    from forecasting.training.backtest import run_backtest, with_unique_id
    from forecasting.training.pipeline import write_tables
    from forecasting.training.selection import select_models

    cfg = _load_config(config_files)
    check_candidates(cfg.train)
    frame = _validated_frame(cfg, data_file, out_dir, strict)
    result = run_backtest(frame, cfg.train, cfg.data.freq)
    selection = select_models(
        result,
        metric=cfg.train.metric,
        by=cfg.train.select_by,
        fallback=cfg.train.fallback,
        top_k=cfg.train.ensemble_top_k,
        season_length=cfg.train.scale_seasonality,
        min_improvement=cfg.train.series_min_improvement,
        min_windows=cfg.train.series_min_windows,
    )
    write_tables(result, selection, out_dir)
    plots.plot_series(result, selection, with_unique_id(frame), out_dir / "forecasts.png")
    plots.plot_errors(result, selection, out_dir / "errors_by_category.png")
    overall = metrics.aggregate(result.series_metrics)
    rows = [
        {
            k: v
            for k, v in r.items()
            if k in {"model", "series", "mae", "wape", "smape", "mase", "rmsse", "wmae"}
        }
        for r in overall.iter_rows(named=True)
    ]
    click.echo(render(rows, "json" if output == "json" else "table"))
    if output == "table":
        wins = selection.table["selected"].value_counts().sort("count", descending=True)
        summary = ", ".join(f"{r['selected']} x{r['count']}" for r in wins.iter_rows(named=True))
        click.echo(f"selected per {selection.by} by {selection.metric}: {summary}")
        click.echo(f"tables and plots in {out_dir}")


@click.command("train")
@config_option
@_data_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Bundle folder to create (the run record goes to <DIR>.run/ beside it).",
)
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="ed25519 private key (`shelfcast keys generate`); default: a new key in <DIR>.run/.",
)
@click.option("--model-name", default=None, help="Model name [default: [train] model_name].")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--strict", is_flag=True, help="Refuse data with quarantined rows.")
def train_cmd(
    config_files: tuple[Path, ...],
    data_file: Path,
    out_dir: Path,
    signing_key: Path | None,
    model_name: str | None,
    version: int,
    strict: bool,
) -> None:
    """Backtest, select per category, fit on all data and write a signed model bundle plus its run record."""
    from forecasting.training.pipeline import train, write_run

    cfg = _load_config(config_files)
    run_dir = out_dir.parent / f"{out_dir.name}.run"
    frame = _validated_frame(cfg, data_file, run_dir / "validation", strict)
    if signing_key is None:
        from forecasting.bundle.signing import generate_key_files

        signing_key, _, _ = generate_key_files(run_dir / "signing.key", overwrite=True)
        click.echo(f"warning: no --signing-key; signed with a new key {signing_key}", err=True)
    result = train(frame, cfg)
    _echo_selection(result.selection)
    record = write_run(result, out_dir, signing_key=signing_key, model_name=model_name, version=version)
    models = ", ".join(f"{k} x{v}" for k, v in record["selection"]["models"].items())
    click.echo(f"bundle {out_dir} ({record['model_name']} v{record['version']}, run {record['run_id']})")
    click.echo(f"series per model: {models}")
    click.echo(f"run record {run_dir / 'run.json'}")


def _echo_selection(selection: Any) -> None:
    """Per group: the winner, the runner-up and the winner's margin over it (the evidence of the choice)."""
    from forecasting.common.tables import render
    from forecasting.training.selection import summary_rows

    rows = summary_rows(selection)
    per = "category" if selection.categories is not None else selection.by
    click.echo(f"selection per {per} by backtest {selection.metric} (margin: winner better than runner-up):")
    click.echo(render(rows, "table"))
    if selection.categories is not None:
        own = int((selection.assignment["reason"] == "series").sum())
        click.echo(
            f"{own} of {selection.assignment.height} series keep their own winner "
            "(the rest take their category's choice: thin evidence)"
        )
