"""Real agent processes against a real server on loopback: enrol, pull, activate, serve, survive outages."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.agent.support import AgentHandle, ServerHandle, fleet, make_bundle, sales_frame, wait_until

pytestmark = pytest.mark.slow


class Fleet:
    def __init__(self, server: ServerHandle, agent: AgentHandle, private: Path, root: Path) -> None:
        self.server, self.agent, self.private, self.root = server, agent, private, root


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A server with v1 as champion and an enrolled agent serving it."""
    root = tmp_path_factory.mktemp("fleet")
    with fleet(root) as (server, private, public):
        token = server.create_store()
        archive, _sha = make_bundle(root, private, 1)
        server.publish(archive)
        server.promote(1)
        agent = AgentHandle(
            root, server.url, public, enrollment_token=token, agent={"stale_after_seconds": 2.0}
        )
        agent.drop_sales(sales_frame())
        agent.start()
        try:
            agent.wait_serving(1, timeout=120)
            yield Fleet(server, agent, private, root)
        finally:
            agent.close()


def test_enrolled_pulled_activated_and_serving(running: Fleet) -> None:
    """The agent enrolled (credential 0600), activated v1 through the `current` link and serves it."""
    agent = running.agent
    credential = agent.state_dir / "credential"
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    assert (agent.state_dir / "current").resolve() == (agent.state_dir / "versions" / "demand-1").resolve()
    assert agent.client.get("/readyz").status_code == 200
    status = agent.status()
    assert status["active_version"] == 1 and status["state"] == "idle"
    body = agent.client.get("/v1/forecasts", params={"limit": 1000}).json()
    assert len(body["rows"]) == 4 * 14
    assert {row["model_version"] for row in body["rows"]} == {1}
    log = agent.proc.log() if agent.proc else ""
    for line in ("agent_started", "agent_enrolled", "model_activated", "forecast_scored"):
        assert f'"event": "{line}"' in log


def _queued(agent: AgentHandle) -> int:
    metrics = agent.client.get("/metrics").text
    found = re.search(r"^shelfcast_agent_reports_queued_total (\S+)$", metrics, re.MULTILINE)
    assert found, metrics
    return int(float(found.group(1)))


def test_metrics_time_the_scoring_after_activation(running: Fleet) -> None:
    """/metrics times the scoring that followed the activation of v1, and the requests it answered."""
    metrics = running.agent.client.get("/metrics").text
    scored = 'shelfcast_agent_scoring_duration_seconds_count{outcome="ok",trigger="activation"}'
    found = re.search(rf"^{re.escape(scored)} (\S+)$", metrics, re.MULTILINE)
    assert found and float(found.group(1)) >= 1, metrics
    assert 'shelfcast_agent_http_request_duration_seconds_bucket{le="+Inf",route="/readyz"' in metrics


