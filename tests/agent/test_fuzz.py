"""Schemathesis against the inventory API schema of a real agent process serving forecasts.

Checks run on every generated request: ``not_a_server_error``, ``response_schema_conformance``,
``response_headers_conformance``, ``unsupported_method`` and, on the routes that need the store's API
token, ``ignored_auth`` (``/readyz`` answers a documented 503 while no model is active, so it skips
``not_a_server_error``; its 503 body is still checked against the schema).
Status codes and content types are not checked against the schema: the
problem-details answers (401/404/406/409/422) are not listed per route (see tests/server/test_fuzz.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.support import AgentHandle, free_port, prepare_served_state
from tests.fuzzing import fuzz_schema

API_TOKEN = "store-lan-fuzz-token"
OPERATOR_TOKEN = "store-operator-fuzz-token"
MAX_EXAMPLES = 25
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentHandle]:
    """An agent serving a prepared scoring run (20 items x 14 days); its server is unreachable."""
    root = tmp_path_factory.mktemp("agent-fuzz")
    handle = AgentHandle(
        root,
        f"http://127.0.0.1:{free_port()}",
        root / "none.pub",
        api={"token": API_TOKEN, "operator_token": OPERATOR_TOKEN},
    )
    prepare_served_state(handle.state_dir, 20, 14)
    handle.client.headers["Authorization"] = f"Bearer {API_TOKEN}"
    handle.start()
    handle.wait_serving(1, timeout=30)
    yield handle
    handle.close()


def _checks(operation: Any) -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        ignored_auth,
        response_headers_conformance,
        response_schema_conformance,
        unsupported_method,
    )

    checks = [response_schema_conformance, response_headers_conformance, unsupported_method]
    if operation.path != "/readyz":  # 503 is the readiness probe's documented "not ready" answer
        checks.append(not_a_server_error)
    if operation.path not in PUBLIC_PATHS:
        checks.append(ignored_auth)
    return checks


@pytest.mark.parametrize(
    ("who", "token", "max_examples"),
    [("operator", OPERATOR_TOKEN, MAX_EXAMPLES), ("reader", API_TOKEN, 5), ("anonymous", "", 2)],
)
def test_inventory_api_fuzzed(
    agent: AgentHandle, record_property: Any, who: str, token: str, max_examples: int
) -> None:
    """Every inventory API operation, fed generated valid and invalid input (as the operator also every
    body at its boundaries), answers no 5xx, on schema, with the operator token, the read token or none."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{agent.url}/schema/openapi.json", timeout=30)
    report = fuzz_schema(
        schema,
        agent.url,
        headers={"Authorization": f"Bearer {token}"} if token else {},
        checks_for=_checks if token else _anonymous_checks,
        max_examples=max_examples,
        coverage=who == "operator",
    )
    record_property(f"fuzz_agent_{who}", report.summary())
    assert report.operations >= 6, report.summary()
    assert not report.failures, "\n\n".join(f"{op}:\n{msg}" for op, msg in report.failures.items())
    assert agent.client.get("/v1/status").json()["served_version"] == 1


def _anonymous_checks(operation: Any) -> list[Any]:
    return [check for check in _checks(operation) if check.__name__ != "ignored_auth"]
