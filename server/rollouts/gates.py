"""Gates of a rollout step, computed from what the server already stores (heartbeats, accuracy reports).

Health: every wave store runs the candidate within the activation timeout (a store still on another
version after it, or one that reports the ``rollback`` state, fails the gate), none has gone stale, and
none reports more than ``max_errors_per_store`` new errors of the update and scoring kinds
(``GATED_ERROR_KINDS``: a refused bundle, a failed health check or activation, failed scoring of the
served or the shadow version) in heartbeats received since the step started.
Accuracy: per category, the candidate's pooled WAPE against the champion's — on the same stores in a
shadow step, on matched control stores (same stratum, not in the wave) when serving — as a ratio held
against ``max_wape_ratio``; thin evidence is ``inconclusive`` and the step keeps baking.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from server.fleet.repository import FleetRepository
from server.rollouts.plan import RolloutPlan, Step, stratum_of
from server.rollouts.repository import RolloutRepository

PASS, FAIL, INCONCLUSIVE, WAITING = "pass", "fail", "inconclusive", "waiting"

# Error kinds of agent heartbeats that say the candidate (or the update path) is unhealthy; ``sync``,
# ``download``, ``report``, ``ingest`` and ``monitoring`` errors are the network's or the store's.
GATED_ERROR_KINDS = ("verify", "health_check", "activation", "scoring", "shadow")


def _wape(row: dict[str, Any] | None) -> float | None:
    if row is None or not row["abs_y_sum"]:
        return None
    return float(row["abs_err_sum"]) / float(row["abs_y_sum"])


def health_gate(
    plan: RolloutPlan,
    step: Step,
    candidate: int,
    stores: list[dict[str, Any]],
    started_at: datetime,
    now: datetime,
    errors: dict[str, dict[str, int]] | None = None,
    last_errors: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """``errors``: per wave store, new errors by kind since the step started (``GATED_ERROR_KINDS``)."""
    gate = plan.health
    errors = errors or {}
    elapsed = (now - started_at).total_seconds()
    stale_before = now - timedelta(seconds=gate.stale_after_seconds)
    n = len(stores)
    activated = [s["store_id"] for s in stores if s["active_version"] == candidate]
    rolled_back = [
        s["store_id"]
        for s in stores
        if s["state"] == "rollback"
        and s["last_contact_at"] is not None
        and s["last_contact_at"] >= started_at
    ]
    stale = [
        s["store_id"]
        for s in stores
        if s["last_contact_at"] is not None and s["last_contact_at"] < stale_before
    ]
    stale_share = len(stale) / n if n else 0.0
    erring = sorted(sid for sid, kinds in errors.items() if sum(kinds.values()) > gate.max_errors_per_store)
    numbers: dict[str, Any] = {
        "stores": n,
        "stale_stores": stale,
        "stale_share": round(stale_share, 4),
        "max_stale_share": gate.max_stale_share,
        "elapsed_seconds": round(elapsed, 1),
        "new_errors": errors,
        "error_stores": erring,
        "max_errors_per_store": gate.max_errors_per_store,
        "gated_error_kinds": list(GATED_ERROR_KINDS),
    }
    if erring:
        first = erring[0]
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(errors[first].items()))
        last = (last_errors or {}).get(first)
        return {
            "outcome": FAIL,
            "reason": (
                f"{len(erring)} store(s) reported errors since the step started "
                f"(more than {gate.max_errors_per_store} each): {first}: {kinds}"
                + (f" (last: {last})" if last else "")
            ),
            "last_errors": {sid: (last_errors or {}).get(sid) for sid in erring},
            **numbers,
        }
    if step.kind == "serve":
        share = len(activated) / n if n else 0.0
        numbers |= {
            "activated": len(activated),
            "activated_share": round(share, 4),
            "min_activated_share": gate.min_activated_share,
            "activation_timeout_seconds": gate.activation_timeout_seconds,
            "not_activated": sorted({s["store_id"] for s in stores} - set(activated)),
            "rolled_back": rolled_back,
        }
        if rolled_back:
            return {
                "outcome": FAIL,
                "reason": f"{len(rolled_back)} store(s) rolled the candidate back",
                **numbers,
            }
        if share < gate.min_activated_share:
            if elapsed > gate.activation_timeout_seconds:
                return {
                    "outcome": FAIL,
                    "reason": f"activated share {share:.2f} < {gate.min_activated_share} after the timeout",
                    **numbers,
                }
            return {"outcome": WAITING, "reason": "waiting for the wave stores to activate", **numbers}
    if stale_share > gate.max_stale_share:
        return {
            "outcome": FAIL,
            "reason": f"stale share {stale_share:.2f} > {gate.max_stale_share}",
            **numbers,
        }
    return {"outcome": PASS, "reason": "", **numbers}


def accuracy_gate(
    repo: RolloutRepository,
    plan: RolloutPlan,
    step: Step,
    rollout: dict[str, Any],
    wave_stores: list[dict[str, Any]],
    fleet: list[dict[str, Any]],
    strata: dict[str, str],
) -> dict[str, Any]:
    """Per-category candidate vs champion WAPE; also how many periods of actuals the step has baked."""
    gate = plan.accuracy
    model, candidate, champion = (
        rollout["model_name"],
        rollout["candidate_version"],
        rollout["champion_version"],
    )
    since = rollout["step_started_at"]
    in_wave = {s["store_id"] for s in wave_stores}
    if step.kind == "shadow":
        cand_stores = sorted(in_wave)
        base_stores = cand_stores
        cand_role, comparison = "shadow", "same stores (shadow)"
    else:
        wave_strata = {strata.get(sid, "") for sid in in_wave}
        controls = sorted(
            s["store_id"]
            for s in fleet
            if s["store_id"] not in in_wave and strata.get(s["store_id"], "") in wave_strata
        )
        matched = {strata.get(sid, "") for sid in controls}
        cand_stores = sorted(sid for sid in in_wave if strata.get(sid, "") in matched)
        base_stores = controls
        cand_role, comparison = "served", "matched control stores"
    numbers: dict[str, Any] = {
        "comparison": comparison,
        "max_wape_ratio": gate.max_wape_ratio,
        "min_observations": gate.min_observations,
        "min_stores": gate.min_stores,
        "min_periods": gate.min_periods,
        "candidate_stores": len(cand_stores),
        "baseline_stores": len(base_stores),
    }
    if step.kind == "serve" and not base_stores:
        cand = repo.accuracy_by_category(
            model_name=model, version=candidate, role="served", stores=sorted(in_wave), received_since=since
        )
        periods = {p for r in cand for p in r["periods"]}
        return {
            "outcome": PASS,
            "reason": "no control stores left (the wave covers its strata); accuracy gated in earlier waves",
            "periods": len(periods),
            "categories": {},
            **numbers,
        }
    cand_rows = repo.accuracy_by_category(
        model_name=model, version=candidate, role=cand_role, stores=cand_stores, received_since=since
    )
    cand_periods = sorted({p for r in cand_rows for p in r["periods"]})
    base_rows = repo.accuracy_by_category(
        model_name=model, version=champion, role="served", stores=base_stores, periods=cand_periods
    )
    base_by = {r["category"]: r for r in base_rows}
    categories: dict[str, Any] = {}
    all_periods: set[Any] = set()
    for row in cand_rows:
        base = base_by.get(row["category"])
        periods = set(row["periods"]) & set(base["periods"] if base else [])
        all_periods |= periods
        cw, bw = _wape(row), _wape(base)
        ratio = None if cw is None or bw is None or bw == 0 else cw / bw
        n_base = int(base["n"]) if base else 0
        thin = (
            ratio is None
            or int(row["n"]) < gate.min_observations
            or n_base < gate.min_observations
            or int(row["stores"]) < gate.min_stores
            or len(periods) < gate.min_periods
        )
        outcome = (
            INCONCLUSIVE if thin else (FAIL if ratio is not None and ratio > gate.max_wape_ratio else PASS)
        )
        categories[row["category"]] = {
            "outcome": outcome,
            "candidate_wape": None if cw is None else round(cw, 5),
            "champion_wape": None if bw is None else round(bw, 5),
            "wape_ratio": None if ratio is None else round(ratio, 4),
            "candidate_n": int(row["n"]),
            "champion_n": n_base,
            "candidate_stores": int(row["stores"]),
            "periods": len(periods),
        }
    outcomes = {c["outcome"] for c in categories.values()}
    if not gate.enabled:
        outcome, reason = PASS, "accuracy gate disabled"
    elif FAIL in outcomes:
        bad = sorted(k for k, c in categories.items() if c["outcome"] == FAIL)
        outcome, reason = FAIL, f"WAPE ratio above {gate.max_wape_ratio} in {', '.join(bad)}"
    elif outcomes == {PASS}:
        outcome, reason = PASS, ""
    else:
        outcome = INCONCLUSIVE
        reason = "inconclusive, keep baking: " + (
            "no evidence yet" if not categories else "too few observations, stores or periods"
        )
    return {
        "outcome": outcome,
        "reason": reason,
        "periods": len(all_periods),
        "categories": categories,
        **numbers,
    }


def evaluate(
    repo: RolloutRepository,
    plan: RolloutPlan,
    steps: list[Step],
    rollout: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """Health, accuracy and bake of the rollout's current step, with every number that decides."""
    step = steps[int(rollout["step"])]
    fleet = repo.fleet_stores(rollout["model_name"])
    members = {s["store_id"]: s for s in repo.stores(rollout["rollout_id"])}
    strata = {sid: s["stratum"] for sid, s in members.items()}
    by_id = {s["store_id"]: s for s in fleet}
    wave_stores = [by_id[sid] for sid, s in members.items() if s["wave"] <= step.wave and sid in by_id]
    started = rollout["step_started_at"]
    for s in fleet:
        strata.setdefault(s["store_id"], stratum_of(s, plan.stratify_by))
    fleet_repo = FleetRepository(repo.db)
    wave_ids = sorted(s["store_id"] for s in wave_stores)
    errors = fleet_repo.errors_since(wave_ids, started, list(GATED_ERROR_KINDS))
    last_errors = fleet_repo.last_errors(sorted(errors)) if errors else {}
    health = health_gate(
        plan, step, rollout["candidate_version"], wave_stores, started, now, errors, last_errors
    )
    accuracy = accuracy_gate(repo, plan, step, rollout, wave_stores, fleet, strata)
    elapsed = (now - started).total_seconds()
    baked = accuracy["periods"] >= step.bake_periods and elapsed >= step.bake_min_seconds
    return {
        "step": int(rollout["step"]),
        "step_name": step.name,
        "kind": step.kind,
        "health": health,
        "accuracy": accuracy,
        "bake": {
            "periods": accuracy["periods"],
            "bake_periods": step.bake_periods,
            "elapsed_seconds": round(elapsed, 1),
            "bake_min_seconds": step.bake_min_seconds,
            "done": baked,
        },
    }
