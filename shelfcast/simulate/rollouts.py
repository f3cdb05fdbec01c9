"""The rollout driver: each candidate published and rolled out with its plan while the replay plays
periods, until the server's engine promotes it, rolls it back, or the periods run out; the outcome read
from the rollout's waves and decisions."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forecasting.common.logs import get_logger
from shelfcast.simulate.fleet import check_response
from shelfcast.simulate.options import Candidate, SimulationError
from shelfcast.simulate.report import RolloutResult

if TYPE_CHECKING:
    from shelfcast.simulate.clock import Clock
    from shelfcast.simulate.fleet import Fleet
    from shelfcast.simulate.publishing import Publisher
    from shelfcast.simulate.report import Timings

log = get_logger("shelfcast.simulate.rollouts")

ACTIVE = ("running", "paused", "awaiting_approval", "promoting")


class RolloutDriver:
    """Rolls the simulation's candidates out one after another over the replay's periods."""

    def __init__(self, fleet: Fleet, clock: Clock, publisher: Publisher, timings: Timings) -> None:
        self.fleet = fleet
        self.clock = clock
        self.publisher = publisher
        self.options = fleet.options
        self.timings = timings
        self.first_champion: int | None = None

    def roll_candidates(self) -> list[RolloutResult]:
        """Roll out every candidate in turn while periods are left; stop after one still running."""
        rollouts: list[RolloutResult] = []
        for candidate in self.options.candidates:
            if self.clock.finished:
                log.warning(
                    "simulation_out_of_periods", candidates_left=len(self.options.candidates) - len(rollouts)
                )
                break
            self.options.progress(f"rolling out a candidate ({candidate.label or candidate.multiply})")
            rollouts.append(self.roll(candidate))
            done = rollouts[-1]
            self.options.progress(
                f"rollout of v{done.version}: {done.outcome} after {done.waves_completed} wave(s), "
                f"{done.periods} period(s)"
            )
            if rollouts[-1].outcome == "running":
                break  # the replay ran out of periods with the rollout still going (it stays active)
        return rollouts

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        """The rollout as the server shows it (waves, decisions)."""
        with self.fleet.admin() as client:
            response = client.get(f"/v1/rollouts/{rollout_id}")
        check_response(response, f"read rollout {rollout_id}")
        body: dict[str, Any] = response.json()
        return body

    def start_rollout(self, candidate: Candidate) -> tuple[str, int]:
        """Publish the candidate and start its rollout; the rollout's id and the candidate's version."""
        bundle, version = self.publisher.candidate_bundle(candidate)
        self.publisher.publish(bundle, champion=False, reason="")
        plan = self._plan(candidate)
        with self.fleet.admin() as client:
            response = client.post(
                "/v1/rollouts",
                json={"model_name": self.options.model_name, "version": version, "plan": plan,
                      "reason": candidate.describe()},
            )  # fmt: skip
        check_response(response, f"start the rollout of v{version}")
        rollout_id: str = response.json()["rollout"]["rollout_id"]
        log.info(
            "simulated_rollout_started", rollout_id=rollout_id, version=version, multiply=candidate.multiply
        )
        return rollout_id, version

    def _plan(self, candidate: Candidate) -> dict[str, Any]:
        """The candidate's plan; its waves are drawn from the simulation's seed unless the plan seeds them."""
        if candidate.plan is not None:
            plan = dict(candidate.plan)
        elif candidate.plan_file is not None:
            plan = _read_plan(candidate.plan_file)
        elif self.options.plan is not None:
            plan = dict(self.options.plan)
        elif self.options.plan_file is not None:
            plan = _read_plan(self.options.plan_file)
        else:
            plan = default_plan()
        index = self.options.candidates.index(candidate) if candidate in self.options.candidates else 0
        plan.setdefault("seed", f"{self.options.seed}-{index}")
        return plan

    def roll(self, candidate: Candidate) -> RolloutResult:
        """Start the candidate's rollout and play periods until it ends or the periods run out."""
        started = time.monotonic()
        rollout_id, version = self.start_rollout(candidate)
        periods = 0
        wait = self.options.engine_wait_seconds
        if wait is None:
            wait = 3 * self.options.engine_interval_seconds
        body = self.rollout_status(rollout_id)
        while body["rollout"]["status"] in ACTIVE and not self.clock.finished:
            self.clock.advance()
            periods += 1
            if candidate.kill_server_after_periods == periods:
                self.fleet.kill_server(self.clock.period_index)
            time.sleep(wait)
            body = self.rollout_status(rollout_id)
        deadline = time.monotonic() + 10 * max(wait, 0.5)
        while body["rollout"]["status"] == "promoting" and time.monotonic() < deadline:
            time.sleep(0.2)
            body = self.rollout_status(rollout_id)
        self.timings.add(f"rollout_v{version}", started)
        result = _result(body, version, candidate, periods)
        result.server_kills = int(
            candidate.kill_server_after_periods is not None and periods >= candidate.kill_server_after_periods
        )
        if result.outcome == "promoted" and self.options.reset_champion and self.first_champion is not None:
            self._move_champion(self.first_champion, f"simulation: back to v{self.first_champion}")
        return result

    def _move_champion(self, version: int, reason: str) -> None:
        """Point ``champion`` at ``version`` and wait for the fleet to serve it."""
        with self.fleet.admin() as client:
            response = client.put(
                f"/v1/models/{self.options.model_name}/aliases/champion",
                json={"version": version, "reason": reason},
            )
        check_response(response, f"move the champion back to v{version}")
        self.fleet.converge(self.options.converge_timeout_seconds)

    def champion_now(self) -> int | None:
        """The version ``champion`` points at now (None if it points nowhere)."""
        with self.fleet.admin() as client:
            response = client.get(f"/v1/models/{self.options.model_name}/aliases/champion")
        return int(response.json()["version"]) if response.status_code == 200 else None


