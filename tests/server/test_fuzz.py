"""Schemathesis against the OpenAPI schema of a real server process: no 5xx, responses match the schema.

Checks run on every generated request: ``not_a_server_error``, ``response_schema_conformance``,
``response_headers_conformance``, ``unsupported_method`` (405 for methods a path does not have) and,
on every route that needs a credential, ``ignored_auth`` (the same request without the credential is refused).

Left out, with the reason: ``status_code_conformance`` and ``content_type_conformance`` (handlers
document their success code and 400 only; the 401/403/404/409/413/422 problem-details answers, sent as
``application/problem+json``, are not listed per route), ``positive_data_acceptance`` (a schema-valid
request may still name a store or model that does not exist, or break a rule the schema cannot state,
such as the store id pattern), ``missing_required_header`` (the bearer header is optional on public routes),
``negative_data_rejection`` (unknown query parameters are ignored, as HTTP APIs commonly do, while the
generated schema forbids them; wrongly typed known parameters and bodies are answered 400 and checked
by ``not_a_server_error``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fuzzing import fuzz_schema
from tests.server.conftest import RunningServer, enroll, launch

MAX_EXAMPLES = 3
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/metrics", "/v1/enroll"})


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, signing_key: Path) -> Iterator[RunningServer]:
    """A server of its own (fuzzing writes stores, credentials and runs that other tests must not see)."""
    running = launch(tmp_path_factory.mktemp("fuzz-server"), signing_key.with_name(signing_key.name + ".pub"))
    yield running
    running.process.stop()


@pytest.fixture(scope="module")
def server_schema(fuzz_server: RunningServer) -> Any:
    """The schema the running server publishes, without the schema-viewer routes themselves."""
    import schemathesis

    return schemathesis.openapi.from_url(f"{fuzz_server.url}/schema/openapi.json", timeout=30)


def _checks(operation: Any) -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        ignored_auth,
        response_headers_conformance,
        response_schema_conformance,
        unsupported_method,
    )

    checks = [
        not_a_server_error,
        response_schema_conformance,
        response_headers_conformance,
        unsupported_method,
    ]
    if operation.path not in PUBLIC_PATHS:
        checks.append(ignored_auth)
    return checks


def plausible(case: Any, store: str = "S-fuzz") -> None:
    """Identifiers a generated body leaves empty or random made plausible (a known store and model,
    fresh report ids and idempotency keys, a real state, the current time), so that its numbers reach the
    service and the database instead of being refused for a name first. Only strings are replaced: a
    wrongly typed field stays so."""
    if case.headers and isinstance(case.headers.get("Idempotency-Key"), str):
        case.headers["Idempotency-Key"] = secrets.token_hex(8)  # a repeated key is answered "duplicate"
    if not isinstance(case.body, dict):
        return
    values = {
        "store_id": store,
        "model_name": "demand",
        "state": "serving",
        "report_id": f"r-{secrets.token_hex(6)}",
        "batch_id": f"b-{secrets.token_hex(6)}",
        "dataset_id": f"d-{secrets.token_hex(6)}",
    }
    now = datetime.now(UTC).isoformat()  # a heartbeat older than the stored one changes nothing
    for key, value in {**values, "sent_at": now, "created_at": now}.items():
        if isinstance(case.body.get(key), str):
            case.body[key] = value


def _failures(report: Any) -> str:
    return "\n\n".join(f"{op}:\n{msg}" for op, msg in report.failures.items())


def test_server_api_as_admin(fuzz_server: RunningServer, server_schema: Any, record_property: Any) -> None:
    """Every operation, called as admin with generated valid and invalid input and every field at and past
    its bounds, answers no 5xx, on schema."""
    headers = {"Authorization": f"Bearer {fuzz_server.admin_token}"}
    report = fuzz_schema(
        server_schema,
        fuzz_server.url,
        headers=headers,
        checks_for=_checks,
        max_examples=MAX_EXAMPLES,
        coverage=True,
        prepare=plausible,
    )
    record_property("fuzz_admin", report.summary())
    assert report.operations > 40, report.summary()
    assert report.coverage_requests > 500, report.summary()
    assert not report.failures, _failures(report)


def test_server_api_as_a_store(fuzz_server: RunningServer, server_schema: Any, record_property: Any) -> None:
    """Every operation called with a store's credential, its own store id put in every body and path
    (so reports and heartbeats reach the database), fields at and past their bounds: no 5xx, on schema."""
    store = f"S-fuzz-{secrets.token_hex(3)}"
    with fuzz_server.admin() as admin:
        enrollment = admin.post("/v1/stores", json={"store_id": store, "model_name": "demand"})
        assert enrollment.status_code == 201, enrollment.text
    token = enroll(fuzz_server.url, store, enrollment.json()["enrollment_token"])

    def as_own_store(case: Any) -> None:
        plausible(case, store)
        # its own store in every path, except where that would end the credential (rotate, revoke)
        ends_credential = case.operation.path.endswith(("/rotate", "/revoke"))
        if case.path_parameters and "store_id" in case.path_parameters and not ends_credential:
            case.path_parameters["store_id"] = store

    report = fuzz_schema(
        server_schema,
        fuzz_server.url,
        headers={"Authorization": f"Bearer {token}"},
        checks_for=_checks,
        max_examples=1,
        coverage=True,
        prepare=as_own_store,
    )
    record_property("fuzz_store", report.summary())
    assert not report.failures, _failures(report)


def test_server_api_as_reader(fuzz_server: RunningServer, server_schema: Any, record_property: Any) -> None:
    """Every operation, called as a reader, answers no 5xx, on schema (writes refused, not crashed)."""
    with fuzz_server.admin() as client:
        response = client.post("/v1/credentials", json={"role": "reader", "label": "fuzz-reader"})
        assert response.status_code == 201, response.text
        token = response.json()["token"]
    report = fuzz_schema(
        server_schema,
        fuzz_server.url,
        headers={"Authorization": f"Bearer {token}"},
        checks_for=_checks,
        max_examples=MAX_EXAMPLES // 2,
    )
    record_property("fuzz_reader", report.summary())
    assert not report.failures, _failures(report)


def test_server_api_without_a_credential(
    fuzz_server: RunningServer, server_schema: Any, record_property: Any
) -> None:
    """Every operation called with no credential: refused or served, never a 5xx, and /metrics counts no
    5xx for the whole fuzzing run."""
    import httpx
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_headers_conformance, response_schema_conformance

    report = fuzz_schema(
        server_schema,
        fuzz_server.url,
        headers={},
        checks_for=lambda _op: [
            not_a_server_error,
            response_schema_conformance,
            response_headers_conformance,
        ],
        max_examples=MAX_EXAMPLES // 2,
    )
    record_property("fuzz_anonymous", report.summary())
    assert not report.failures, _failures(report)
    metrics = httpx.get(f"{fuzz_server.url}/metrics", timeout=30).text
    assert 'status="401"' in metrics
    assert not [line for line in metrics.splitlines() if 'status="5' in line], "a 5xx was counted"
