"""Schemathesis driven from plain pytest tests: every operation of a live schema, positive and negative input.

(The schemathesis pytest plugin's lazy ``from_fixture`` loader does not run on this pytest version, so the
tests walk the operations themselves and give each one a bounded hypothesis run.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FuzzReport:
    """What one fuzzing pass did: operations, requests sent, failures (operation -> message), seconds."""

    operations: int = 0
    requests: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        return f"{self.operations} operations, {self.requests} requests, {self.seconds:.1f} s"


def fuzz_schema(
    schema: Any,
    base_url: str,
    *,
    headers: dict[str, str],
    checks_for: Callable[[Any], Iterable[Any]],
    max_examples: int,
    skip_prefixes: tuple[str, ...] = ("/schema",),
) -> FuzzReport:
    """Send up to ``max_examples`` positive and negative generated requests to each operation; run checks."""
    report = FuzzReport()
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(skip_prefixes):
            continue
        report.operations += 1
        try:
            _fuzz_operation(operation, base_url, headers, list(checks_for(operation)), max_examples, report)
        except Exception as exc:  # collected per operation, asserted by the caller
            report.failures[operation.label] = str(exc)[:3000]
    report.seconds = time.monotonic() - started
    return report


def _fuzz_operation(
    operation: Any,
    base_url: str,
    headers: dict[str, str],
    checks: list[Any],
    max_examples: int,
    report: FuzzReport,
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        try:
            strategies.append(operation.as_strategy(generation_mode=mode))
        except Exception:  # an operation with nothing to negate has no negative cases
            continue

    # a 5xx is refused even without its check unless it is left out explicitly
    excluded = [] if not_a_server_error in checks else [not_a_server_error]

    @settings(
        max_examples=max_examples * len(strategies),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(*strategies))
    def run(case: Any) -> None:
        report.requests += 1
        case.call_and_validate(
            base_url=base_url, headers=headers, checks=checks, excluded_checks=excluded, timeout=30
        )

    run()
