"""Schemathesis driven from plain pytest tests: every operation of a live schema, positive and negative input.

(The schemathesis pytest plugin's lazy ``from_fixture`` loader does not run on this pytest version, so the
tests walk the operations themselves and give each one a bounded hypothesis run.) With ``coverage`` each
operation also gets schemathesis' coverage cases: every property at its boundaries (an integer at its
minimum and maximum, one past each, missing, null, of the wrong type), so the bounds of every field
are tried deterministically, and every integer of a body past 64 bits.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FuzzReport:
    """What one fuzzing pass did: operations, requests sent, failures (operation -> message), seconds."""

    operations: int = 0
    requests: int = 0
    coverage_requests: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.operations} operations, {self.requests} requests "
            f"({self.coverage_requests} boundary cases), {self.seconds:.1f} s"
        )


WRITES = frozenset({"POST", "PUT", "PATCH"})


def fuzz_schema(
    schema: Any,
    base_url: str,
    *,
    headers: dict[str, str],
    checks_for: Callable[[Any], Iterable[Any]],
    max_examples: int,
    coverage: bool = False,
    prepare: Callable[[Any], None] = lambda _case: None,
    skip_prefixes: tuple[str, ...] = ("/schema",),
) -> FuzzReport:
    """Send up to ``max_examples`` positive and negative generated requests to each operation (and, with
    ``coverage``, the coverage cases of each operation taking a body); ``prepare`` may adjust each case
    before it is sent; run checks."""
    report = FuzzReport()
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(skip_prefixes):
            continue
        report.operations += 1
        try:
            checks = list(checks_for(operation))
            _fuzz_operation(operation, base_url, headers, checks, max_examples, report, prepare)
            if coverage and operation.method.upper() in WRITES:
                _coverage_cases(operation, base_url, headers, checks, report, prepare)
        except (Exception, BaseExceptionGroup) as exc:  # collected per operation, asserted by the caller
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
    prepare: Callable[[Any], None],
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
        prepare(case)
        case.call_and_validate(
            base_url=base_url, headers=headers, checks=checks, excluded_checks=excluded, timeout=30
        )

    run()


def _coverage_cases(
    operation: Any,
    base_url: str,
    headers: dict[str, str],
    checks: list[Any],
    report: FuzzReport,
    prepare: Callable[[Any], None],
) -> None:
    """Send every coverage case of ``operation`` (positive and negative boundaries) and run the checks;
    then the accepted body with the most integers once per integer set past 64 bits (a bound the schema
    may not state, which a database column has)."""
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = operation.schema
    excluded = [] if not_a_server_error in checks else [not_a_server_error]
    cases = schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=schema.config.generation_for(operation=operation, phase="coverage"),
        extra_data_source=None,
        error_feedback=None,
        session=None,
    )
    richest: tuple[Any, Any, list[JsonPath]] | None = None
    for case in cases:
        prepare(case)
        body = copy.deepcopy(case.body)
        report.requests += 1
        report.coverage_requests += 1
        response = case.call_and_validate(
            base_url=base_url, headers=headers, checks=checks, excluded_checks=excluded, timeout=30
        )
        if response.status_code < 300:  # accepted: its integers are the ones that reach storage
            paths = list(_int_paths(body, ()))
            if paths and (richest is None or len(paths) > len(richest[2])):
                richest = (case, body, paths)
    if richest is None:
        return
    case, body, paths = richest
    for path in paths:
        for value in BEYOND_INT64:
            case.body = _replaced(body, path, value)
            prepare(case)
            report.requests += 1
            report.coverage_requests += 1
            case.call_and_validate(
                base_url=base_url, headers=headers, checks=checks, excluded_checks=excluded, timeout=30
            )


BEYOND_INT64 = (2**63, -(2**63) - 1, 2**64)
JsonPath = tuple[str | int, ...]


def _int_paths(value: Any, at: JsonPath) -> Iterator[JsonPath]:
    """Where ``value`` (a decoded JSON body) holds integers (booleans excluded)."""
    if isinstance(value, int) and not isinstance(value, bool):
        yield at
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _int_paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _int_paths(item, (*at, index))


def _replaced(body: Any, path: JsonPath, value: int) -> Any:
    copied = copy.deepcopy(body)
    holder = copied
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return copied
