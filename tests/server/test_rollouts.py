"""Canary rollouts on a real server: waves, gates on heartbeats and accuracy reports, promote and rollback.

Stores act as agents do, over HTTP with their own credentials: poll the assignment, heartbeat the version
they run, and post weekly accuracy reports of the version they serve (and of the shadow one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from forecasting.common.contracts import AccuracyReport, AccuracyRow, Heartbeat
from tests.server.conftest import RunningServer, create_store, enroll, launch, make_bundle, publish, unique

ENGINE_ENV = {
    "SHELFCAST_ROLLOUTS__ENGINE_INTERVAL_SECONDS": "0.2",
    "SHELFCAST_ROLLOUTS__LEASE_SECONDS": "2",
}
STRATA = [("supercenter", "north"), ("supercenter", "south"), ("discount", "north"), ("discount", "south")]
CATEGORIES = ("dairy", "produce")
FIRST_WEEK = date(2024, 1, 7)


def base_plan(**accuracy: Any) -> dict[str, Any]:
    return {
        "waves": [
            {"name": "canary", "share": 0.34, "bake_periods": 2},
            {"name": "everyone", "share": 1.0, "bake_periods": 1},
        ],
        "health": {"activation_timeout_seconds": 60},
        "accuracy": {"max_wape_ratio": 1.1, "min_observations": 40, "min_periods": 1, **accuracy},
    }


@pytest.fixture(scope="module")
def rollout_server(tmp_path_factory: pytest.TempPathFactory, signing_key: Path) -> Iterator[RunningServer]:
    """A server whose rollout engine decides every 0.2 s (lease 2 s)."""
    running = launch(
        tmp_path_factory.mktemp("rollouts"), signing_key.with_name(signing_key.name + ".pub"), ENGINE_ENV
    )
    yield running
    running.process.stop()


@dataclass
class Fleet:
    server: RunningServer
    model: str
    tokens: dict[str, str]
    champion: int = 1
    candidate: int = 2
    week: int = 0
    seen: dict[str, set[int]] = field(default_factory=dict)

    def agent(self, store_id: str) -> httpx.Client:
        return self.server.client(self.tokens[store_id])

    def assignment(self, store_id: str) -> dict[str, Any]:
        with self.agent(store_id) as agent:
            response = agent.get(f"/v1/stores/{store_id}/assignment")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        self.seen.setdefault(store_id, set()).add(int(body["version"]))
        return body

    def heartbeat(self, agent: httpx.Client, store_id: str, running: int) -> None:
        beat = Heartbeat(
            store_id=store_id,
            state="idle",
            model_name=self.model,
            active_version=running,
            sent_at=datetime.now(UTC),
        )
        ok = agent.post("/v1/heartbeats", content=msgspec.json.encode(beat))
        assert ok.status_code in (200, 202), ok.text

    def play_week(self, *, candidate_factor: float = 1.0, failing: frozenset[str] = frozenset()) -> None:
        """Every store polls, heartbeats the version it runs, and reports a week of accuracy for it."""
        start = FIRST_WEEK + timedelta(days=7 * self.week)
        self.week += 1
        for i, store_id in enumerate(sorted(self.tokens)):
            assigned = self.assignment(store_id)
            running = self.champion if store_id in failing else int(assigned["version"])
            with self.agent(store_id) as agent:
                self.heartbeat(agent, store_id, running)
                versions = [(running, "served")]
                if assigned.get("shadow_version"):
                    versions.append((int(assigned["shadow_version"]), "shadow"))
                for version, role in versions:
                    factor = candidate_factor if version == self.candidate else 1.0
                    self._report(agent, store_id, version, role, start, factor, i)

    def _report(
        self, agent: httpx.Client, store_id: str, version: int, role: str, start: date, factor: float, i: int
    ) -> None:
        rows = []
        for c, category in enumerate(CATEGORIES):
            abs_y = 1000.0 + 37 * i + 11 * c
            abs_err = abs_y * (0.20 + 0.004 * ((i + c + self.week) % 5)) * factor
            rows.append(
                AccuracyRow(category=category, horizon_bucket="1-7", n=28, abs_err_sum=abs_err,
                            abs_y_sum=abs_y, err_sum=abs_err / 3)
            )  # fmt: skip
        report = AccuracyReport(
            report_id=f"acc-{store_id}-{version}-{role}-{start}",
            store_id=store_id,
            model_name=self.model,
            version=version,
            role=role,
            scoring_id=f"{store_id}-{start}",  # both versions scored on one history: paired evidence
            period_start=start,
            period_end=start + timedelta(days=6),
            created_at=datetime.now(UTC),
            rows=rows,
        )
        response = agent.post(
            "/v1/accuracy",
            content=msgspec.json.encode(report),
            headers={"Idempotency-Key": report.report_id, "Content-Type": "application/json"},
        )
        assert response.status_code == 202, response.text


def make_fleet(server: RunningServer, tmp_path: Path, signing_key: Path, per_stratum: int = 3) -> Fleet:
    model = unique("ro")
    with server.admin() as admin:
        for version in (1, 2):
            answer = publish(admin, make_bundle(tmp_path, signing_key, model, version), model)
            assert answer.status_code == 201, answer.text
        moved = admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 1})
        assert moved.status_code == 200, moved.text
        tokens = {}
        for kind, region in STRATA:
            for k in range(per_stratum):
                store_id = f"{model}-{kind[:2]}-{region[:1]}{k}"
                enrollment = create_store(admin, store_id, model, type=kind, region=region)
                tokens[store_id] = enroll(server.url, store_id, enrollment)
    return Fleet(server=server, model=model, tokens=tokens)


def start(fleet: Fleet, plan: dict[str, Any]) -> str:
    with fleet.server.admin() as admin:
        response = admin.post(
            "/v1/rollouts", json={"model_name": fleet.model, "version": fleet.candidate, "plan": plan}
        )
    assert response.status_code == 201, response.text
    rollout_id: str = response.json()["rollout"]["rollout_id"]
    return rollout_id


def status(server: RunningServer, rollout_id: str) -> dict[str, Any]:
    with server.admin() as admin:
        response = admin.get(f"/v1/rollouts/{rollout_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def settle(
    server: RunningServer, rollout_id: str, decisions: int, timeout_seconds: float = 15
) -> dict[str, Any]:
    """Wait until the engine has taken more than ``decisions`` decisions; the newest status."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        body = status(server, rollout_id)
        if len(body["decisions"]) > decisions or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def drive(fleet: Fleet, rollout_id: str, weeks: int, wait_seconds: float = 15, **week: Any) -> dict[str, Any]:
    """Play weeks until the rollout finishes (or ``weeks`` run out), letting the engine decide after each."""
    body = status(fleet.server, rollout_id)
    for _ in range(weeks):
        if body["rollout"]["status"] not in ("running", "paused", "awaiting_approval", "promoting"):
            break
        fleet.play_week(**week)
        # the engine may decide while the week's reports arrive store by store: wait for a decision
        # taken on the whole week
        played = status(fleet.server, rollout_id)
        if played["rollout"]["status"] not in ("running", "paused", "awaiting_approval", "promoting"):
            return played
        body = settle(fleet.server, rollout_id, len(played["decisions"]), wait_seconds)
    return body