def test_new_version_is_activated_and_operator_can_roll_back(running: Fleet) -> None:
    """A new champion is pulled and served; `shelfcast agent rollback` returns to the kept previous one."""
    agent, server = running.agent, running.server
    archive, _sha = make_bundle(running.root, running.private, 2)
    server.publish(archive)
    server.promote(2)
    status = agent.wait_serving(2, timeout=120)
    assert status["previous_version"] == 1
    assert (agent.state_dir / "versions" / "demand-1").is_dir()
    result = subprocess.run(
        [sys.executable, "-m", "shelfcast", "agent", "rollback", "--config", str(agent.config_path),
         "--state-dir", str(agent.state_dir), "-o", "json"],
        capture_output=True, text=True, check=False, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"active_version":1' in result.stdout
    body = agent.client.get("/v1/forecasts", params={"limit": 1000}).json()
    assert {row["model_version"] for row in body["rows"]} == {1}
    # The rolled-back version is not taken again from the unchanged assignment.
    time.sleep(2.0)  # four poll intervals
    assert agent.status()["active_version"] == 1
    out = subprocess.run(
        [sys.executable, "-m", "shelfcast", "agent", "status", "--config", str(agent.config_path),
         "-o", "json"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert '"active_version":1' in out.stdout, out.stderr


def test_tampered_bundle_is_refused_and_old_version_kept(running: Fleet, tmp_path: Path) -> None:
    """A bundle signed by an untrusted key is refused by the server or the agent; v1 keeps being served."""
    from tests.agent.support import make_keys

    other_private, _other_public = make_keys(tmp_path)
    archive, _sha = make_bundle(tmp_path, other_private, 3)
    response = running.server.admin.post(
        "/v1/models/demand/versions",
        content=archive.read_bytes(),
        headers={"Content-Type": "application/x-tar"},
    )
    assert response.status_code in (400, 403, 422), response.text
    assert running.agent.status()["served_version"] == 1
    assert httpx.get(f"{running.agent.url}/livez", timeout=5).status_code == 200


def test_download_resumes_with_range_and_refuses_a_bad_hash(running: Fleet, tmp_path: Path) -> None:
    """A half-downloaded archive is completed with Range; a corrupted part fails the sha256 check."""
    from agent.errors import UpdateRejectedError
    from agent.sync import SyncClient

    archive, sha = make_bundle(tmp_path, running.private, 7, model_name="resume-test")
    running.server.publish(archive, model_name="resume-test")
    data = archive.read_bytes()
    client = SyncClient(running.server.url, timeout_seconds=10)
    client.token = (running.agent.state_dir / "credential").read_text().strip()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{sha}.part").write_bytes(data[: len(data) // 2])
    got = client.download_bundle(sha, len(data), downloads, max_bytes=10 * len(data))
    assert got.read_bytes() == data
    got.unlink()
    (downloads / f"{sha}.part").write_bytes(b"x" * (len(data) // 2))
    with pytest.raises(UpdateRejectedError, match="sha256 mismatch"):
        client.download_bundle(sha, len(data), downloads, max_bytes=10 * len(data))
    assert not (downloads / f"{sha}.part").exists()
    with pytest.raises(UpdateRejectedError, match="cap"):
        client.download_bundle(sha, len(data), downloads, max_bytes=len(data) // 4)
    client.close()


def test_looping_update_is_aborted(running: Fleet, tmp_path: Path) -> None:
    """An update that already failed max_update_attempts times is refused instead of tried again."""
    import threading

    from agent.config import AgentConfig, AgentSection
    from agent.lifecycle import Lifecycle
    from agent.paths import StatePaths
    from agent.record import Record, VersionRef, save_record
    from agent.scoring import Scorer, ScoringSettings
    from agent.sync import SyncClient

    assignment = running.server.admin.get("/v1/stores/S001/assignment").json()
    paths = StatePaths(tmp_path / "state")
    paths.ensure()
    attempts = {assignment["bundle_sha256"]: 3}
    save_record(paths, Record(active=VersionRef("demand", 1), highest_version=1, attempts=attempts))
    token = (running.agent.state_dir / "credential").read_text().strip()
    config = AgentConfig(agent=AgentSection(store_id="S001", server_url=running.server.url, token=token))
    settings = ScoringSettings(14, [80, 95], 1, 60.0, 2)
    lifecycle = Lifecycle(
        config,
        paths,
        stop=threading.Event(),
        client_factory=lambda: SyncClient(running.server.url, timeout_seconds=10),
        scorer=Scorer(settings),
    )
    outcome = lifecycle.run()
    lifecycle.close()
    assert outcome.failed and outcome.activated is None
    assert assignment["bundle_sha256"] in lifecycle.record.rejected
    assert "did not complete after 3 attempts" in lifecycle.record.rejected[assignment["bundle_sha256"]]
    assert lifecycle.record.active == VersionRef("demand", 1)


def test_score_command_runs_a_new_scoring_run(running: Fleet) -> None:
    """`shelfcast agent score` asks the running agent to score now; a new run is served."""
    agent = running.agent
    before = agent.status()["scoring_run"]
    result = subprocess.run(
        [sys.executable, "-m", "shelfcast", "agent", "score", "--config", str(agent.config_path),
         "-o", "json"],
        capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert agent.status()["scoring_run"] != before
    assert before not in result.stdout


def test_server_down_keeps_serving_and_reports_arrive_once(running: Fleet) -> None:
    """Server killed: forecasts served, staleness shown, reports queue; server back: each delivered once."""
    agent, server = running.agent, running.server
    server.stop(sig=9)
    wait_until(lambda: agent.status()["outbox_size"] >= 3, 20, what="heartbeats queued while offline")
    response = agent.client.get("/v1/forecasts/I00001")
    assert response.status_code == 200 and response.json()["model_version"] == 1
    assert wait_until(lambda: agent.status()["stale"], 10, what="stale flag")
    server.start()
    wait_until(lambda: agent.status()["outbox_size"] == 0, 30, what="outbox drained")
    wait_until(lambda: not agent.status()["stale"], 20, what="fresh again after the server is back")
    queued_before = _queued(agent)
    assert agent.proc is not None
    agent.proc.stop()
    server.stop()
    db = duckdb.connect(str(server.state_dir / "registry.duckdb"), read_only=True)
    try:
        query = "SELECT idempotency_key FROM report_keys WHERE store_id = 'S001'"
        keys = [k for (k,) in db.execute(query).fetchall()]
    finally:
        db.close()
    # Every report queued up to the drain arrived, each key once; at most the one or two heartbeats of the
    # last second before the agent stopped may have followed.
    assert len(keys) == len(set(keys))
    assert queued_before <= len(keys) <= queued_before + 3
