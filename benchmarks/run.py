"""Run benchmark suites and report their figures and their ratios against baselines measured in the same run.

    python benchmarks/run.py [SUITE ...] [--tiny] [--results FILE] [--check] [--update-doc] [-- PYTEST_ARGS]

SUITE is a suite name (``synthetic`` for ``benchmarks/bench_synthetic.py``) or a suite file; none means all.
The suites run under pytest-benchmark (``--benchmark-enable --benchmark-json``); each test's figures come
from its ``extra_info`` (see ``benchmarks/conftest.py``). The table goes to stdout and the rows to
``benchmarks/results.json``: a list of ``{suite, figure, value, unit, baseline, ratio, target, met}``.
Rows of the suites that ran replace their previous rows; other suites' rows are kept.

``--tiny`` runs the suites' tiny sizes (a check of the harness; results are written only with --results).
``--check`` exits 1 when a target is not met. ``--update-doc`` rewrites the figures table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import operator
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
DOC = ROOT / "BENCHMARKS.md"
DOC_BEGIN, DOC_END = (
    "<!-- figures:begin (written by benchmarks/run.py --update-doc) -->",
    "<!-- figures:end -->",
)
SIZE_ENV = "SHELFCAST_BENCH_SIZE"
TARGET_RE = re.compile(r"\s*(value|ratio)\s*(<=|>=|<|>)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*")
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}
# pytest plugins that come with dependencies, import heavy modules (pandas, ...) at start and serve no suite.
UNUSED_PLUGINS = ("fugue_test", "fugue_test_fixtures", "faker", "hypothesispytest")
FIELDS = ("suite", "figure", "value", "unit", "baseline", "ratio", "target", "met")


@dataclass
class Row:
    """One figure of one suite, as written to results.json."""

    suite: str
    figure: str
    value: float
    unit: str
    baseline: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None


def available_suites() -> dict[str, Path]:
    """Suite name -> file, for every ``benchmarks/bench_*.py``."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def resolve(names: Sequence[str]) -> list[Path]:
    """Suite names or files to files; raises ValueError naming the unknown ones."""
    suites = available_suites()
    if not names:
        return list(suites.values())
    files = []
    for name in names:
        path = Path(name)
        if path.suffix == ".py" and path.is_file():
            files.append(path.resolve())
        elif name in suites:
            files.append(suites[name])
        else:
            raise ValueError(f"unknown suite {name!r} (available: {', '.join(suites) or 'none'})")
    return files


def suite_of(fullname: str) -> str:
    """``benchmarks/bench_synthetic.py::test_x`` -> ``synthetic``."""
    return Path(fullname.split("::", 1)[0]).stem.removeprefix("bench_")


def rows_from_report(report: dict[str, Any]) -> list[Row]:
    """Rows from pytest-benchmark's JSON report, with ratios and targets evaluated."""
    rows: list[Row] = []
    for bench in report.get("benchmarks", []):
        suite = suite_of(bench["fullname"])
        info = bench.get("extra_info") or {}
        default = {"figure": bench["name"].split("[", 1)[0].removeprefix("test_")}
        timing = info.get("timing", default)
        if timing is not None:
            rows.append(
                Row(
                    suite=suite,
                    figure=timing["figure"],
                    value=float(bench["stats"]["min"]),
                    unit="s",
                    baseline=timing.get("baseline"),
                    target=timing.get("target"),
                )
            )
        rows.extend(
            Row(
                suite=suite,
                figure=extra["figure"],
                value=float(extra["value"]),
                unit=extra["unit"],
                baseline=extra.get("baseline"),
                target=extra.get("target"),
            )
            for extra in info.get("figures", [])
        )
    return evaluate(rows)


def evaluate(rows: list[Row]) -> list[Row]:
    """Fill ``ratio`` (against the baseline figure of the same suite) and ``met`` (the target holds)."""
    by_name: dict[tuple[str, str], Row] = {}
    for row in rows:
        if (row.suite, row.figure) in by_name:
            warn(f"{row.suite}/{row.figure}: reported twice; baselines use the last one")
        by_name[(row.suite, row.figure)] = row
    for row in rows:
        if row.baseline is not None:
            base = by_name.get((row.suite, row.baseline))
            if base is None:
                warn(f"{row.suite}/{row.figure}: baseline {row.baseline!r} was not measured in this run")
            elif base.unit != row.unit:
                warn(f"{row.suite}/{row.figure}: baseline {row.baseline!r} is in {base.unit}, not {row.unit}")
            elif base.value != 0:
                row.ratio = row.value / base.value
        if row.target is not None:
            match = TARGET_RE.fullmatch(row.target)
            if match is None:
                warn(f"{row.suite}/{row.figure}: cannot read target {row.target!r}")
                continue
            metric, op, bound = match.groups()
            observed = row.value if metric == "value" else row.ratio
            row.met = None if observed is None else OPS[op](observed, float(bound))
    return rows


