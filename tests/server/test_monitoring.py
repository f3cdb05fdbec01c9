"""Monitoring on a real server: idempotent reports, grouped queries, alert lifecycle, signed webhooks, CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from forecasting.common.contracts import (
    AccuracyReport,
    AccuracyRow,
    ActualRow,
    ActualsBatch,
    CategoryDrift,
    DriftReport,
    DriftTest,
)
from forecasting.monitoring.accuracy import evaluate
from server.quality.alerts import default_rules, replay
from server.quality.baseline import LearntBaseline, PeriodSums, lifecycle
from shelfcast.cli import cli
from shelfcast.procs import ServiceProcess
from tests.conftest import free_port
from tests.server.conftest import ADMIN_TOKEN, create_store, enroll, unique

SECRET = "hook-secret-for-tests"


@dataclass
class Receiver:
    """A loopback webhook receiver checking the HMAC signature; each delivery's first try gets a 500."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on 127.0.0.1 receiving alert webhooks."""
    port = free_port()
    state = Receiver(url=f"http://127.0.0.1:{port}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                delivery = self.headers.get("X-Shelfcast-Delivery", "")
                if delivery not in state.seen:
                    state.seen.add(delivery)
                    self.send_response(500)
                    self.end_headers()
                    return
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                state.events.append(
                    {
                        "valid": hmac.compare_digest(expected, self.headers.get("X-Shelfcast-Signature", "")),
                        "event": self.headers.get("X-Shelfcast-Event"),
                        "body": json.loads(body),
                    }
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@dataclass
class Monitored:
    url: str
    process: ServiceProcess
    state_dir: Path

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Monitored]:
    """A server process with three alert rules and the loopback webhook in its TOML config."""
    base = tmp_path_factory.mktemp("monitoring")
    config = base / "server.toml"
    config.write_text(
        f"""
[[alerts.rules]]
name = "category-drift"
metric = "drift"
scope = "store"
threshold = 0.5
clear_threshold = 0.0
window = 2
min_samples = 2
severity = "warning"

[[alerts.rules]]
name = "model-drift"
metric = "wape_ratio"
scope = "store_category"
threshold = 1.5
window = 1
min_samples = 5
severity = "critical"

[[alerts.rules]]
name = "accuracy-learnt"
metric = "wape_ratio"
scope = "store_category"
window = 2
[alerts.rules.baseline]
persistence = 2

[[alerts.webhooks]]
url = "{receiver.url}"
secret = "{SECRET}"
backoff_seconds = 0.1
max_attempts = 3
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
        process.wait_http(f"http://127.0.0.1:{port}/readyz", timeout_seconds=60)
        yield Monitored(url=f"http://127.0.0.1:{port}", process=process, state_dir=state_dir)
    finally:
        process.stop()


def _agent(server: Monitored, store_id: str) -> httpx.Client:
    with server.admin() as admin:
        token = enroll(server.url, store_id, create_store(admin, store_id, "demand"))
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _drift(
    store_id: str, week: date, drifted: set[str], categories: tuple[str, ...] = ("A", "B", "C")
) -> DriftReport:
    cats = [
        CategoryDrift(
            category=c,
            comparison="seasonal",
            drifted=c in drifted,
            score=0.5 if c in drifted else 0.05,
            tests=[
                DriftTest(
                    name="wasserstein",
                    statistic=0.5 if c in drifted else 0.02,
                    threshold=0.1,
                    verdict="drift" if c in drifted else "ok",
                    n_current=1,
                    n_reference=1,
                )
            ],
        )
        for c in categories
    ]
    return DriftReport(
        report_id=f"drift-{store_id}-{week}",
        store_id=store_id,
        model_name="demand",
        version=3,
        period_start=week - timedelta(days=6),
        period_end=week,
        created_at=datetime.now(UTC),
        categories=cats,
    )


def _post(client: httpx.Client, path: str, report: Any) -> dict[str, Any]:
    response = client.post(
        path,
        content=msgspec.json.encode(report),
        headers={"Idempotency-Key": report.report_id, "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def test_duplicate_drift_report_is_counted_once(server: Monitored) -> None:
    """Posting the same drift report twice stores it once; the second answer says duplicate."""
    store = unique("dup")
    with _agent(server, store) as agent:
        report = _drift(store, date(2024, 3, 1), set())
        first, second = _post(agent, "/v1/drift", report), _post(agent, "/v1/drift", report)
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    with server.admin() as admin:
        rows = admin.get("/v1/drift", params={"store": store, "group_by": ["store_id"]}).json()
    assert rows == [
        {
            "store_id": store,
            "reports": 1,
            "checks": 3,
            "drifted": 0,
            "drift_rate": 0.0,
            "score_mean": pytest.approx(0.05),
            "score_max": 0.05,
            "wasserstein_mean": 0.02,
            "last_period_end": "2024-03-01",
        }
    ]


def test_agent_cannot_report_for_another_store(server: Monitored) -> None:
    """A store credential posting a report in another store's name is refused with 403."""
    store = unique("own")
    with _agent(server, store) as agent:
        response = agent.post(
            "/v1/drift", content=msgspec.json.encode(_drift("someone-else", date(2024, 3, 1), set()))
        )
    assert response.status_code == 403


def _accuracy(store_id: str, model: str, seed: int) -> tuple[AccuracyReport, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    days = [date(2024, 5, 1) + timedelta(days=d) for d in range(14)]
    items = [(f"I{i}", "A" if i < 3 else "B") for i in range(6)]
    actuals = pl.DataFrame(
        [(store_id, i, c, d, float(rng.gamma(2, 10))) for i, c in items for d in days],
        schema=["store_id", "item_id", "category", "ds", "y"],
        orient="row",
    )
    f = actuals["y"].to_numpy() * rng.normal(1.0, 0.3, actuals.height)
    forecasts = actuals.drop("y").with_columns(
        pl.Series("forecast", f), pl.Series("forecast-lo-80", f * 0.7), pl.Series("forecast-hi-80", f * 1.3)
    )
    rows, _ = evaluate(forecasts, actuals, buckets=(7,), backtest={"A": {"wape": 0.9}, "B": {"wape": 0.01}})
    report = AccuracyReport(
        report_id=f"acc-{store_id}-{seed}",
        store_id=store_id,
        model_name=model,
        version=3,
        period_start=days[0],
        period_end=days[-1],
        created_at=datetime.now(UTC),
        rows=rows,
    )
    return report, forecasts.join(actuals, on=["store_id", "item_id", "category", "ds"])


def test_accuracy_query_matches_an_independent_wape(server: Monitored) -> None:
    """WAPE, MAE, bias, coverage per category pooled over two stores equal NumPy on the same rows."""
    model = unique("model")
    stores = [unique("acc"), unique("acc")]
    frames = []
    for seed, store in enumerate(stores):
        report, frame = _accuracy(store, model, seed)
        with _agent(server, store) as agent:
            answer = _post(agent, "/v1/accuracy", report)
        assert answer["alerts_fired"] == 1  # category B: live WAPE far above its 1 % backtest WAPE
        frames.append(frame)
    both = pl.concat(frames)
    with server.admin() as admin:
        groups = admin.get("/v1/accuracy", params={"model": model, "group_by": ["category"]}).json()
        by_bucket = admin.get(
            "/v1/accuracy", params={"model": model, "group_by": ["store_id", "horizon_bucket"]}
        ).json()
        alerts = admin.get("/v1/alerts", params={"store": stores[0]}).json()
    assert [g["category"] for g in groups] == ["A", "B"]
    for group in groups:
        part = both.filter(pl.col("category") == group["category"])
        y, f = part["y"].to_numpy(), part["forecast"].to_numpy()
        assert group["n"] == len(y) and group["reports"] == 2
        assert group["wape"] == pytest.approx(np.abs(f - y).sum() / np.abs(y).sum(), rel=1e-9)
        assert group["mae"] == pytest.approx(np.abs(f - y).mean(), rel=1e-9)
        assert group["bias"] == pytest.approx((f - y).mean(), rel=1e-9, abs=1e-9)
        inside = (y >= part["forecast-lo-80"].to_numpy()) & (y <= part["forecast-hi-80"].to_numpy())
        assert group["coverage_80"] == pytest.approx(inside.mean())
    assert {(r["store_id"], r["horizon_bucket"]) for r in by_bucket} == {
        (s, b) for s in stores for b in ("1-7", "8+")
    }
    assert [(a["rule"], a["category"], a["severity"]) for a in alerts] == [("model-drift", "B", "critical")]


def test_drift_alert_fires_once_resolves_and_webhook_signatures_verify(
    server: Monitored, receiver: Receiver
) -> None:
    """Two drifted weeks fire one alert, a third refreshes it, two clean weeks resolve it; webhooks signed."""
    store = unique("drift")
    weeks = [date(2024, 1, 5) + timedelta(weeks=w) for w in range(6)]
    flags = [set(), {"B"}, {"B"}, {"B"}, set(), set()]
    answers = []
    with _agent(server, store) as agent:
        for week, drifted in zip(weeks, flags, strict=True):
            answers.append(_post(agent, "/v1/drift", _drift(store, week, drifted)))
    assert [a["alerts_fired"] for a in answers] == [0, 0, 1, 0, 0, 0]
    assert [a["alerts_resolved"] for a in answers] == [0, 0, 0, 0, 0, 1]
    with server.admin() as admin:
        alerts = admin.get("/v1/alerts", params={"store": store}).json()
        assert len(alerts) == 1
        alert = alerts[0]
        assert (alert["rule"], alert["status"], alert["category"], alert["evaluations"]) == (
            "category-drift", "resolved", "B", 3,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            detail = admin.get(f"/v1/alerts/{alert['alert_id']}").json()
            if sum(d["ok"] for d in detail["deliveries"]) == 2 and len(detail["deliveries"]) == 4:
                break
            time.sleep(0.1)
    mine = [e for e in receiver.events if e["body"]["alert"]["alert_id"] == alert["alert_id"]]
    assert [e["event"] for e in mine] == ["alert.firing", "alert.resolved"]
    assert all(e["valid"] for e in mine)
    attempts = [(d["event"], d["attempt"], d["ok"], d["status_code"]) for d in detail["deliveries"]]
    assert sorted(attempts) == [
        ("firing", 1, False, 500),
        ("firing", 2, True, 204),
        ("resolved", 1, False, 500),
        ("resolved", 2, True, 204),
    ]


def test_firing_alert_is_a_prometheus_gauge_and_the_cli_lists_shows_and_acks_it(server: Monitored) -> None:
    """`shelfcast alerts list|show|ack`, `accuracy`, `drift` talk to the server; /metrics shows the alert."""
    store = unique("cli")
    with _agent(server, store) as agent:
        for w in range(2):
            _post(agent, "/v1/drift", _drift(store, date(2024, 6, 7) + timedelta(weeks=w), {"C"}))
    runner = CliRunner()
    env = {"SHELFCAST_SERVER_URL": server.url, "SHELFCAST_TOKEN": ADMIN_TOKEN}

    def run(*args: str) -> Any:
        result = runner.invoke(cli, [*args, "-o", "json"], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    listed = run("alerts", "list", "--store", store, "--status", "firing")
    assert [(a["rule"], a["category"]) for a in listed] == [("category-drift", "C")]
    alert_id = listed[0]["alert_id"]
    assert run("alerts", "show", alert_id)["alert"]["status"] == "firing"
    acked = run("alerts", "ack", alert_id)
    assert acked[0]["acked_by"].startswith("admin")
    drift_rows = run("drift", "--store", store, "--by", "store_id,category")
    assert {(r["category"], r["drifted"]) for r in drift_rows} == {("A", 0), ("B", 0), ("C", 2)}
    assert run("accuracy", "--store", store) == []
    table = runner.invoke(cli, ["alerts", "list", "--store", store], env=env)
    assert table.exit_code == 0 and "category-drift" in table.output
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert f'store_id="{store}"' in metrics
    assert "shelfcast_alerts_firing{" in metrics


def test_actuals_batches_append_to_the_central_dataset_once_each(server: Monitored) -> None:
    """Each new batch is written as Parquet by store and date and registered as a new dataset version."""
    store = unique("act")
    day = date(2024, 2, 1)

    def batch(batch_id: str, days: int, offset: int) -> ActualsBatch:
        rows = [ActualRow(item_id=f"I{i}", category="A", ds=day + timedelta(days=offset + d), y=float(i + d))
                for i in range(3) for d in range(days)]  # fmt: skip
        return ActualsBatch(batch_id=batch_id, store_id=store, created_at=datetime.now(UTC), rows=rows)

    with _agent(server, store) as agent:
        first = agent.post("/v1/actuals", content=msgspec.json.encode(batch("b1", 2, 0))).json()
        again = agent.post("/v1/actuals", content=msgspec.json.encode(batch("b1", 2, 0))).json()
        second = agent.post("/v1/actuals", content=msgspec.json.encode(batch("b2", 1, 2))).json()
    assert (first["rows"], again["duplicate"], again["dataset_id"]) == (6, True, first["dataset_id"])
    assert second["dataset_id"] != first["dataset_id"]
    with server.admin() as admin:
        v1 = admin.get(f"/v1/datasets/{first['dataset_id']}").json()
        v2 = admin.get(f"/v1/datasets/{second['dataset_id']}").json()
    assert v2["row_count"] == v1["row_count"] + 3
    assert store in v2["stores"] and v2["date_max"] >= "2024-02-03"
    root = server.state_dir / "datasets" / "actuals" / f"store_id={store}"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    assert files == ["ds=2024-02-01/b1.parquet", "ds=2024-02-02/b1.parquet", "ds=2024-02-03/b2.parquet"]
    assert pl.read_parquet(root / "ds=2024-02-01" / "b1.parquet").height == 3


@given(
    st.lists(st.dictionaries(st.sampled_from("ABC"), st.sampled_from([0.0, 1.0]), max_size=3), max_size=40)
)
def test_alert_lifecycle_alternates_and_fires_only_on_persistent_drift(
    periods: list[dict[str, float]],
) -> None:
    """Replayed reports: fired/resolved alternate; a fire needs one category flagged in both last reports."""
    rule = next(r for r in default_rules() if r.metric == "drift")
    events = replay(rule, periods)
    kinds = [kind for _, kind in events]
    assert kinds == ["fired", "resolved"] * (len(kinds) // 2) + ["fired"] * (len(kinds) % 2)
    for index, kind in events:
        last_two = periods[index - 1 : index + 1]
        if kind == "fired":
            assert index >= 1
            assert any(all(p.get(c) == 1.0 for p in last_two) for c in "ABC")
        else:
            assert not any(v for p in last_two for v in p.values())


def test_learnt_accuracy_alert_fires_after_persistence_explains_itself_and_resolves(
    server: Monitored,
) -> None:
    """Ten steady weeks, three at 3x the error, then steady again: the server fires and resolves exactly where
    the pure rule does, after the persistence, and the alert carries its baseline, tolerance and periods."""
    store = unique("learnt")
    ratios = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.1, 0.9, 1.0, 1.05, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    first = date(2024, 1, 5)
    answers = []
    with _agent(server, store) as agent:
        for i, ratio in enumerate(ratios):
            week = first + timedelta(weeks=i)
            row = AccuracyRow(category="A", horizon_bucket="1", n=20, abs_err_sum=200.0 * ratio,
                              abs_y_sum=1000.0, err_sum=0.0, backtest_wape=0.2)  # fmt: skip
            report = AccuracyReport(report_id=f"learnt-{store}-{i}", store_id=store, model_name="demand",
                                    version=3, period_start=week - timedelta(days=6), period_end=week,
                                    created_at=datetime.now(UTC), rows=[row])  # fmt: skip
            answers.append(_post(agent, "/v1/accuracy", report))
    events = [(i, "fired") for i, a in enumerate(answers) if a["alerts_fired"]]
    events += [(i, "resolved") for i, a in enumerate(answers) if a["alerts_resolved"]]
    periods = [
        PeriodSums(period=str(first + timedelta(weeks=i)), n=20, abs_err_sum=200.0 * r, abs_y_sum=1000.0,
                   backtest_wape=0.2, version=3)
        for i, r in enumerate(ratios)
    ]  # fmt: skip
    learnt = lifecycle(periods, 2, LearntBaseline(persistence=2))
    assert learnt == [(12, "fired"), (14, "resolved")]  # beyond at 11 and 12 (both weeks of the window 3x)
    fixed = [(10, "fired"), (13, "resolved")]  # model-drift: a fixed 1.5 on the newest week alone
    assert sorted(events) == sorted(learnt + fixed)
    with server.admin() as admin:
        alerts = admin.get("/v1/alerts", params={"store": store}).json()
        (alert,) = [a for a in alerts if a["rule"] == "accuracy-learnt"]
        assert (alert["status"], alert["category"]) == ("resolved", "A")
        assert alert["scope"] == {"model_name": "demand", "store_id": store, "category": "A"}
        details = alert["details"]
        assert details["period"] == str(first + timedelta(weeks=14))  # refreshed until it resolved
        assert details["ratio"] <= details["clear_ratio"] < details["upper_ratio"]
        assert details["baseline_ratio"] == pytest.approx(1.0, abs=0.1)
        assert details["history_windows"] == 10  # 12 earlier windows, less the two beyond (11, 12)
        assert (details["persistence"], details["version"]) == (2, 3)
        shown = admin.get(f"/v1/alerts/{alert['alert_id']}").json()["alert"]
        assert shown["threshold"] == pytest.approx(details["upper_ratio"])  # as at the newest evaluation
    env = {"SHELFCAST_SERVER_URL": server.url, "SHELFCAST_TOKEN": ADMIN_TOKEN}
    shown = CliRunner().invoke(cli, ["alerts", "show", alert["alert_id"]], env=env, catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "baseline_ratio" in shown.output and "periods_beyond" in shown.output
