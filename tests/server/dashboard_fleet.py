"""A dashboard server filled over HTTP the way agents and admins fill it, shared by the dashboard's tests.

Signed bundles and run records, stores that enroll, heartbeat and post accuracy and drift reports and
actuals, and a rollout the engine decides on; before it starts, a large fleet is written into its database
(the scale the pages must stay fast at).
"""

from __future__ import annotations

import functools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from forecasting.common.contracts import (
    AccuracyReport,
    AccuracyRow,
    ActualRow,
    ActualsBatch,
    CategoryDrift,
    DriftReport,
    DriftTest,
    Heartbeat,
    ReplenishmentTotals,
)
from tests.server.conftest import RunningServer, create_store, enroll, launch, make_bundle, publish

ENGINE_ENV = {
    "SHELFCAST_ROLLOUTS__ENGINE_INTERVAL_SECONDS": "0.2",
    "SHELFCAST_ROLLOUTS__LEASE_SECONDS": "2",
    # the shared server lives for the whole test session: its reporting stores must not go stale meanwhile
    "SHELFCAST_SERVER__STALE_AFTER_SECONDS": "86400",
}
MODEL = "demand"
CATEGORIES = ("dairy", "produce", "bakery")
STRATA = [("supercenter", "north"), ("supercenter", "south"), ("discount", "north"), ("discount", "south")]
FIRST_WEEK = date(2024, 1, 7)
PLAN = {
    "waves": [
        {"name": "canary", "share": 0.34, "bake_periods": 2},
        {"name": "everyone", "share": 1.0, "bake_periods": 1},
    ],
    # the shared server lives for the whole test session: the wave must not time out or go stale meanwhile
    "health": {"activation_timeout_seconds": 86400, "stale_after_seconds": 86400},
    "accuracy": {"max_wape_ratio": 1.1, "min_observations": 40, "min_periods": 1},
}
PAGES = [
    "/dashboard/fleet",
    "/dashboard/fleet?stale=1&page=2",
    "/dashboard/models",
    f"/dashboard/models/{MODEL}",
    f"/dashboard/models/{MODEL}/versions/2",
    "/dashboard/runs/run-dash-2",
    "/dashboard/runs/compare?a=run-dash-1&b=run-dash-2&diff=1",
    "/dashboard/rollouts",
    "/dashboard/rollouts/{rollout_id}",
    "/dashboard/accuracy?model=demand",
    "/dashboard/accuracy?model=big&page=2",
    "/dashboard/alerts",
    "/dashboard/alerts/{alert_id}",
    "/dashboard/service-levels",
]
CHART_PAGES = {
    "/dashboard/fleet": "bars",
    "/dashboard/rollouts/{rollout_id}": "lines",
    "/dashboard/accuracy?model=demand": "heatmap",
    "/dashboard/accuracy?model=big&page=2": "heatmap",
    "/dashboard/alerts/{alert_id}": "histogram",
}


@dataclass
class Filled:
    """A server with a fleet, models, runs, a rollout, accuracy, drift, actuals and a firing alert."""

    server: RunningServer
    reader_token: str
    rollout_id: str
    alert_id: str
    agents: dict[str, str] = field(default_factory=dict)
    idle_stores: int = 0

    def url(self, page: str) -> str:
        return page.format(rollout_id=self.rollout_id, alert_id=self.alert_id)


