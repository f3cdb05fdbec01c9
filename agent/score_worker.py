"""``python -m agent.score_worker``: the scoring child process.

The agent daemon never imports the scoring stack (statsforecast, scipy, onnxruntime): it runs this
module as a child, so the daemon's memory stays small and a crash in scoring cannot take the API down.
Importing that stack is slow, so the child stays warm between jobs and exits after ``--idle-seconds``
without work (the daemon starts a new one when needed).

Protocol: one JSON job per line on stdin, one JSON answer per line on the original stdout
(``{"ok": true, "rows": N}`` or ``{"ok": false, "error": "..."}``); everything the scoring code logs or
prints goes to stderr (the agent's own log stream).
"""

from __future__ import annotations

import argparse
import itertools
import os
import select
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agent.errors import ScoringError
from agent.serving import write_serving_index

if TYPE_CHECKING:
    import polars as pl

PROBE_DAYS = 120


class Job(msgspec.Struct, frozen=True, tag_field="kind", tag="score"):
    """One scoring job; an empty ``history`` means: score the built-in probe (the health check)."""

    bundle: str
    history: str
    out: str
    horizon: int
    levels: list[int]
    threads: int = 1
    store_id: str = ""


class ProposalJob(msgspec.Struct, frozen=True, tag_field="kind", tag="proposals"):
    """Order proposals from a served run (its forecasts and error structure) and the exported inventory."""

    forecasts: str
    structure: str
    positions: str
    orders: str
    out: str


STRUCTURE_FILE = "structure.parquet"


def run_job(job: Job | ProposalJob) -> dict[str, int]:
    """Run one job of either kind (see :func:`score_job` and :func:`proposal_job`)."""
    return proposal_job(job) if isinstance(job, ProposalJob) else score_job(job)


def proposal_job(job: ProposalJob) -> dict[str, int]:
    """Write ``job.out`` (Parquet, atomically): one order proposal per item with forecasts and a position."""
    import polars as pl

    from forecasting.replenishment.proposals import proposals

    result = proposals(
        pl.read_parquet(job.forecasts),
        pl.read_parquet(job.structure),
        pl.read_parquet(job.positions),
        pl.read_parquet(job.orders),
    )
    _write_atomically(result, Path(job.out))
    return {"rows": result.height}