def wave_stores(body: dict[str, Any], index: int) -> set[str]:
    return set(body["waves"][index]["stores"])


def champion_of(server: RunningServer, model: str) -> int:
    with server.admin() as admin:
        version: int = admin.get(f"/v1/models/{model}/aliases/champion").json()["version"]
    return version


def test_good_candidate_is_promoted_through_every_wave(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """A candidate as accurate as the champion passes both waves; champion moves once, with its history."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key)
    rollout_id = start(fleet, base_plan())
    body = status(rollout_server, rollout_id)
    first = wave_stores(body, 0)
    assert len(first) == 4
    assert len({s["stratum"] for s in body["stores"] if s["store_id"] in first}) == 4  # one per stratum
    body = drive(fleet, rollout_id, weeks=8)
    assert body["rollout"]["status"] == "promoted", body["rollout"]
    actions = [d["action"] for d in body["decisions"]]
    assert actions[0] == "start"
    assert actions.count("next_wave") == 1
    assert actions[-2:] == ["promote", "promoted"]
    passed = next(d for d in body["decisions"] if d["action"] == "next_wave")["numbers"]["accuracy"]
    assert {c["outcome"] for c in passed["categories"].values()} == {"pass"}
    assert all(c["wape_ratio"] < 1.1 for c in passed["categories"].values())
    assert champion_of(rollout_server, fleet.model) == fleet.candidate
    with rollout_server.admin() as admin:
        history = admin.get(f"/v1/models/{fleet.model}/aliases/champion/history").json()["items"]
    assert history[0]["from_version"] == 1
    assert history[0]["to_version"] == 2
    assert rollout_id in history[0]["reason"]
    assert all(fleet.assignment(s)["version"] == 2 for s in fleet.tokens)


def test_bad_candidate_is_halted_in_the_first_wave_and_rolled_back(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """WAPE x1.3 against the champion on the same stores halts wave 1; no other store gets it."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key)
    rollout_id = start(fleet, base_plan())
    first = wave_stores(status(rollout_server, rollout_id), 0)
    body = drive(fleet, rollout_id, weeks=6, candidate_factor=1.3)
    assert body["rollout"]["status"] == "rolled_back", body["rollout"]
    assert body["rollout"]["step"] == 0
    halt = body["decisions"][-1]
    assert halt["action"] == "halt"
    assert "accuracy gate failed" in halt["reason"]
    ratios = [c["wape_ratio"] for c in halt["numbers"]["accuracy"]["categories"].values()]
    assert all(r > 1.2 for r in ratios), ratios
    assert champion_of(rollout_server, fleet.model) == 1
    for store_id, versions in fleet.seen.items():
        if store_id not in first:
            assert versions == {1}, store_id
    assert all(fleet.assignment(s)["version"] == 1 for s in fleet.tokens)
    assert all(fleet.assignment(s).get("rollout_id") is None for s in fleet.tokens)


def test_activation_failure_fails_the_health_gate(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """A wave store still on the champion after the activation timeout halts the rollout (health)."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key, per_stratum=2)
    plan = base_plan()
    plan["health"] = {"activation_timeout_seconds": 15}  # every other store heartbeats first, also under load
    rollout_id = start(fleet, plan)
    failing = sorted(wave_stores(status(rollout_server, rollout_id), 0))[:1]
    # the failing store (last) rejected the candidate and still runs the champion
    for store_id in sorted(fleet.tokens, key=lambda s: s in failing):
        assigned = int(fleet.assignment(store_id)["version"])
        with fleet.agent(store_id) as agent:
            fleet.heartbeat(agent, store_id, fleet.champion if store_id in failing else assigned)
    deadline = time.monotonic() + 40
    while (body := status(rollout_server, rollout_id))["rollout"]["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert body["rollout"]["status"] == "rolled_back", body["decisions"]
    halt = body["decisions"][-1]
    assert "health gate failed" in halt["reason"]
    assert halt["numbers"]["health"]["not_activated"] == failing
    assert champion_of(rollout_server, fleet.model) == 1


def test_thin_evidence_is_inconclusive_and_keeps_baking(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """Too few observations per category: the accuracy gate says inconclusive and the wave keeps baking."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key, per_stratum=2)
    rollout_id = start(fleet, base_plan(min_observations=10_000))
    body = drive(fleet, rollout_id, weeks=3, wait_seconds=2, candidate_factor=1.3)
    assert body["rollout"]["status"] == "running"
    assert body["rollout"]["step"] == 0
    accuracy = body["gates"]["accuracy"]
    assert accuracy["outcome"] == "inconclusive"
    assert accuracy["reason"].startswith("inconclusive, keep baking")
    assert body["gates"]["bake"]["periods"] >= 2
    assert any(d["action"] == "keep_baking" and "inconclusive" in d["reason"] for d in body["decisions"])
    with rollout_server.admin() as admin:
        aborted = admin.post(f"/v1/rollouts/{rollout_id}/abort", json={"reason": "test over"})
    assert aborted.json()["rollout"]["status"] == "aborted"
    assert all(fleet.assignment(s)["version"] == 1 for s in fleet.tokens)


def test_shadow_phase_serves_the_champion_and_compares_on_the_same_stores(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """In the shadow phase wave stores serve v1 with v2 as shadow; a good shadow moves on to serving."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key, per_stratum=2)
    plan = base_plan()
    plan["shadow"] = {"enabled": True, "bake_periods": 1}
    rollout_id = start(fleet, plan)
    first = wave_stores(status(rollout_server, rollout_id), 0)
    shadowed = {s: fleet.assignment(s) for s in fleet.tokens}
    for store_id, assigned in shadowed.items():
        assert assigned["version"] == 1
        assert assigned.get("shadow_version") == (2 if store_id in first else None)
    body = drive(fleet, rollout_id, weeks=1)
    assert body["rollout"]["step_kind"] == "serve", body["decisions"]
    passed = next(d for d in body["decisions"] if d["action"] == "next_wave")
    assert passed["numbers"]["accuracy"]["comparison"].startswith("paired")
    assert {c["outcome"] for c in passed["numbers"]["accuracy"]["categories"].values()} == {"pass"}
    assert all(fleet.assignment(s)["version"] == 2 for s in first)


def test_fleet_shadow_judges_every_store_before_any_serves_the_candidate(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """scope = "fleet": every store scores v2 in shadow; a worse v2 is rolled back before any serves it."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key, per_stratum=2)
    plan = base_plan()
    plan["shadow"] = {"enabled": True, "scope": "fleet", "bake_periods": 1}
    rollout_id = start(fleet, plan)
    body = status(rollout_server, rollout_id)
    assert wave_stores(body, 0) == set(fleet.tokens)  # the shadow step lists the whole fleet
    assert len(wave_stores(body, 1)) < len(fleet.tokens)  # the canary still serves a share
    for store_id in fleet.tokens:
        assigned = fleet.assignment(store_id)
        assert (assigned["version"], assigned.get("shadow_version")) == (1, 2)
    body = drive(fleet, rollout_id, weeks=4, candidate_factor=1.3)
    assert body["rollout"]["status"] == "rolled_back", body["decisions"]
    halt = body["decisions"][-1]
    assert halt["step"] == 0
    assert halt["numbers"]["accuracy"]["step_stores"] == len(fleet.tokens)
    assert all(versions == {1} for versions in fleet.seen.values())  # no store ever served v2


def test_server_restart_mid_rollout_reaches_the_same_outcome(tmp_path: Path, signing_key: Path) -> None:
    """The server is killed after wave 1 started baking; a new one carries the rollout to promotion."""
    server = launch(tmp_path / "srv", signing_key.with_name(signing_key.name + ".pub"), ENGINE_ENV)
    try:
        fleet = make_fleet(server, tmp_path, signing_key, per_stratum=2)
        rollout_id = start(fleet, base_plan())
        fleet.play_week()
        settle(server, rollout_id, 1)
        server.process.kill()
        server.process = launch_again(server)
        body = status(server, rollout_id)
        assert body["rollout"]["status"] == "running"
        assert body["rollout"]["step"] == 0
        body = drive(fleet, rollout_id, weeks=8)
        assert body["rollout"]["status"] == "promoted", body["rollout"]
        assert [d["action"] for d in body["decisions"]].count("promoted") == 1
        assert champion_of(server, fleet.model) == 2
    finally:
        server.process.stop()


def launch_again(server: RunningServer) -> Any:
    from tests.server.conftest import start_process

    return start_process(server.state_dir, server.port, server.trusted_key, server.extra_env)


def cli_run(server: RunningServer, *args: str) -> str:
    from click.testing import CliRunner

    from shelfcast.cli import cli

    env = {"SHELFCAST_SERVER_URL": server.url, "SHELFCAST_TOKEN": server.admin_token}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_starts_shows_pauses_resumes_and_promotes(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """`shelfcast rollouts start|status|pause|resume|promote` drive a rollout from a TOML plan file."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key, per_stratum=1)
    plan = Path(__file__).parents[2] / "configs" / "rollout.toml"
    started = msgspec.json.decode(
        cli_run(rollout_server, "rollouts", "start", "--model", fleet.model, "--version", "2", "--plan",
                str(plan), "-o", "json")
    )  # fmt: skip
    rollout_id = started["rollout"]["rollout_id"]
    assert [w["name"] for w in started["waves"]] == ["shadow", "canary", "half", "everyone"]
    table = cli_run(rollout_server, "rollouts", "status", rollout_id)
    assert "waves" in table and "gates" in table and "decisions" in table
    assert "activated share" in table and "new errors per store" in table
    paused = msgspec.json.decode(cli_run(rollout_server, "rollouts", "pause", rollout_id, "-o", "json"))
    assert paused["rollout"]["status"] == "paused"
    resumed = msgspec.json.decode(cli_run(rollout_server, "rollouts", "resume", rollout_id, "-o", "json"))
    assert resumed["rollout"]["status"] == "running"
    promoted = msgspec.json.decode(
        cli_run(rollout_server, "rollouts", "promote", rollout_id, "--reason", "looks good", "-o", "json")
    )
    assert promoted["rollout"]["status"] == "promoted"
    actions = [d["action"] for d in promoted["decisions"] if d["action"] != "keep_baking"]
    assert actions == ["start", "pause", "resume", "promote", "promoted"]
    assert champion_of(rollout_server, fleet.model) == 2
    listed = cli_run(rollout_server, "rollouts", "list", "--model", fleet.model)
    assert rollout_id in listed


def test_error_counts_are_stored_and_new_ones_fail_the_health_gate(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """Heartbeat error counters show in fleet status; only wave errors new since the step started halt it."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key, per_stratum=1)
    erring = sorted(fleet.tokens)[0]
    plan = base_plan()
    plan["waves"][0] = {"name": "canary", "stores": [erring], "bake_periods": 2}
    plan["health"] = {"activation_timeout_seconds": 600, "max_errors_per_store": 1}

    def beat(store_id: str, errors: dict[str, int], last_error: str | None = None) -> None:
        version = int(fleet.assignment(store_id)["version"])
        body = Heartbeat(store_id=store_id, state="idle", model_name=fleet.model, active_version=version,
                         sent_at=datetime.now(UTC), errors=errors, last_error=last_error)  # fmt: skip
        with fleet.agent(store_id) as agent:
            answer = agent.post("/v1/heartbeats", content=msgspec.json.encode(body))
        assert answer.status_code in (200, 202), answer.text

    beat(erring, {"sync": 7, "scoring": 3}, "scoring: v1: old trouble")  # before the rollout: not new
    rollout_id = start(fleet, plan)
    assert wave_stores(status(rollout_server, rollout_id), 0) == {erring}
    for store_id in fleet.tokens:
        beat(store_id, {"sync": 7, "scoring": 3} if store_id == erring else {"scoring": 5})
    body = settle(rollout_server, rollout_id, 1, timeout_seconds=3)
    assert body["rollout"]["status"] == "running", body["decisions"]
    assert body["gates"]["health"]["new_errors"] == {}  # stores outside the wave do not count
    beat(erring, {"sync": 9, "scoring": 3, "verify": 1}, "verify: update to v2 refused: SignatureError")
    with rollout_server.admin() as admin:
        shown = admin.get(f"/v1/stores/{erring}").json()["status"]
    assert shown["errors"] == {"sync": 9, "scoring": 3, "verify": 1}
    assert shown["last_error"] == "verify: update to v2 refused: SignatureError"
    body = settle(rollout_server, rollout_id, len(status(rollout_server, rollout_id)["decisions"]), 2)
    assert body["rollout"]["status"] == "running", body["decisions"]  # sync is not gated; verify 1 <= 1
    beat(erring, {"sync": 9, "scoring": 4, "verify": 1, "health_check": 1}, "scoring: v2: boom")
    deadline = time.monotonic() + 15
    while (body := status(rollout_server, rollout_id))["rollout"]["status"] == "running":
        assert time.monotonic() < deadline, body["gates"]
        time.sleep(0.2)
    assert body["rollout"]["status"] == "rolled_back", body["decisions"]
    halt = body["decisions"][-1]
    assert "health gate failed" in halt["reason"] and erring in halt["reason"]
    health = halt["numbers"]["health"]
    assert health["new_errors"] == {erring: {"verify": 1, "health_check": 1, "scoring": 1}}
    assert health["error_stores"] == [erring]
    assert health["last_errors"] == {erring: "scoring: v2: boom"}
    assert champion_of(rollout_server, fleet.model) == 1


def test_a_first_wave_covering_every_store_scores_in_shadow_first(
    rollout_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """A 100 % first wave has no later wave to learn from: the server adds a shadow phase and says why."""
    fleet = make_fleet(rollout_server, tmp_path, signing_key, per_stratum=1)
    plan = {
        "waves": [{"name": "everyone", "share": 1.0, "bake_periods": 1}],
        "accuracy": {"min_observations": 10},
    }
    rollout_id = start(fleet, plan)
    body = status(rollout_server, rollout_id)
    assert [w["kind"] for w in body["waves"]] == ["shadow", "serve"]
    assert "covers every store (4)" in body["decisions"][0]["numbers"]["shadow_first"]
    for store_id in fleet.tokens:
        assigned = fleet.assignment(store_id)
        assert (assigned["version"], assigned.get("shadow_version")) == (1, 2)
    body = drive(fleet, rollout_id, weeks=3)
    assert body["rollout"]["status"] == "promoted", body["decisions"]
    assert "accuracy gated in earlier waves" not in str(body["decisions"])
    serving = next(d for d in body["decisions"] if d["action"] == "next_wave")
    assert serving["numbers"]["accuracy"]["outcome"] == "pass"
    assert serving["numbers"]["accuracy"]["stores"] == 4
