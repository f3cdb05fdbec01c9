"""Canary rollouts on the Walmart fleet: 45 real stores, 45 real agents (in one process), a real server.

One simulation replays the last weeks of Walmart's sales and rolls out three candidates in turn, each a
re-signed copy of the champion: a good one (forecasts x1.0) while the server is SIGKILLed and restarted
after its first week, a bad one (forecasts x1.3), and a good one that one wave store cannot activate
(signed with a key that store does not trust). The tests read the simulation's report and the server.

The accuracy gate compares both versions on the same stores (the champion in shadow beside the serving
candidate) with the paired sequential test at its defaults: forecasts x1.3 are caught in the canary.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shelfcast.simulate import Candidate, Simulation, SimulationOptions, SimulationReport

PLAN: dict[str, Any] = {
    "name": "walmart canary",
    "stratify_by": ["type"],
    "waves": [
        {"name": "canary", "share": 0.25, "bake_periods": 2},
        {"name": "everyone", "share": 1.0, "bake_periods": 1},
    ],
    "health": {"activation_timeout_seconds": 120.0, "stale_after_seconds": 600.0},
    "accuracy": {"min_observations": 10, "min_stores": 2, "min_periods": 2},
}
FAULTY = "W07"
# One simulation serves the whole module: the first test's set-up runs it (minutes on a busy machine).
pytestmark = pytest.mark.timeout(1500)  # a type A store that does not trust the third candidate's signing key


def _faulty_plan() -> dict[str, Any]:
    plan = copy.deepcopy(PLAN)
    plan["waves"][0]["stores"] = [FAULTY]
    plan["health"]["activation_timeout_seconds"] = 90.0  # the refused bundle's error count halts sooner
    return plan


@pytest.fixture(scope="module")
def fleet(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Simulation, SimulationReport]]:
    """The simulation (its server still up) and its report."""
    options = SimulationOptions(
        state_dir=tmp_path_factory.mktemp("walmart-fleet"),
        source="walmart",
        data_path=shared_data / "walmart",
        departments=3,
        periods=12,
        agent_history_periods=60,  # a season and some: what the agents' seasonal naive needs
        horizon=4,
        engine_interval_seconds=0.5,
        converge_timeout_seconds=20.0,
        keep_server=True,
        candidates=[
            Candidate(multiply=1.0, label="good", plan=PLAN, kill_server_after_periods=1),
            Candidate(multiply=1.3, label="bad", plan=PLAN),
            Candidate(multiply=1.0, label="untrusted", plan=_faulty_plan(), untrusted_by=[FAULTY]),
        ],
    )
    sim = Simulation(options)
    try:
        report = sim.run()
        yield sim, report
    finally:
        sim.options.keep_server = False
        sim.close()


def _admin(sim: Simulation) -> httpx.Client:
    return sim.admin()


def test_the_fleet_is_walmart_45_stores_by_type(fleet: tuple[Simulation, SimulationReport]) -> None:
    """All 45 Walmart stores run an agent, with stores.csv's type and a size band as attributes."""
    _, report = fleet
    assert len(report.stores) == 45
    assert {s["type"] for s in report.stores} == {"A", "B", "C"}
    assert len(report.rollouts) == 3, report.rollouts


def test_good_candidate_is_promoted_through_every_wave(fleet: tuple[Simulation, SimulationReport]) -> None:
    """Forecasts x1.0: every wave passes its gates, the champion alias moves to the candidate once."""
    sim, report = fleet
    good = report.rollouts[0]
    assert good.outcome == "promoted", good.decisions
    assert good.waves_completed == 2
    actions = [d["action"] for d in good.decisions]
    assert actions.count("next_wave") == 1
    assert actions[-2:] == ["promote", "promoted"]
    with _admin(sim) as admin:
        history = admin.get(f"/v1/models/{report.model_name}/aliases/champion/history").json()["items"]
    moves = [h for h in history if h["reason"] and good.rollout_id in h["reason"]]
    assert [(m["from_version"], m["to_version"]) for m in moves] == [(1, good.version)]
    assert all(good.version in versions for versions in report.served.values())


def test_server_killed_mid_rollout_reaches_the_same_outcome(
    fleet: tuple[Simulation, SimulationReport],
) -> None:
    """The server is SIGKILLed after the first week of the good rollout; the restarted one promotes it."""
    _, report = fleet
    good = report.rollouts[0]
    assert good.server_kills == 1
    assert good.outcome == "promoted"
    assert [d["action"] for d in good.decisions].count("promoted") == 1


def test_bad_candidate_is_halted_in_the_first_wave(fleet: tuple[Simulation, SimulationReport]) -> None:
    """Forecasts x1.3: halted in wave 1 on accuracy; no other store ever serves it; champion stays."""
    sim, report = fleet
    good, bad = report.rollouts[0], report.rollouts[1]
    assert bad.outcome == "rolled_back", bad.decisions
    assert bad.waves_completed == 0
    assert "accuracy gate failed" in bad.halt_reason
    ratios = [r for r in bad.wape_ratios.values() if r is not None]
    assert ratios and max(ratios) > 1.3, bad.wape_ratios  # the paired ceiling
    first_wave = set(bad.waves[0]["stores"])
    assert 0 < len(first_wave) < 45
    for store_id in set(report.served) - first_wave:
        assert bad.version not in report.served[store_id], store_id
        assert bad.version not in report.reported[store_id], store_id
    assert any(bad.version in report.served[s] for s in first_wave)
    with _admin(sim) as admin:
        history = admin.get(f"/v1/models/{report.model_name}/aliases/champion/history").json()["items"]
    assert all(h["to_version"] != bad.version for h in history)
    assert report.champion_end == good.version


def test_agent_that_cannot_activate_fails_the_health_gate(fleet: tuple[Simulation, SimulationReport]) -> None:
    """A wave store that does not trust the candidate's key keeps the champion: the health gate halts it."""
    _, report = fleet
    untrusted = report.rollouts[2]
    assert untrusted.outcome == "rolled_back", untrusted.decisions
    assert "health gate failed" in untrusted.halt_reason
    health = untrusted.halt_numbers["health"]
    assert FAULTY in health["error_stores"] or FAULTY in health["not_activated"], health
    assert FAULTY in untrusted.waves[0]["stores"]
    assert untrusted.version not in report.served[FAULTY]
    assert report.champion_end == report.rollouts[0].version