def _write_atomically(frame: pl.DataFrame, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    frame.write_parquet(tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(out)


def score_job(job: Job) -> dict[str, int]:
    """Score, check and write ``job.out`` (Parquet, atomically) with ``model_name``/``model_version`` added.

    For a store's history (not the probe) the run's error structure (``structure.parquet``, see
    :mod:`forecasting.replenishment.structure`) is written beside it, for order proposals.
    Returns the numbers of series and rows; the output check (complete, finite, lo <= forecast <= hi)
    raises ``ScoringError`` here, so the daemon never loads the frame to check it.
    """
    import polars as pl

    from forecasting.bundle.format import read_manifest
    from forecasting.bundle.scoring import score

    bundle = Path(job.bundle)
    manifest = read_manifest(bundle)
    if job.history:
        history = pl.read_parquet(job.history)
    else:
        history = probe_history(job.store_id or "PROBE", datetime.now(UTC).date())
    n_series = history.select(pl.struct("store_id", "item_id").n_unique()).item() if history.height else 0
    result = score(bundle, history, horizon=job.horizon, levels=job.levels, threads=job.threads)
    check_output(result, levels=job.levels, horizon=job.horizon, n_series=int(n_series))
    result = result.with_columns(
        pl.lit(manifest.model_name).alias("model_name"),
        pl.lit(int(manifest.version), dtype=pl.Int32).alias("model_version"),
    )
    out = Path(job.out)
    if job.history:
        _write_structure(bundle, history, result, out.parent / STRUCTURE_FILE)
    _write_atomically(result, out)
    if job.history:
        write_serving_index(out.parent, out)
    return {"rows": result.height, "series": int(n_series)}


def _write_structure(bundle: Path, history: pl.DataFrame, forecasts: pl.DataFrame, out: Path) -> None:
    """The run's error structure for order proposals; a failure here is logged and never fails the
    scoring (the run is served, and its proposals fail with a missing file until the next scoring)."""
    from forecasting.common.logs import get_logger
    from forecasting.replenishment.structure import error_structure

    try:
        _write_atomically(error_structure(bundle, history, forecasts), out)
    except Exception as exc:  # forecasts are served whatever happens on the replenishment side
        get_logger("agent.score_worker").error("structure_failed", reason=f"{type(exc).__name__}: {exc}")


def check_output(frame: pl.DataFrame, *, levels: list[int], horizon: int, n_series: int) -> None:
    """Complete, finite and ordered forecasts, or ``ScoringError`` saying what is wrong."""
    import polars as pl

    needed = ["store_id", "item_id", "ds", "forecast"]
    for level in levels:
        needed += [f"forecast-lo-{level}", f"forecast-hi-{level}"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ScoringError(f"scoring output lacks column(s) {', '.join(missing)}")
    if frame.height != n_series * horizon:
        raise ScoringError(f"scoring output has {frame.height} rows, expected {n_series} series x {horizon}")
    values = frame.select(pl.col("forecast"), *[pl.col(c) for c in needed[4:]])
    if values.null_count().sum_horizontal().item() or not all(
        values[c].is_finite().all() for c in values.columns
    ):
        raise ScoringError("scoring output has missing or non-finite values")
    # Bounds in order and intervals nested. The mean itself may lie outside a count law's interval: an
    # intermittent item forecast 0.3 a day has 0 as its 80 % upper bound when nine days in ten sell nothing.
    ordered = sorted(levels)
    for level in ordered:
        bad = frame.filter(pl.col(f"forecast-lo-{level}") > pl.col(f"forecast-hi-{level}") + 1e-9).height
        if bad:
            raise ScoringError(f"{bad} rows have their {level}% lower bound above the upper bound")
    for narrow, wide in itertools.pairwise(ordered):
        bad = frame.filter(
            (pl.col(f"forecast-lo-{wide}") > pl.col(f"forecast-lo-{narrow}") + 1e-9)
            | (pl.col(f"forecast-hi-{narrow}") > pl.col(f"forecast-hi-{wide}") + 1e-9)
        ).height
        if bad:
            raise ScoringError(f"{bad} rows have their {narrow}% interval outside their {wide}% interval")


def probe_history(store_id: str, today: date) -> pl.DataFrame:
    """The built-in probe: two weekly-seasonal series and an intermittent one, deterministic."""
    import math

    import polars as pl

    start = today - timedelta(days=PROBE_DAYS)
    rows: dict[str, list[Any]] = {"store_id": [], "item_id": [], "category": [], "ds": [], "y": []}
    for item, category, level in (
        ("PROBE-1", "probe", 20.0),
        ("PROBE-2", "probe", 5.0),
        ("PROBE-3", "probe", 0.0),
    ):
        for day in range(PROBE_DAYS):
            if level:
                value = level * (1 + 0.3 * math.sin(2 * math.pi * day / 7)) + (day % 3)
            else:
                value = 1.0 if day % 9 == 0 else 0.0
            rows["store_id"].append(store_id)
            rows["item_id"].append(item)
            rows["category"].append(category)
            rows["ds"].append(start + timedelta(days=day))
            rows["y"].append(round(value, 3))
    return pl.DataFrame(rows, schema_overrides={"ds": pl.Date})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.score_worker")
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints and logs of the scoring stack go to stderr, not into the protocol
    from forecasting.common.logs import configure_logging

    configure_logging("warning", "json")
    import forecasting.bundle.scoring  # noqa: F401 - warm up: the scoring stack imports slowly

    decoder = msgspec.json.Decoder(Job | ProposalJob)
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], args.idle_seconds)
        if not readable:
            return 0
        line = sys.stdin.readline()
        if not line:
            return 0
        answer: dict[str, Any]
        try:
            answer = {"ok": True, **run_job(decoder.decode(line.encode()))}
        except Exception as exc:  # every failure is reported to the daemon as one line
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answers.write(msgspec.json.encode(answer).decode() + "\n")


if __name__ == "__main__":
    sys.exit(main())
