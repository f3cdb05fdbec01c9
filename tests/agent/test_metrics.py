"""The agent's /metrics: Prometheus text from a registry of its own, with request and scoring histograms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from litestar.testing import TestClient

from agent.api import create_app
from agent.config import AgentConfig, AgentSection
from agent.errors import ScoringError
from agent.record import VersionRef
from agent.runtime import AgentRuntime
from forecasting.common.version import shelfcast_version

# Every series the agent has exported since its first release (names, and the labels of the labelled ones).
EXPORTED = (
    "shelfcast_agent_info",
    "shelfcast_agent_scoring_runs_total",
    "shelfcast_agent_scoring_failures_total",
    "shelfcast_agent_sync_failures_total",
    "shelfcast_agent_activations_total",
    "shelfcast_agent_rollbacks_total",
    "shelfcast_agent_reports_queued_total",
    "shelfcast_agent_reports_delivered_total",
    "shelfcast_agent_sales_rows_ingested_total",
    "shelfcast_agent_sales_rows_quarantined_total",
    "shelfcast_agent_active_version",
    "shelfcast_agent_served_version",
    "shelfcast_agent_last_scored_timestamp_seconds",
    "shelfcast_agent_last_sync_timestamp_seconds",
    "shelfcast_agent_outbox_reports",
    "shelfcast_agent_ready",
)


def _runtime(tmp_path: Path, store_id: str) -> AgentRuntime:
    return AgentRuntime(
        AgentConfig(agent=AgentSection(store_id=store_id, state_dir=str(tmp_path / store_id)))
    )


def _value(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert found, (series, text)
    return float(found.group(1))


def test_two_agents_in_one_process_keep_their_own_metrics(tmp_path: Path) -> None:
    """Each runtime has its own registry: identity, request counts and request durations do not mix."""
    first, second = _runtime(tmp_path, "S001"), _runtime(tmp_path, "S002")
    with TestClient(create_app(first)) as one, TestClient(create_app(second)) as two:
        for _ in range(3):
            assert one.get("/v1/status").status_code == 200
        assert two.get("/livez").status_code == 200
        text_one, text_two = one.get("/metrics").text, two.get("/metrics").text
    version = shelfcast_version()
    assert _value(text_one, f'shelfcast_agent_info{{store_id="S001",version="{version}"}}') == 1
    assert 'store_id="S002"' not in text_one and 'store_id="S001"' not in text_two
    assert _value(text_one, 'shelfcast_agent_http_requests_total{route="status"}') == 3
    assert "shelfcast_agent_http_requests_total{" not in text_two
    duration = "shelfcast_agent_http_request_duration_seconds_count"
    assert _value(text_one, f'{duration}{{route="/v1/status",status="200"}}') == 3
    assert _value(text_two, f'{duration}{{route="/livez",status="200"}}') == 1
    assert f'{duration}{{route="/v1/status"' not in text_two
    for name in EXPORTED:
        assert re.search(rf"^{name}[{{ ]", text_one, re.MULTILINE), name
    assert _value(text_one, "shelfcast_agent_ready") == 0
    assert _value(text_one, "shelfcast_agent_active_version") == 0


def test_a_failed_scoring_is_timed_by_trigger_and_outcome(tmp_path: Path) -> None:
    """A scoring that fails (no sales history yet) is counted, and timed as failed under its trigger."""
    runtime = _runtime(tmp_path, "S001")
    runtime.open_state()
    try:
        version_dir = runtime.paths.version_dir("demand", 1)
        version_dir.mkdir(parents=True)
        runtime.paths.current.symlink_to(version_dir)
        runtime.record.active = VersionRef("demand", 1)
        with pytest.raises(ScoringError):
            runtime.score_now()
        text = runtime.metrics.render().decode()
    finally:
        runtime.stop.set()
        runtime.scorer.close()
        for part in (runtime.store, runtime.lifecycle):
            if part is not None:
                part.close()
    assert _value(text, "shelfcast_agent_scoring_failures_total") == 1
    failed = 'shelfcast_agent_scoring_duration_seconds_count{outcome="failed",trigger="on_demand"}'
    assert _value(text, failed) == 1