def _post(client: httpx.Client, path: str, body: Any) -> None:
    response = client.post(
        path, content=msgspec.json.encode(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (200, 201, 202), f"{path}: {response.status_code} {response.text}"


def _run_record(run_id: str, version: int, wape: float) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "model_name": MODEL,
        "version": version,
        "status": "finished",
        "params": {"horizon": 28, "season_length": 7},
        "metrics": {
            "selected": {"wape": wape},
            "by_category": {
                c: {"wape": wape + i / 100, "mase": 0.8 + i / 10} for i, c in enumerate(CATEGORIES)
            },
            "candidates": {"SeasonalNaive": {"wape": wape + 0.05}, "AutoETS": {"wape": wape + 0.02}},
        },
        "selection": {
            "metric": "wape",
            "by": "category",
            "categories": {c: ("AutoETS" if i % 2 else "SeasonalNaive") for i, c in enumerate(CATEGORIES)},
        },
        "dataset": {"fingerprint": "d" * 64, "rows": 1234, "first_ds": "2023-01-01", "last_ds": "2023-12-31"},
        "code_version": "test",
    }


def replenishment_totals(i: int, week: int) -> list[ReplenishmentTotals]:
    """What the served report of store number ``i`` (in sorted order) says of its proposals in ``week``:
    10 to 25 review cycles per category, 0 to 3 of them missed, against a 90 % target."""
    totals = []
    for c, category in enumerate(CATEGORIES):
        cycles = 10 + i + c
        met = cycles - (i + c + week) % 4
        totals.append(
            ReplenishmentTotals(
                category=category, items=20 + c, items_to_order=5 + c + week,
                proposed_units=12.5 * (i + 1) + c + week, order_up_to_units=300.0 + i + 10 * c,
                target_service_level=0.9, cycles=cycles, cycles_met=met, achieved_service_level=met / cycles,
            )
        )  # fmt: skip
    return totals


def _accuracy(
    store_id: str, version: int, role: str, start: date, factor: float, i: int, week: int = 0
) -> AccuracyReport:
    rows = []
    for c, category in enumerate(CATEGORIES):
        abs_y = 1000.0 + 37 * i + 11 * c
        abs_err = abs_y * (0.15 + 0.05 * c + 0.004 * (i % 5)) * factor
        rows.append(
            AccuracyRow(category=category, horizon_bucket="1-7", n=28, abs_err_sum=abs_err,
                        abs_y_sum=abs_y, err_sum=abs_err / 3)
        )  # fmt: skip
    return AccuracyReport(
        report_id=f"acc-{store_id}-{version}-{role}-{start}",
        store_id=store_id,
        model_name=MODEL,
        version=version,
        role=role,
        scoring_id=f"{store_id}-{start}",  # the served and the shadow version of one scoring pair up
        period_start=start,
        period_end=start + timedelta(days=6),
        created_at=datetime.now(UTC),
        rows=rows,
        replenishment=replenishment_totals(i, week) if role == "served" else [],
    )


def _psi(drifted: bool) -> DriftTest:
    statistic, verdict = (0.45, "drift") if drifted else (0.05, "ok")
    return DriftTest(
        name="psi", statistic=statistic, threshold=0.2, verdict=verdict, n_current=70, n_reference=70
    )


def _deciding(drifted: bool) -> list[DriftTest]:
    """The level and wasserstein tests as the agent reports them (both flag a drifted category)."""
    level, distance = (0.9, 0.3) if drifted else (0.1, 0.3)
    return [
        DriftTest(name="level", statistic=level, threshold=0.4, verdict="drift" if drifted else "ok",
                  n_current=1, n_reference=26),
        DriftTest(name="wasserstein", statistic=distance, threshold=0.1, verdict="drift", n_current=70,
                  n_reference=70),
    ]  # fmt: skip


def _drift(store_id: str, start: date) -> DriftReport:
    categories = [
        CategoryDrift(
            category=c,
            comparison="seasonal",
            drifted=c == "dairy",
            score=0.9 if c == "dairy" else 0.1,
            tests=[_psi(c == "dairy"), *_deciding(c == "dairy")],
        )
        for c in CATEGORIES
    ]
    return DriftReport(
        report_id=f"drift-{store_id}-{start}",
        store_id=store_id,
        model_name=MODEL,
        version=1,
        period_start=start,
        period_end=start + timedelta(days=6),
        created_at=datetime.now(UTC),
        categories=categories,
    )


def _actuals(store_id: str, first: date, days: int) -> ActualsBatch:
    rows = []
    for d in range(days):
        ds = first + timedelta(days=d)
        recent = d >= days - 7
        for item in range(8):
            base = 10 + item
            y = base * (1.8 if recent else 1.0) + (d * 7 + item * 3) % 5
            rows.append(ActualRow(item_id=f"i{item}", category="dairy", ds=ds, y=float(y)))
    return ActualsBatch(
        batch_id=f"b-{store_id}-{first}", store_id=store_id, created_at=datetime.now(UTC), rows=rows
    )


def _play_week(server: RunningServer, week: int, start: date, i: int, store: tuple[str, str]) -> None:
    """One store's week as its agent sends it: poll, heartbeat (store 0 with errors), accuracy of the
    served and the shadow version (and drift)."""
    store_id, token = store
    with server.client(token) as agent:
        assigned = agent.get(f"/v1/stores/{store_id}/assignment").json()
        running = int(assigned["version"])
        errors = {"sync": 3 + week, "download": 1} if i == 0 else {}
        beat = Heartbeat(store_id=store_id, state="idle", model_name=MODEL, active_version=running,
                         sent_at=datetime.now(UTC), errors=errors,
                         last_error="server unreachable" if errors else None)  # fmt: skip
        _post(agent, "/v1/heartbeats", beat)
        _post(agent, "/v1/accuracy", _accuracy(store_id, running, "served", start, 1.0, i, week))
        if assigned.get("shadow_version"):
            _post(
                agent,
                "/v1/accuracy",
                _accuracy(store_id, assigned["shadow_version"], "shadow", start, 1.0, i),
            )
        if i == 0:
            _post(agent, "/v1/drift", _drift(store_id, start))


def fill(server: RunningServer, tmp_path: Path, signing_key: Path, *, idle_stores: int = 0) -> Filled:
    """Publish three versions with runs, enroll 12 stores (+ ``idle_stores`` never seen), play 3 weeks."""
    with server.admin() as admin:
        for version in (1, 2, 3):
            archive = make_bundle(tmp_path, signing_key, MODEL, version, run_id=f"run-dash-{version}",
                                  dataset_fingerprint="d" * 64)  # fmt: skip
            answer = publish(admin, archive, MODEL)
            assert answer.status_code == 201, answer.text
            _post(admin, "/v1/runs", _run_record(f"run-dash-{version}", version, 0.3 - version / 100))
        for alias, version in (("champion", 1), ("challenger", 2)):
            moved = admin.put(
                f"/v1/models/{MODEL}/aliases/{alias}", json={"version": version, "reason": "test"}
            )
            assert moved.status_code == 200, moved.text
        agents = {}
        for kind, region in STRATA:
            for k in range(3):
                store_id = f"S-{kind[:2]}-{region[:1]}{k}"
                enrollment = create_store(admin, store_id, MODEL, type=kind, region=region)
                agents[store_id] = enroll(server.url, store_id, enrollment)
        with ThreadPoolExecutor(4) as pool:  # the server serialises writes; this overlaps the round trips
            list(pool.map(lambda n: create_store(admin, f"X-{n:04d}", MODEL, type="discount", region="west"),
                          range(idle_stores)))  # fmt: skip
        reader = admin.post("/v1/credentials", json={"role": "reader"}).json()["token"]
        started = admin.post("/v1/rollouts", json={"model_name": MODEL, "version": 3, "plan": PLAN})
        assert started.status_code == 201, started.text
        rollout_id = started.json()["rollout"]["rollout_id"]
    for week in range(3):
        start = FIRST_WEEK + timedelta(days=7 * week)
        play = functools.partial(_play_week, server, week, start)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(play, range(len(agents)), sorted(agents.items())))
        time.sleep(0.6)  # the engine decides every 0.2 s
    first = sorted(agents)[0]
    with server.client(agents[first]) as agent:
        _post(agent, "/v1/actuals", _actuals(first, FIRST_WEEK + timedelta(days=14) - timedelta(days=56), 63))
    with server.admin() as admin:
        alerts = admin.get("/v1/alerts", params={"status": "firing"}).json()
        items = alerts["items"] if isinstance(alerts, dict) else alerts
    assert items, "the drift reports should have fired an alert"
    return Filled(server=server, reader_token=reader, rollout_id=rollout_id, alert_id=items[0]["alert_id"],
                  agents=agents, idle_stores=idle_stores)  # fmt: skip