def default_plan() -> dict[str, Any]:
    """A fleet-wide shadow phase, then three waves (20 %, 50 %, all), one or two periods of bake, the
    paired gate's defaults (5 % false rollbacks, 5 % degradation worth stopping for, ceiling 2.0) on
    evidence sized for a small replay."""
    return {
        "name": "simulated canary",
        "stratify_by": ["type", "region"],
        "shadow": {"enabled": True, "scope": "fleet", "bake_periods": 1},
        "waves": [
            {"name": "canary", "share": 0.2, "bake_periods": 2},
            {"name": "half", "share": 0.5, "bake_periods": 1},
            {"name": "everyone", "share": 1.0, "bake_periods": 1},
        ],
        "health": {"activation_timeout_seconds": 120.0, "stale_after_seconds": 600.0},
        "accuracy": {"min_observations": 10, "min_stores": 2, "min_periods": 1},
    }


def _result(body: dict[str, Any], version: int, candidate: Candidate, periods: int) -> RolloutResult:
    """How the rollout went, read from its waves and decisions: outcome, waves done, gate numbers."""
    status = body["rollout"]["status"]
    outcome = {"promoted": "promoted", "rolled_back": "rolled_back", "aborted": "aborted"}.get(
        status, "running"
    )
    serve_waves = [w for w in body["waves"] if w["kind"] != "shadow"]
    done = len(serve_waves) if status == "promoted" else sum(1 for w in serve_waves if w["state"] == "done")
    decisions = [
        {"action": d["action"], "reason": d["reason"], "step": d["step"], "decided_at": d["decided_at"]}
        for d in body["decisions"]
    ]
    ratios: dict[str, float | None] = {}
    halt = ""
    halt_numbers: dict[str, Any] = {}
    for d in body["decisions"]:
        categories = (d.get("numbers") or {}).get("accuracy", {}).get("categories") or {}
        if categories:
            ratios = {c: v.get("wape_ratio") for c, v in sorted(categories.items())}
        if d["action"] == "halt":
            halt, halt_numbers = d["reason"], d.get("numbers") or {}
    return RolloutResult(
        rollout_id=body["rollout"]["rollout_id"],
        version=version,
        multiply=candidate.multiply,
        label=candidate.label,
        outcome=outcome,
        status=status,
        waves_completed=done,
        waves=[
            {"name": w["name"], "kind": w["kind"], "state": w["state"], "stores": w["stores"]}
            for w in body["waves"]
        ],
        periods=periods,
        decisions=decisions,
        wape_ratios=ratios,
        halt_reason=halt,
        halt_numbers=halt_numbers,
    )


def _read_plan(path: Path) -> dict[str, Any]:
    """A plan from a TOML file (a rollout file's model name and version are the simulation's own)."""
    try:
        plan = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SimulationError(f"{path}: {exc}") from None
    plan.pop("model_name", None)
    plan.pop("version", None)
    return plan
