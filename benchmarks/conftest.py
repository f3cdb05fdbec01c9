"""What every benchmark suite shares: the size switch and the ``figures`` fixture.

A suite is a module ``benchmarks/bench_<suite>.py`` of pytest-benchmark tests. ``benchmarks/run.py`` runs the
suites and turns what each test reports into rows of ``benchmarks/results.json``. A test reports through the
``figures`` fixture, which stores its declarations in ``benchmark.extra_info`` (so they travel inside
pytest-benchmark's own JSON and run.py needs no per-suite code)::

    def test_generate(benchmark, figures, bench_size):
        figures.timing("generate", baseline="generate_plain", target="ratio <= 3")
        benchmark.pedantic(generate, args=SIZES[bench_size], rounds=3)
        figures.value("generate_rows_per_second", ROWS / figures.seconds(), "rows/s")

- ``figures.timing(name, baseline=, target=)`` names the figure of the benchmark's own time (the minimum
  over rounds, in seconds); without the call the figure is the test name without ``test_``.
  ``figures.timing(None)`` drops it, for a test whose timing is only the vehicle of other figures.
- ``figures.value(name, value, unit, baseline=, target=)`` adds a figure that is not a timing: requests per
  second from a load generator, peak RSS, a file size.
- ``figures.with_cpu(func)`` / ``figures.cpu_seconds()``: the CPU time of the process during the rounds;
  on a machine shared with other work it wanders much less than the wall time (unit ``cpu-s``).
- ``baseline`` names another figure of the same suite, measured in the same run with the same unit;
  ``ratio = value / baseline value``.
- ``target`` is ``"<value|ratio> <op> <number>"`` with op one of ``<= < >= >``; ``met`` says if it holds.

``bench_size`` is ``"full"`` or ``"tiny"`` (``SHELFCAST_BENCH_SIZE``; ``run.py --tiny`` sets it): tiny sizes
let the test suite prove the harness end to end in seconds. Suites pick their sizes from it.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

SIZE_ENV = "SHELFCAST_BENCH_SIZE"
SIZES = ("full", "tiny")
TARGET_RE = re.compile(r"\s*(value|ratio)\s*(<=|>=|<|>)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*")
_NAME_RE = re.compile(r"[a-z0-9_.]+")


def _check(name: str, baseline: str | None, target: str | None) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"figure name {name!r}: use lower-case letters, digits, dots and underscores")
    if baseline is not None and not _NAME_RE.fullmatch(baseline):
        raise ValueError(f"baseline {baseline!r} of figure {name!r} is not a figure name")
    if target is not None and not TARGET_RE.fullmatch(target):
        raise ValueError(
            f"target {target!r} of figure {name!r}: expected e.g. 'ratio <= 2' or 'value >= 1000'"
        )


class Figures:
    """The figures one benchmark test reports (kept in ``benchmark.extra_info``)."""

    def __init__(self, benchmark: Any) -> None:
        self._benchmark = benchmark
        self._info: dict[str, Any] = benchmark.extra_info
        self._cpu: list[float] = []

    def timing(self, name: str | None, *, baseline: str | None = None, target: str | None = None) -> None:
        """Name the benchmark's own timing figure (``None``: do not report it)."""
        if name is None:
            self._info["timing"] = None
            return
        _check(name, baseline, target)
        self._info["timing"] = {"figure": name, "baseline": baseline, "target": target}

    def value(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        baseline: str | None = None,
        target: str | None = None,
    ) -> None:
        """Add a figure that is not the benchmark's timing (throughput, memory, size, ...)."""
        _check(name, baseline, target)
        if not math.isfinite(value):
            raise ValueError(f"figure {name!r}: value {value!r} is not a finite number")
        entry = {"figure": name, "value": float(value), "unit": unit, "baseline": baseline, "target": target}
        self._info.setdefault("figures", []).append(entry)

    def with_cpu(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` wrapped to record the process CPU time of each call (for :meth:`cpu_seconds`)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.process_time()
            try:
                return func(*args, **kwargs)
            finally:
                self._cpu.append(time.process_time() - began)

        return timed

    def cpu_seconds(self) -> float:
        """The least CPU time (all threads of this process) of the calls made through :meth:`with_cpu`."""
        if not self._cpu:
            raise RuntimeError("no CPU time recorded: run the benchmark on figures.with_cpu(func)")
        return min(self._cpu)

    def seconds(self) -> float:
        """The benchmark's minimum time per round so far (after ``benchmark(...)``/``pedantic``)."""
        stats = getattr(self._benchmark, "stats", None)
        if stats is None:
            raise RuntimeError("no timing yet: call benchmark(...) or benchmark.pedantic(...) first")
        return float(stats.stats.min)


@pytest.fixture
def figures(benchmark: Any) -> Figures:
    """Declare the figures of this benchmark (see the module docstring)."""
    return Figures(benchmark)


@pytest.fixture(scope="session")
def bench_size() -> str:
    """``full`` (the default) or ``tiny``, from ``SHELFCAST_BENCH_SIZE``."""
    size = os.environ.get(SIZE_ENV, "full")
    if size not in SIZES:
        raise pytest.UsageError(f"{SIZE_ENV}={size!r}: expected one of {', '.join(SIZES)}")
    return size