def sign_in(url: str, token: str) -> httpx.Client:
    """A browser-like client signed in through the form (cookies kept, redirects not followed)."""
    client = httpx.Client(base_url=url, timeout=30)
    form = client.get("/dashboard/sign-in")
    csrf = hidden_field(form.text, "csrf_token")
    answer = client.post(
        "/dashboard/sign-in", data={"token": token, "csrf_token": csrf, "next": "/dashboard/"}
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/dashboard/"
    return client


def hidden_field(html: str, name: str) -> str:
    """The value of the hidden form field ``name`` in a page."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden field {name}"
    return found.group(1)


_SHARED: dict[str, Filled] = {}


def shared_fleet(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Filled:
    """The session's filled server, started by the first dashboard test that needs it (page or browser).

    Before it starts, 1,000 stores of a model ``big`` with 320,000 accuracy rows are written into its
    database (the scale the pages must stay fast at); 60 extra ``demand`` stores that never report make
    that model's fleet span two pages. Tests leave the rollout running and unpaused, as they found it.
    """
    if "fleet" not in _SHARED:
        from forecasting.bundle.signing import generate_key_files

        base = tmp_path_factory.mktemp("dashboard")
        key, _, _ = generate_key_files(base / "signing.key")
        _big_fleet(base / "state", 1000, 40, 8)
        running = launch(base, key.with_name(key.name + ".pub"), ENGINE_ENV)
        request.addfinalizer(running.process.stop)
        _SHARED["fleet"] = fill(running, base, key, idle_stores=60)
    return _SHARED["fleet"]


def _big_fleet(state_dir: Path, stores: int, categories: int, weeks: int) -> None:
    """Write a large fleet straight into a new server database (before its server starts)."""
    from server.db import DB_FILE_NAME, Database

    db = Database.open(state_dir / DB_FILE_NAME)
    db.execute(
        "INSERT INTO stores (store_id, name, region, type, size, tags, model_name, created_at) "
        "SELECT printf('B%05d', i), '', ['north', 'south', 'east', 'west'][i % 4 + 1], 'discount', '', '[]', "
        "'big', now()::TIMESTAMP FROM range(?) t(i)",
        [stores],
    )
    db.execute(
        "INSERT INTO agent_status (store_id, state, model_name, active_version, agent_version, sent_at, "
        "last_contact_at) SELECT printf('B%05d', i), 'idle', 'big', 1 + i % 3, '1.0', now()::TIMESTAMP, "
        "now()::TIMESTAMP - to_seconds(i * 7) FROM range(?) t(i)",
        [stores],
    )
    db.execute(
        "INSERT INTO accuracy_rows SELECT printf('r-%d-%d', s, w), printf('B%05d', s), 'big', 1, 'served', "
        "DATE '2024-01-01' + CAST(7 * w AS INTEGER), DATE '2024-01-07' + CAST(7 * w AS INTEGER), "
        "printf('c%02d', c), '1-7', 28, "
        "100.0 + (s * 7 + c * 3 + w) % 50, 500.0, 10.0, 0.0, 0, NULL, NULL, '{}', NULL, "
        "now()::TIMESTAMP, NULL "
        "FROM range(?) a(s), range(?) b(c), range(?) d(w)",
        [stores, categories, weeks],
    )
    db.checkpoint()
    db.close()
