"""The benchmarks harness: run.py runs a tiny suite, reports rows, merges results, reads declarations."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ["suite", "figure", "value", "unit", "baseline", "ratio", "target", "met"]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_py() -> ModuleType:
    """benchmarks/run.py as a module."""
    return _load("shelfcast_bench_run", ROOT / "benchmarks" / "run.py")


@pytest.fixture(scope="module")
def bench_conftest() -> ModuleType:
    """benchmarks/conftest.py as a module (for its Figures helper)."""
    return _load("shelfcast_bench_conftest", ROOT / "benchmarks" / "conftest.py")


def test_tiny_synthetic_run_writes_and_merges_results(tmp_path: Path) -> None:
    """A tiny run of the synthetic suite prints the table and merges well-formed rows into the results."""
    results = tmp_path / "results.json"
    other = dict.fromkeys(FIELDS) | {"suite": "other", "figure": "kept", "value": 1.0, "unit": "s"}
    stale = other | {"suite": "synthetic", "figure": "stale"}
    results.write_text(json.dumps([other, stale]))
    proc = subprocess.run(
        [sys.executable, "benchmarks/run.py", "synthetic", "--tiny", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUITE" in proc.stdout and "RATIO" in proc.stdout and "machine:" in proc.stdout
    rows = json.loads(results.read_text())
    assert all(list(r) == FIELDS for r in rows)
    assert other in rows
    assert not any(r["figure"] == "stale" for r in rows)
    ours = {r["figure"]: r for r in rows if r["suite"] == "synthetic"}
    assert {
        "generate",
        "generate_plain",
        "write_parquet",
        "write_parquet_pyarrow",
        "generate_and_write",
    } <= set(ours)
    assert ours["generate_rows_per_second"]["unit"] == "rows/s"
    for row in ours.values():
        assert isinstance(row["value"], float) and row["value"] > 0
        assert row["met"] in (True, False, None)
        assert (row["met"] is None) == (row["target"] is None)
    gen = ours["generate"]
    assert gen["unit"] == "s" and gen["baseline"] == "generate_plain"
    assert gen["ratio"] == pytest.approx(gen["value"] / ours["generate_plain"]["value"])
    assert ours["parquet_size"]["ratio"] is not None


def _bench(name: str, seconds: float, extra_info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "fullname": f"benchmarks/bench_demo.py::{name}",
        "extra_info": extra_info,
        "stats": {"min": seconds, "median": seconds * 1.1},
    }


def test_rows_from_declarations(run_py: ModuleType) -> None:
    """Timings, non-timing figures, baselines, targets and hidden timings become the documented rows."""
    report = {
        "benchmarks": [
            _bench(
                "test_fast", 2.0, {"timing": {"figure": "fast", "baseline": "slow", "target": "ratio <= 0.5"}}
            ),
            _bench("test_slow", 5.0, {}),
            _bench(
                "test_server",
                30.0,
                {
                    "timing": None,
                    "figures": [
                        {
                            "figure": "rps",
                            "value": 1200.0,
                            "unit": "req/s",
                            "baseline": None,
                            "target": "value >= 1000",
                        },
                        {"figure": "rss", "value": 80.0, "unit": "MiB", "baseline": "fast", "target": None},
                        {
                            "figure": "odd",
                            "value": 1.0,
                            "unit": "s",
                            "baseline": "missing",
                            "target": "ratio < 1",
                        },
                    ],
                },
            ),
        ]
    }
    rows = {r.figure: r for r in run_py.rows_from_report(report)}
    assert set(rows) == {"fast", "slow", "rps", "rss", "odd"}
    assert rows["fast"].suite == "demo" and rows["fast"].value == 2.0 and rows["fast"].unit == "s"
    assert rows["fast"].ratio == pytest.approx(0.4) and rows["fast"].met is True
    assert rows["slow"].ratio is None and rows["slow"].met is None
    assert rows["rps"].met is True and rows["rps"].unit == "req/s"
    assert rows["rss"].ratio is None  # MiB against seconds: no ratio
    assert rows["odd"].ratio is None and rows["odd"].met is None


def test_unknown_suite_and_bad_options(run_py: ModuleType) -> None:
    """An unknown suite exits 2 before running anything; --tiny with --update-doc is a usage error."""
    assert run_py.main(["no_such_suite"]) == 2
    with pytest.raises(SystemExit) as exc:
        run_py.main(["--tiny", "--update-doc"])
    assert exc.value.code == 2


def test_figures_helper_validates_declarations(bench_conftest: ModuleType) -> None:
    """The figures fixture stores declarations in extra_info and rejects malformed names and targets."""

    class Benchmark:
        extra_info: dict[str, Any]

        def __init__(self) -> None:
            self.extra_info = {}

    bench = Benchmark()
    figures = bench_conftest.Figures(bench)
    figures.timing("load", baseline="load_plain", target="ratio <= 2")
    figures.value("peak_rss", 123.0, "MiB", target="value < 500")
    assert bench.extra_info["timing"] == {"figure": "load", "baseline": "load_plain", "target": "ratio <= 2"}
    assert bench.extra_info["figures"][0]["value"] == 123.0
    with pytest.raises(ValueError, match="target"):
        figures.timing("load", target="ratio is small")
    with pytest.raises(ValueError, match="figure name"):
        figures.value("Peak RSS", 1.0, "MiB")
    with pytest.raises(ValueError, match="finite"):
        figures.value("nan_value", float("nan"), "MiB")
