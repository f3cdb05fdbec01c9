"""Retraining on a real server process: manual, alert-triggered and failing runs on the central dataset."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner

from forecasting.common.contracts import ActualRow, ActualsBatch, CategoryDrift, DriftReport, DriftTest
from shelfcast.cli import cli
from shelfcast.procs import ServiceProcess
from tests.conftest import free_port
from tests.server.conftest import ADMIN_TOKEN, create_store, enroll, make_bundle, publish

MODEL = "demand"
STORE = "S001"
GOOD_TRAIN = """
[train]
horizon = 7
season_length = 7
models = ["Naive", "SeasonalNaive"]
fallback = "Naive"
levels = [80]
"""
RUN_TIMEOUT_SECONDS = 150.0


@dataclass
class Retrainer:
    url: str
    process: ServiceProcess
    state_dir: Path
    train_config: Path
    agent_token: str
    dataset_id: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)

    def agent(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.agent_token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _push_actuals(client: httpx.Client) -> str:
    """A small synthetic history (1 store x 6 items x 84 days) in two batches; the latest dataset version."""
    from forecasting.data.synthetic import generate

    frame = generate(1, 6, 84, seed=7).select("item_id", "category", "ds", "y")
    cut = frame["ds"].min() + timedelta(days=56)  # type: ignore[operator]
    dataset_id = ""
    for batch_id, part in (
        ("hist-1", frame.filter(frame["ds"] < cut)),
        ("hist-2", frame.filter(frame["ds"] >= cut)),
    ):
        rows = [ActualRow(**r) for r in part.iter_rows(named=True)]
        batch = ActualsBatch(batch_id=batch_id, store_id=STORE, created_at=datetime.now(UTC), rows=rows)
        response = client.post("/v1/actuals", content=msgspec.json.encode(batch))
        assert response.status_code in (200, 201, 202), response.text
        dataset_id = response.json()["dataset_id"]
    return dataset_id


@pytest.fixture(scope="module")
def retrainer(tmp_path_factory: pytest.TempPathFactory, signing_key: Path) -> Iterator[Retrainer]:
    """A server whose [retraining] trains `demand` (tiny config), retraining on the `drift-now` alert."""
    base = tmp_path_factory.mktemp("retraining")
    train_config = base / "train.toml"
    train_config.write_text(GOOD_TRAIN)
    plan = base / "rollout.toml"
    plan.write_text('stratify_by = []\n\n[[waves]]\nname = "canary"\nshare = 1.0\n')
    config = base / "server.toml"
    config.write_text(
        f"""
[server]
trusted_keys = ["{signing_key}.pub"]

[retraining]
model_name = "{MODEL}"
train_config = "{train_config}"
trigger_alerts = ["drift-now"]
alert_cooldown_seconds = 0
log_tail_lines = 30

[retraining.policy]
auto_rollout = true
rollout_plan = "{plan}"

[[alerts.rules]]
name = "drift-now"
metric = "drift"
scope = "store"
threshold = 0.5
window = 1
min_samples = 1
"""
    )
    port = free_port()
    state_dir = base / "state"
    process = ServiceProcess(
        "server",
        ["server", "run", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--state-dir", str(state_dir)],
        log_path=base / "server.log",
        env={"SHELFCAST_SERVER__ADMIN_TOKEN": ADMIN_TOKEN, "SHELFCAST_LOGGING__FORMAT": "json"},
    ).start()  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/readyz", timeout_seconds=60)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        ) as admin:
            token = enroll(url, STORE, create_store(admin, STORE, MODEL))
            archive = make_bundle(base, signing_key, MODEL, 1)  # an existing v1: retraining makes v2, v3
            assert publish(admin, archive, MODEL).status_code == 201
            champion = admin.put(f"/v1/models/{MODEL}/aliases/champion", json={"version": 1})
            assert champion.status_code == 200, champion.text
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as agent:
            dataset_id = _push_actuals(agent)
        yield Retrainer(url, process, state_dir, train_config, token, dataset_id)
    finally:
        process.stop()


def _wait(
    client: httpx.Client, retraining_id: str, *, probe: bool = False
) -> tuple[dict[str, Any], list[float]]:
    """Poll a run until it has finished; with ``probe``, also time other API calls while it runs."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    latencies: list[float] = []
    while time.monotonic() < deadline:
        run: dict[str, Any] = client.get(f"/v1/retraining/runs/{retraining_id}").json()
        if run["status"] in ("succeeded", "failed"):
            return run, latencies
        if probe and run["status"] == "running":
            began = time.perf_counter()
            assert client.get("/v1/models").status_code == 200
            assert client.get("/readyz").status_code == 200
            latencies.append(time.perf_counter() - began)
        time.sleep(0.5)
    raise AssertionError(f"retraining run {retraining_id} did not finish in {RUN_TIMEOUT_SECONDS} s")