def merge(previous: list[dict[str, Any]], rows: list[Row]) -> list[dict[str, Any]]:
    """Previous rows of the suites that did not run, then the new rows; sorted by suite (stable)."""
    ran = {r.suite for r in rows}
    kept = [r for r in previous if r.get("suite") not in ran]
    return sorted(kept + [asdict(r) for r in rows], key=lambda r: str(r["suite"]))


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of an existing results file (an unreadable one counts as empty, with a warning)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError:
        warn(f"{path.name}: not valid JSON; starting afresh")
        return []
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` so runs finishing together do not lose each other's rows."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}"


def table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The rows as an aligned text table (or a Markdown table)."""
    cells = [
        [
            str(r["suite"]),
            str(r["figure"]),
            _fmt(r["value"]),
            str(r["unit"]),
            r["baseline"] or "-",
            "-" if r["ratio"] is None else f"{r['ratio']:.3g}x",
            r["target"] or "-",
            {True: "yes", False: "NO", None: "-"}[r["met"]],
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    head = [f.upper() for f in FIELDS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    out = [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in [head, *cells]
    ]
    return "\n".join(out)


def machine(report: dict[str, Any]) -> str:
    """One line: CPU model, cores, Python, OS (from pytest-benchmark's machine_info)."""
    info = report.get("machine_info") or {}
    cpu = (info.get("cpu") or {}).get("brand_raw") or platform.processor() or "unknown CPU"
    python = info.get("python_version", platform.python_version())
    return f"{cpu}, {os.cpu_count()} cores (nproc), Python {python}, {platform.system()} {platform.machine()}"


def update_doc(rows: Sequence[dict[str, Any]], machine_line: str) -> None:
    """Replace the figures block of BENCHMARKS.md with the current results."""
    text = DOC.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{DOC.name}: markers {DOC_BEGIN!r} / {DOC_END!r} not found")
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{DOC_BEGIN}\nLatest run: {stamp} on {machine_line}.\n\n{table(rows, markdown=True)}\n{DOC_END}"
    DOC.write_text(head + block + tail)


def warn(message: str) -> None:
    """A warning on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def run_pytest(files: Sequence[Path], json_path: Path, tiny: bool, extra: Sequence[str]) -> int:
    """Run the suites under pytest-benchmark, its JSON report going to ``json_path``."""
    env = dict(os.environ)
    env[SIZE_ENV] = "tiny" if tiny else "full"
    command = [
        sys.executable,
        "-m",
        "pytest",
        *(str(f) for f in files),
        "--benchmark-enable",  # pyproject's addopts disable benchmarks for the ordinary test run
        f"--benchmark-json={json_path}",
        "--benchmark-quiet",  # our table is the report; pass -- --benchmark-verbose for pytest-benchmark's
        "-o",
        "python_files=bench_*.py",
        "-p",
        "no:cacheprovider",
        *(arg for name in UNUSED_PLUGINS for arg in ("-p", f"no:{name}")),
        "-q",
        *extra,
    ]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and whatever follows ``--`` (handed to pytest)."""
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__.split("\n\n", 1)[0] if __doc__ else None
    )
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="suite name or file (default: all)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the harness in seconds")
    parser.add_argument("--results", type=Path, default=None, help=f"results file (default: {RESULTS.name})")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is not met")
    parser.add_argument(
        "--update-doc", action="store_true", help="rewrite the figures table in BENCHMARKS.md"
    )
    args = parser.parse_args(argv)
    if args.tiny and args.update_doc:
        parser.error("--update-doc records real figures; it cannot be combined with --tiny")
    return args, extra


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        files = resolve(args.suites)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("error: no benchmark suites (benchmarks/bench_*.py)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="shelfcast-bench-") as tmp:
        json_path = Path(tmp) / "pytest-benchmark.json"
        code = run_pytest(files, json_path, args.tiny, extra)
        if not json_path.is_file():
            print(f"error: pytest exited {code} without a benchmark report", file=sys.stderr)
            return code or 1
        report = json.loads(json_path.read_text())
    rows = rows_from_report(report)
    machine_line = machine(report)
    print(f"\nmachine: {machine_line}" + (" (tiny sizes)" if args.tiny else ""))
    print(table([asdict(r) for r in rows]))
    if code != 0:
        print(f"error: pytest exited {code}; results not written", file=sys.stderr)
        return code
    results = args.results or (None if args.tiny else RESULTS)
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        with locked(results.resolve().parent):
            merged = merge(load_rows(results), rows)
            write_json(results, merged)
            if args.update_doc:
                update_doc(merged, machine_line)
        print(f"wrote {len(rows)} rows to {results}" + (f"; updated {DOC.name}" if args.update_doc else ""))
    if args.check and any(r.met is False for r in rows):
        print("error: some targets are not met", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
