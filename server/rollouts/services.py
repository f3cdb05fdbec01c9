"""Rules of rollouts: start, the engine's decisions (next wave, halt, promote), manual actions, status.

Every state change happens under one lock and is written with its audit decision in one transaction,
so the engine and an admin never both act on the same step, and a decision is never taken twice: the
engine re-reads the rollout's status before acting, and a promotion is first recorded as ``promoting``
so a restart finishes it (moving the alias only if it has not moved yet).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from forecasting.common.logs import get_logger
from server.auth import Principal
from server.db import as_utc, utcnow
from server.errors import ConflictError, InvalidInputError, NotFoundError
from server.pagination import next_cursor, page_request
from server.registry.schemas import AliasSet
from server.registry.services import RegistryService, check_name
from server.rollouts import schemas
from server.rollouts.gates import FAIL, PASS, evaluate
from server.rollouts.plan import RolloutPlan, Step, assign_waves, parse_plan, shadow_first, steps_of
from server.rollouts.repository import ACTIVE_STATUSES, RolloutRepository

log = get_logger("server.rollouts")

ENGINE = Principal(role="admin", credential_id="rollout-engine")


def new_rollout_id() -> str:
    return f"ro-{utcnow():%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


class RolloutService:
    def __init__(
        self,
        repo: RolloutRepository,
        registry: RegistryService,
        *,
        on_change: Callable[[], None],
        page_default: int,
        page_cap: int,
    ) -> None:
        self.repo = repo
        self.registry = registry
        self.on_change = on_change
        self.page_default = page_default
        self.page_cap = page_cap
        self._lock = threading.RLock()

    # --- reading ----------------------------------------------------------------------------------

    def _require(self, rollout_id: str) -> dict[str, Any]:
        row = self.repo.get(rollout_id)
        if row is None:
            raise NotFoundError(f"no rollout {rollout_id!r}")
        return row

    @staticmethod
    def _plan(row: dict[str, Any]) -> tuple[RolloutPlan, list[Step]]:
        plan = msgspec.json.decode(row["plan"], type=RolloutPlan)
        return plan, msgspec.json.decode(row["steps"], type=list[Step])

    def _summary(self, row: dict[str, Any]) -> schemas.Rollout:
        _, steps = self._plan(row)
        step = steps[int(row["step"])]
        return schemas.Rollout(
            rollout_id=row["rollout_id"],
            model_name=row["model_name"],
            candidate_version=int(row["candidate_version"]),
            champion_version=int(row["champion_version"]),
            status=row["status"],
            step=int(row["step"]),
            step_name=step.name,
            step_kind=step.kind,
            step_started_at=as_utc(row["step_started_at"]) or row["step_started_at"],
            last_outcome=row["last_outcome"],
            created_at=as_utc(row["created_at"]) or row["created_at"],
            created_by=row["created_by"],
            updated_at=as_utc(row["updated_at"]) or row["updated_at"],
            finished_at=as_utc(row["finished_at"]),
        )

    def list_rollouts(
        self, model_name: str | None, limit: int | None, cursor: str | None
    ) -> schemas.RolloutPage:
        page = page_request(limit, cursor, default=self.page_default, cap=self.page_cap)
        rows = self.repo.list_rollouts(model_name, page.after[0] if page.after else None, page.limit + 1)
        rows, nxt = next_cursor(rows, page.limit, lambda r: [r["rollout_id"]])
        return schemas.RolloutPage(items=[self._summary(r) for r in rows], next_cursor=nxt)

    def get(self, rollout_id: str) -> schemas.RolloutDetail:
        row = self._require(rollout_id)
        plan, steps = self._plan(row)
        current = int(row["step"])
        finished = row["status"] not in ACTIVE_STATUSES
        members = self.repo.stores(rollout_id)
        waves = [
            schemas.WaveStatus(
                index=i,
                name=step.name,
                kind=step.kind,
                state="current" if i == current and not finished else ("done" if i < current else "pending"),
                stores=[m["store_id"] for m in members if step.covers(m["wave"])],
                bake_periods=step.bake_periods,
                bake_min_seconds=step.bake_min_seconds,
                manual_approval=step.manual_approval,
            )
            for i, step in enumerate(steps)
        ]
        decisions = [
            schemas.Decision(
                decision_id=int(d["decision_id"]),
                step=int(d["step"]),
                action=d["action"],
                actor=d["actor"],
                reason=d["reason"],
                numbers=msgspec.json.decode(d["numbers"]),
                decided_at=as_utc(d["decided_at"]) or d["decided_at"],
            )
            for d in self.repo.decisions(rollout_id)
        ]
        if finished:
            gates = msgspec.json.decode(row["last_evaluation"]) if row["last_evaluation"] else {}
        else:
            gates = evaluate(self.repo, plan, steps, row, utcnow())
        return schemas.RolloutDetail(
            rollout=self._summary(row),
            plan=msgspec.to_builtins(plan),
            waves=waves,
            stores=[
                schemas.StoreStatus(
                    store_id=m["store_id"],
                    wave=int(m["wave"]),
                    stratum=m["stratum"],
                    state=m["state"],
                    active_version=m["active_version"],
                    last_contact_at=as_utc(m["last_contact_at"]),
                )
                for m in members
            ],
            gates=gates,
            decisions=decisions,
        )

    def override(self, store_id: str, model_name: str) -> schemas.StoreOverride | None:
        """What an active rollout of ``model_name`` assigns ``store_id`` (None: the plain champion)."""
        for row in self.repo.active(model_name):
            _, steps = self._plan(row)
            step = steps[int(row["step"])]
            wave = self.repo.store_wave(row["rollout_id"], store_id)
            if wave is None or not step.covers(wave):
                continue
            if step.shadows(wave):  # the champion serves, the candidate in shadow
                return schemas.StoreOverride(
                    rollout_id=row["rollout_id"], version=int(row["candidate_version"]), shadow=True
                )
            return schemas.StoreOverride(
                rollout_id=row["rollout_id"],
                version=int(row["candidate_version"]),
                shadow=False,
                champion_shadow=step.champion_shadow,
            )
        return None

    # --- starting ---------------------------------------------------------------------------------

    def start(self, body: schemas.RolloutCreate, who: Principal) -> schemas.RolloutDetail:
        check_name(body.model_name, "model name")
        plan = parse_plan(body.plan)
        steps = steps_of(plan)
        with self._lock:
            champion = self.registry.repo.get_alias(body.model_name, "champion")
            if champion is None:
                raise ConflictError(f"model {body.model_name!r} has no champion to roll out against")
            self.registry.assignable_version(body.model_name, body.version)
            if int(champion["version"]) == body.version:
                raise ConflictError(f"version {body.version} is already the champion")
            if self.repo.active(body.model_name):
                raise ConflictError(f"model {body.model_name!r} already has an active rollout")
            rollout_id = new_rollout_id()
            fleet = self.repo.fleet_stores(body.model_name)
            known = {s["store_id"] for s in fleet}
            unknown = sorted({sid for w in plan.waves for sid in w.stores} - known)
            if unknown:
                raise InvalidInputError(f"plan names stores that do not run {body.model_name}: {unknown}")
            chosen = assign_waves(rollout_id, plan, fleet)
            if not chosen:
                raise InvalidInputError("the plan reaches no store")
            planned = plan
            plan = shadow_first(plan, chosen, len(fleet))
            steps = steps_of(plan)
            now = utcnow()
            numbers = {
                "fleet_stores": len(fleet),
                "wave_sizes": [sum(1 for w, _ in chosen.values() if w <= i) for i in range(len(plan.waves))],
                "champion_version": int(champion["version"]),
                "candidate_version": body.version,
            }
            if plan is not planned:
                numbers["shadow_first"] = (
                    f"the first wave covers every store ({len(fleet)}): it scores the candidate in shadow "
                    f"for {plan.shadow.bake_periods} period(s) before serving it"
                )
            with self.repo.db.transaction():
                self.repo.insert_rollout(
                    {
                        "rollout_id": rollout_id,
                        "model_name": body.model_name,
                        "candidate_version": body.version,
                        "champion_version": int(champion["version"]),
                        "plan": msgspec.json.encode(plan).decode(),
                        "steps": msgspec.json.encode(steps).decode(),
                        "status": "running",
                        "now": now,
                        "created_by": who.actor,
                    }
                )
                self.repo.insert_stores(rollout_id, chosen)
                self.repo.insert_decision(rollout_id, 0, "start", who.actor, body.reason, numbers)
            self.repo.db.checkpoint()
        self.on_change()
        log.info("rollout_started", rollout_id=rollout_id, model_name=body.model_name, **numbers)
        return self.get(rollout_id)

    # --- manual actions ---------------------------------------------------------------------------

    def act(
        self, rollout_id: str, action: str, body: schemas.RolloutAction, who: Principal
    ) -> schemas.RolloutDetail:
        with self._lock:
            row = self._require(rollout_id)
            status = row["status"]
            step = int(row["step"])
            if status not in ACTIVE_STATUSES:
                raise ConflictError(f"rollout {rollout_id} is {status}; nothing to {action}")
            if action == "pause":
                if status == "paused":
                    return self.get(rollout_id)
                self._transition(row, {"status": "paused"}, "pause", who.actor, body.reason, {"from": status})
            elif action == "resume":
                if status != "paused":
                    raise ConflictError(f"rollout {rollout_id} is {status}, not paused")
                self._transition(row, {"status": "running"}, "resume", who.actor, body.reason, {})
            elif action == "approve":
                if status != "awaiting_approval":
                    raise ConflictError(f"rollout {rollout_id} is {status}, not awaiting approval")
                changes = {"status": "running", "approved_step": step}
                self._transition(row, changes, "approve", who.actor, body.reason, {})
            elif action == "promote":
                self._transition(row, {"status": "promoting"}, "promote", who.actor, body.reason, {})
                self._finish_promotion(rollout_id)
            elif action == "abort":
                self._halt(
                    row, "abort", who.actor, body.reason or "aborted by an admin", {}, status="aborted"
                )
            else:
                raise InvalidInputError(f"unknown action {action!r}")
        return self.get(rollout_id)

    # --- transitions ------------------------------------------------------------------------------

    def _transition(
        self,
        row: dict[str, Any],
        changes: dict[str, Any],
        action: str,
        actor: str,
        reason: str,
        numbers: dict[str, Any],
    ) -> None:
        with self.repo.db.transaction():
            self.repo.update(row["rollout_id"], changes)
            self.repo.insert_decision(row["rollout_id"], int(row["step"]), action, actor, reason, numbers)
        self.repo.db.checkpoint()
        self.on_change()
        log.info("rollout_decision", rollout_id=row["rollout_id"], action=action, actor=actor, reason=reason)

    def _halt(
        self,
        row: dict[str, Any],
        action: str,
        actor: str,
        reason: str,
        numbers: dict[str, Any],
        *,
        status: str,
    ) -> None:
        """Stop the rollout; every store of the candidate gets the champion again (assignments change)."""
        changes = {
            "status": status,
            "finished_at": utcnow(),
            "last_outcome": reason,
            "last_evaluation": msgspec.json.encode(numbers).decode(),
        }
        self._transition(row, changes, action, actor, reason, numbers)

    def _finish_promotion(self, rollout_id: str) -> None:
        """Move ``champion`` to the candidate (once, with its history entry), then mark it promoted."""
        row = self._require(rollout_id)
        if row["status"] != "promoting":
            return
        model, candidate = row["model_name"], int(row["candidate_version"])
        alias = self.registry.repo.get_alias(model, "champion")
        moved = False
        if alias is None or int(alias["version"]) != candidate:
            reason = f"rollout {rollout_id} promoted version {candidate}"
            self.registry.set_alias(model, "champion", AliasSet(version=candidate, reason=reason), ENGINE)
            moved = True
        numbers = {
            "champion_from": int(row["champion_version"]),
            "champion_to": candidate,
            "alias_moved": moved,
        }
        changes = {
            "status": "promoted",
            "finished_at": utcnow(),
            "last_outcome": "promoted",
            "last_evaluation": row["last_evaluation"],
        }
        self._transition(row, changes, "promoted", ENGINE.actor, "champion alias moved", numbers)

    # --- the engine's decisions -------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> int:
        """One pass of the engine over the active rollouts; returns how many decisions it took."""
        taken = 0
        for row in self.repo.active():
            with self._lock:
                taken += self._decide(row["rollout_id"], now or utcnow())
        return taken

    def _decide(self, rollout_id: str, now: datetime) -> int:  # noqa: PLR0911 - one return per decision
        row = self._require(rollout_id)  # re-read under the lock: an admin may just have acted
        status = row["status"]
        if status == "promoting":
            self._finish_promotion(rollout_id)
            return 1
        if status != "running":
            return 0
        plan, steps = self._plan(row)
        step = int(row["step"])
        evaluation = evaluate(self.repo, plan, steps, row, now)
        health, accuracy, bake = evaluation["health"], evaluation["accuracy"], evaluation["bake"]
        if FAIL in (health["outcome"], accuracy["outcome"]):
            failed = [g for g in ("health", "accuracy") if evaluation[g]["outcome"] == FAIL]
            reason = "; ".join(f"{g} gate failed: {evaluation[g]['reason']}" for g in failed)
            self._halt(row, "halt", ENGINE.actor, reason, evaluation, status="rolled_back")
            log.warning("rollout_halted", rollout_id=rollout_id, step=step, reason=reason)
            return 1
        ready = bake["done"] and health["outcome"] == PASS and accuracy["outcome"] == PASS
        if ready and steps[step].manual_approval and row["approved_step"] != step:
            changes: dict[str, Any] = {
                "status": "awaiting_approval",
                "last_outcome": "awaiting approval",
                "last_evaluation": msgspec.json.encode(evaluation).decode(),
            }
            reason = "gates passed; a person must approve the next wave"
            self._transition(row, changes, "await_approval", ENGINE.actor, reason, evaluation)
            return 1
        if ready and step + 1 < len(steps):
            changes = {
                "step": step + 1,
                "step_started_at": now,
                "last_outcome": "next wave",
                "last_evaluation": msgspec.json.encode(evaluation).decode(),
            }
            self._transition(
                row, changes, "next_wave", ENGINE.actor, f"gates passed after {steps[step].name}", evaluation
            )
            return 1
        if ready:
            changes = {"status": "promoting", "last_evaluation": msgspec.json.encode(evaluation).decode()}
            self._transition(row, changes, "promote", ENGINE.actor, "every wave passed its gates", evaluation)
            self._finish_promotion(rollout_id)
            return 1
        outcome = _waiting_outcome(evaluation)
        if outcome != row["last_outcome"]:
            changes = {"last_outcome": outcome, "last_evaluation": msgspec.json.encode(evaluation).decode()}
            self._transition(row, changes, "keep_baking", ENGINE.actor, outcome, evaluation)
            return 1
        return 0


def _waiting_outcome(evaluation: dict[str, Any]) -> str:
    health, accuracy, bake = evaluation["health"], evaluation["accuracy"], evaluation["bake"]
    if health["outcome"] != PASS:
        return str(health["reason"])
    if accuracy["outcome"] != PASS:
        return str(accuracy["reason"])
    return f"baking: {bake['periods']}/{bake['bake_periods']} periods"