def test_failing_training_is_recorded_as_failed_with_its_log_tail(retrainer: Retrainer) -> None:
    """A bad training config fails the run: status failed, reason and log tail kept, no new version."""
    retrainer.train_config.write_text("[train]\nhorizonn = 7\n")
    try:
        with retrainer.admin() as admin:
            started = admin.post("/v1/retraining/runs", json={"reason": "bad config"})
            assert started.status_code == 202, started.text
            run, _ = _wait(admin, started.json()["retraining_id"])
            versions = admin.get(f"/v1/models/{MODEL}/versions").json()["items"]
    finally:
        retrainer.train_config.write_text(GOOD_TRAIN)
    assert run["status"] == "failed"
    assert "training failed (exit code 1)" in run["error"]
    assert "horizonn" in run["log_tail"]
    assert run["dataset_id"] == retrainer.dataset_id and run["run_id"] is None
    assert [v["version"] for v in versions] == [1]


def test_manual_run_trains_on_the_central_dataset_and_registers_the_next_version(
    retrainer: Retrainer,
) -> None:
    """`retrain now` trains v2 on the latest dataset version (v2 -> run -> dataset); the API stays fast."""
    runner = CliRunner()
    remote = ["--server", retrainer.url, "--token", ADMIN_TOKEN]
    result = runner.invoke(
        cli, ["retrain", "now", "--model", MODEL, "--reason", "test", *remote, "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    retraining_id = msgspec.json.decode(result.output)["retraining_id"]
    with retrainer.admin() as admin:
        run, latencies = _wait(admin, retraining_id, probe=True)
        assert run["status"] == "succeeded", run["error"] + "\n" + run["log_tail"]
        lineage = admin.get(f"/v1/models/{MODEL}/versions/2/lineage").json()
        registered = admin.get(f"/v1/runs/{run['run_id']}").json()
        dataset_lineage = admin.get(f"/v1/datasets/{retrainer.dataset_id}/lineage").json()
        rollouts = admin.get("/v1/rollouts", params={"model_name": MODEL})
        aliases = admin.get(f"/v1/models/{MODEL}/aliases").json()
    assert run["version"] == 2 and run["trigger"] == "manual" and run["dataset_id"] == retrainer.dataset_id
    assert lineage["version"]["run_id"] == run["run_id"] == lineage["run"]["run_id"]
    assert lineage["dataset"]["dataset_id"] == retrainer.dataset_id == registered["dataset_id"]
    assert lineage["dataset"]["name"] == "actuals" and lineage["dataset"]["stores"] == [STORE]
    assert [v["version"] for v in dataset_lineage["versions"]] == [2]
    assert {a["alias"]: a["version"] for a in aliases}["champion"] == 1  # retraining never moves it
    assert latencies and max(latencies) < 2.0, latencies  # answered while training ran in its worker
    if rollouts.status_code == 404:  # a server without the rollouts domain: auto_rollout is a no-op
        assert run["rollout"] == "unavailable"
    else:  # auto_rollout = true: a canary rollout of v2 against the champion v1
        assert run["rollout"].startswith("started: "), run["rollout"]
        started = [r for r in rollouts.json()["items"] if r["rollout_id"] == run["rollout"].split(": ")[1]]
        assert len(started) == 1
    shown = runner.invoke(cli, ["runs", "show", retraining_id, *remote, "-o", "json"])
    assert shown.exit_code == 0 and msgspec.json.decode(shown.output)["version"] == 2
    listed = runner.invoke(cli, ["retrain", "list", *remote, "-o", "json"])
    assert listed.exit_code == 0
    assert [r["status"] for r in msgspec.json.decode(listed.output)] == ["succeeded", "failed"]


def _drifted_report(week: date) -> DriftReport:
    test = DriftTest(
        name="wasserstein", statistic=0.6, threshold=0.1, verdict="drift", n_current=1, n_reference=1
    )
    category = CategoryDrift(
        category="beverages", comparison="seasonal", drifted=True, score=0.6, tests=[test]
    )
    return DriftReport(
        report_id=f"drift-{STORE}-{week}", store_id=STORE, model_name=MODEL, version=2,
        period_start=week - timedelta(days=6), period_end=week, created_at=datetime.now(UTC),
        categories=[category],
    )  # fmt: skip


def test_firing_drift_alert_starts_a_retraining_run(retrainer: Retrainer) -> None:
    """A drift report that fires a trigger rule queues a run (trigger alert) that registers v3."""
    report = _drifted_report(date(2023, 3, 26))
    with retrainer.agent() as agent:
        response = agent.post(
            "/v1/drift", content=msgspec.json.encode(report), headers={"Idempotency-Key": report.report_id}
        )
    assert response.status_code == 202, response.text
    assert response.json()["alerts_fired"] == 1
    with retrainer.admin() as admin:
        alert = admin.get("/v1/alerts", params={"status": "firing"}).json()
        alert_id = (alert["items"] if isinstance(alert, dict) else alert)[0]["alert_id"]
        runs = admin.get("/v1/retraining/runs", params={"model": MODEL}).json()["items"]
        assert runs[0]["trigger"] == "alert" and runs[0]["alert_id"] == alert_id
        assert "drift-now" in runs[0]["reason"] and runs[0]["requested_by"] == f"alert:{alert_id}"
        run, _ = _wait(admin, runs[0]["retraining_id"])
        lineage = admin.get(f"/v1/models/{MODEL}/versions/3/lineage").json()
    assert run["status"] == "succeeded", run["error"] + "\n" + run["log_tail"]
    assert (
        lineage["run"]["run_id"] == run["run_id"] and lineage["dataset"]["dataset_id"] == retrainer.dataset_id
    )


def test_schedule_times_follow_the_cron_expression_in_utc() -> None:
    """`0 3 * * 0` fires next on Sunday 03:00 UTC, strictly after the given time."""
    from server.retraining.scheduler import next_time

    wednesday = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert next_time("0 3 * * 0", wednesday) == datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    sunday_three = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert next_time("0 3 * * 0", sunday_three) == datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


def test_a_bad_cron_expression_fails_the_config_with_its_field_path(tmp_path: Path) -> None:
    """[retraining] schedule is checked at start: a bad expression is a ConfigError naming the field."""
    from forecasting.common.errors import ConfigError
    from server.config import load_server_config

    path = tmp_path / "server.toml"
    path.write_text('[retraining]\nschedule = "every sunday"\n')
    with pytest.raises(ConfigError, match="retraining"):
        load_server_config([path])
    path.write_text('[retraining]\nschedule = "0 3 * * 0"\n')
    assert load_server_config([path]).retraining.schedule == "0 3 * * 0"


def test_scheduler_fires_when_due_and_moves_to_the_next_time() -> None:
    """A due schedule calls back once with its due time, then waits for the expression's next time."""
    import threading

    from server.retraining.scheduler import CronScheduler

    fired: list[datetime] = []
    called = threading.Event()

    def fire(due: datetime) -> None:
        fired.append(due)
        called.set()

    scheduler = CronScheduler("0 3 * * 0", fire)
    due = datetime.now(UTC) - timedelta(seconds=1)
    scheduler.start(first_at=due)
    try:
        assert called.wait(timeout=10)
    finally:
        scheduler.stop()
    assert fired == [due]
    assert scheduler.next_at is not None and scheduler.next_at.weekday() == 6 and scheduler.next_at.hour == 3


def test_status_shows_the_schedule_triggers_and_policy(retrainer: Retrainer) -> None:
    """GET /v1/retraining/status (and `retrain status`) name the model, trigger rules and rollout policy."""
    result = CliRunner().invoke(
        cli, ["retrain", "status", "--server", retrainer.url, "--token", ADMIN_TOKEN, "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    status = msgspec.json.decode(result.output)
    assert status["model_name"] == MODEL and status["schedule"] == "" and status["next_run_at"] is None
    assert status["trigger_alerts"] == ["drift-now"] and status["auto_rollout"] is True


def test_retraining_settings_take_environment_overrides(tmp_path: Path) -> None:
    """SHELFCAST_RETRAINING__SCHEDULE overrides the server file, like the other server sections."""
    import os
    import subprocess
    import sys

    path = tmp_path / "server.toml"
    path.write_text('[retraining]\nschedule = "0 3 * * 0"\n')
    code = (
        "import sys; from pathlib import Path; from server.config import load_server_config; "
        "print(load_server_config([Path(sys.argv[1])]).retraining.schedule)"
    )
    env = {**os.environ, "SHELFCAST_RETRAINING__SCHEDULE": "30 2 * * *"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "30 2 * * *"


def test_server_stop_kills_the_training_and_records_the_run_failed(tmp_path: Path, signing_key: Path) -> None:
    """Stopping the server mid-training kills the worker; after a restart the run reads failed."""
    from tests.server.conftest import launch

    train_config = tmp_path / "train.toml"
    train_config.write_text(GOOD_TRAIN)
    running = launch(
        tmp_path, signing_key.with_name(signing_key.name + ".pub"),
        {"SHELFCAST_RETRAINING__TRAIN_CONFIG": str(train_config)},
    )  # fmt: skip
    try:
        with running.admin() as admin:
            token = enroll(running.url, STORE, create_store(admin, STORE, MODEL))
            with running.client(token) as agent:
                _push_actuals(agent)
            retraining_id = admin.post("/v1/retraining/runs", json={}).json()["retraining_id"]
            deadline = time.monotonic() + 60
            while admin.get(f"/v1/retraining/runs/{retraining_id}").json()["stage"] != "training":
                assert time.monotonic() < deadline, "the run never reached its training stage"
                time.sleep(0.2)
        work_dir = str(running.state_dir / "retraining" / retraining_id)
        running.restart()
        leftovers = [p for p in Path("/proc").glob("[0-9]*") if _cmdline_has(p, work_dir)]
        assert not leftovers, "a training process outlived the server"
        with running.admin() as admin:
            run = admin.get(f"/v1/retraining/runs/{retraining_id}").json()
    finally:
        running.process.stop()
    assert run["status"] == "failed" and "server stopped" in run["error"]


def _cmdline_has(proc_dir: Path, text: str) -> bool:
    try:
        return text in (proc_dir / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
