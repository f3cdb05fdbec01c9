"""Integers out of range in request bodies are 422 naming the field; /metrics labels the status sent."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import RunningServer, create_store, enroll, unique

ABOVE_INT64 = 2**63
NOW = datetime.now(UTC).isoformat()


def _report(store: str, model: str, **fields: Any) -> dict[str, Any]:
    return {
        "report_id": unique("r"),
        "store_id": store,
        "model_name": model,
        "version": 1,
        "period_start": date(2024, 1, 1).isoformat(),
        "period_end": date(2024, 1, 7).isoformat(),
        "created_at": NOW,
        **fields,
    }


def _row(n: int) -> dict[str, Any]:
    return {
        "category": "FOODS",
        "horizon_bucket": "1-7",
        "n": n,
        "abs_err_sum": 1.0,
        "abs_y_sum": 2.0,
        "err_sum": 0.5,
    }


@pytest.fixture(scope="module")
def store_token(server: RunningServer) -> tuple[str, str, str]:
    model, store = unique("m"), unique("S")
    with server.admin() as admin:
        token = enroll(server.url, store, create_store(admin, store, model))
    return model, store, token


@pytest.mark.parametrize("value", [ABOVE_INT64, 2**100, 2**53, 2**31, -1])
def test_integers_out_of_range_are_422_naming_the_field(
    server: RunningServer, store_token: tuple[str, str, str], value: int
) -> None:
    """Versions, counts and error counters out of range in any body: 422 naming the field, never 500."""
    model, store, token = store_token
    beat = {"store_id": store, "state": "serving", "model_name": model, "sent_at": NOW}
    versions_valid = 1 <= value < 2**31
    counts_valid = 0 <= value < 2**53
    calls = [
        (token, "/v1/heartbeats", {**beat, "active_version": value}, "active_version", versions_valid),
        (token, "/v1/heartbeats", {**beat, "shadow_version": value}, "shadow_version", versions_valid),
        (token, "/v1/heartbeats", {**beat, "errors": {"sync": value}}, "errors", versions_valid),
        (token, "/v1/accuracy", _report(store, model, version=value), "version", versions_valid),
        (token, "/v1/drift", _report(store, model, version=value), "version", versions_valid),
        (token, "/v1/accuracy", _report(store, model, rows=[_row(value)]), "rows[0].n", counts_valid),
        (
            token,
            "/v1/accuracy",
            _report(store, model, rows=[{**_row(1), "scaled_n": value}]),
            "scaled_n",
            counts_valid,
        ),
        (None, "/v1/datasets", {"dataset_id": unique("d"), "row_count": value}, "row_count", counts_valid),
        (None, "/v1/rollouts", {"model_name": model, "version": value}, "version", versions_valid),
        (None, f"/v1/models/{model}/aliases/champion", {"version": value}, "version", versions_valid),
    ]
    refused = [call for call in calls if not call[-1]]
    assert refused
    for credential, path, body, field, _ in refused:
        with server.client(credential or server.admin_token) as client:
            method = client.put if "/aliases/" in path else client.post
            answer = method(path, json=body)
        assert answer.status_code == 422, (path, field, answer.status_code, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert field in answer.json()["detail"], (path, answer.json())


def test_bounds_let_the_largest_valid_values_through(
    server: RunningServer, store_token: tuple[str, str, str], tmp_path: Path, signing_key: Path
) -> None:
    """The bounds are where the database columns end: the largest valid version and count are stored."""
    model, store, token = store_token
    with server.client(token) as agent:
        beat = {"store_id": store, "state": "serving", "model_name": model, "sent_at": NOW}
        assert agent.post("/v1/heartbeats", json={**beat, "active_version": 2**31 - 1}).status_code == 202
        report = _report(store, model, version=2**31 - 1, rows=[_row(2**53 - 1)])
        assert agent.post("/v1/accuracy", json=report).status_code in (200, 201, 202)
    with server.admin() as admin:
        answer = admin.post("/v1/datasets", json={"dataset_id": unique("d"), "row_count": 2**53 - 1})
        assert answer.status_code in (200, 201), answer.text
        assert admin.get(f"/v1/stores/{store}").json()["status"]["active_version"] == 2**31 - 1


def test_metrics_label_refused_requests_with_the_status_sent(server: RunningServer) -> None:
    """401 and 403 answers are counted under their own status in /metrics, not as 500."""
    model, store = unique("m"), unique("S")
    with server.admin() as admin:
        token = enroll(server.url, store, create_store(admin, store, model))
    with server.client() as anonymous:
        for _ in range(3):
            assert anonymous.get("/v1/models").status_code == 401
    with server.client(token) as agent:
        assert agent.get("/v1/models/whatever/versions").status_code == 403
    metrics = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'route="/v1/models",status="401"\} [3-9]', metrics), metrics
    assert 'status="403"' in metrics
    assert 'status="500"' not in metrics
