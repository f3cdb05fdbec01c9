"""The worker side of a retraining run: child processes, their log, and the data they train on.

A run is two child processes of the server, one after the other, writing to one log file:

1. ``python -m server.retraining.worker prepare``: the central dataset version's Parquet files (listed in
   ``inputs.json``) become one canonical ``data.parquet`` (``store_id`` from the partition folder; a row sent
   again in a later batch replaces the earlier one).
2. ``python -m shelfcast train --data data.parquet --out bundle ...``: the training command itself.

Nothing here runs in the server's event loop: :class:`ChildProcess` is waited on by the retraining thread.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import msgspec

LOG_FILE = "run.log"


def prepare(inputs: Path, out: Path) -> int:
    """Concatenate the dataset's files into one canonical frame at ``out``; return its row count."""
    import polars as pl

    spec = msgspec.json.decode(inputs.read_bytes())
    root = Path(spec["root"])
    frames = []
    for order, name in enumerate(spec["files"]):
        store = Path(name).parts[0].removeprefix("store_id=")
        frames.append(
            pl.read_parquet(root / name)
            .select("item_id", "category", "ds", "y")
            .with_columns(pl.lit(store).alias("store_id"), pl.lit(order).alias("_order"))
        )
    if not frames:
        raise SystemExit("the central dataset holds no files")
    frame = (
        pl.concat(frames, how="vertical_relaxed")
        .sort("_order")
        .unique(["store_id", "item_id", "ds"], keep="last", maintain_order=True)
        .select("store_id", "item_id", "category", "ds", "y")
        .sort("store_id", "item_id", "ds")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out)
    return frame.height


class ChildProcess:
    """One child process in its own session, its output appended to the run's log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, deadline: float, stopping: threading.Event) -> int:
        """Start, wait until it exits, the monotonic ``deadline`` passes or ``stopping.is_set()``."""
        with self.log_path.open("ab") as log:
            log.write(("$ " + " ".join(self.args[1:]) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules, fixed arguments
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        while True:
            try:
                return self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if stopping.is_set():
                self.kill()
                raise InterruptedError("the server stopped before the run finished")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("the run exceeded [retraining] timeout_seconds")

    def kill(self) -> None:
        """SIGTERM the child's process group, SIGKILL after 5 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def python_command(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def tail(path: Path, lines: int, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file (reading at most its last ``max_bytes``)."""
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(size - max_bytes, 0))
        data = fh.read().decode("utf-8", errors="replace")
    return "\n".join(deque(data.splitlines(), maxlen=lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server.retraining.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="central dataset files -> one canonical Parquet file")
    prep.add_argument("--inputs", type=Path, required=True)
    prep.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    rows = prepare(args.inputs, args.out)
    sys.stdout.write(f"prepared {args.out}: {rows} rows in {time.perf_counter() - began:.2f} s\n")


if __name__ == "__main__":
    main()
