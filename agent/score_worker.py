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
import os
import select
import sys
from pathlib import Path
from typing import Any

import msgspec


class Job(msgspec.Struct, frozen=True):
    bundle: str
    history: str
    out: str
    horizon: int
    levels: list[int]
    threads: int = 1


def run_job(job: Job) -> int:
    """Score and write ``job.out`` (Parquet, atomically) with ``model_name``/``model_version`` columns."""
    import polars as pl

    from forecasting.bundle import read_manifest
    from forecasting.scoring import score

    bundle = Path(job.bundle)
    manifest = read_manifest(bundle)
    history = pl.read_parquet(job.history)
    result = score(bundle, history, horizon=job.horizon, levels=job.levels, threads=job.threads)
    result = result.with_columns(
        pl.lit(manifest.model_name).alias("model_name"),
        pl.lit(int(manifest.version), dtype=pl.Int32).alias("model_version"),
    )
    out = Path(job.out)
    tmp = out.with_name(f".{out.name}.tmp")
    result.write_parquet(tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(out)
    return result.height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.score_worker")
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints and logs of the scoring stack go to stderr, not into the protocol
    from forecasting.logs import configure_logging

    configure_logging("warning", "json")
    import forecasting.scoring  # noqa: F401 - warm up: the scoring stack imports slowly

    decoder = msgspec.json.Decoder(Job)
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], args.idle_seconds)
        if not readable:
            return 0
        line = sys.stdin.readline()
        if not line:
            return 0
        answer: dict[str, Any]
        try:
            rows = run_job(decoder.decode(line.encode()))
            answer = {"ok": True, "rows": rows}
        except Exception as exc:  # every failure is reported to the daemon as one line
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answers.write(msgspec.json.encode(answer).decode() + "\n")


if __name__ == "__main__":
    sys.exit(main())
