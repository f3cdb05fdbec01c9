"""Gates of a rollout step, computed from what the server already stores (heartbeats, accuracy reports).

Health: every wave store runs the candidate within the activation timeout (a store still on another
version after it, or one that reports the ``rollback`` state, fails the gate), none has gone stale, and
none reports more than ``max_errors_per_store`` new errors of the update and scoring kinds
(``GATED_ERROR_KINDS``: a refused bundle, a failed health check or activation, failed scoring of the
served or the shadow version) in heartbeats received since the step started.
Accuracy: the paired sequential test of :mod:`server.rollouts.evidence` on every store of the rollout
that scored both versions in one scoring (the candidate in shadow before it serves, the champion in
shadow while the candidate serves), over every period since the rollout started; the step bakes for
its own periods of that evidence. Thin evidence is ``inconclusive`` and the step keeps baking.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from server.fleet.repository import FleetRepository
from server.rollouts.evidence import NOT_WORSE, OPEN, WORSE, TestResult, log_ratio, look_alpha, paired_test
from server.rollouts.plan import AccuracyGate, RolloutPlan, Step
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
    rollout: dict[str, Any],
    stores: list[str],
    step_stores: list[str],
) -> dict[str, Any]:
    """The paired sequential test on every period of evidence since the rollout started."""
    rows = repo.paired_accuracy(
        model_name=rollout["model_name"],
        candidate=int(rollout["candidate_version"]),
        champion=int(rollout["champion_version"]),
        stores=stores,
        received_since=rollout["created_at"],
    )
    return judge_accuracy(plan.accuracy, rows, rollout["step_started_at"], step_stores)


def judge_accuracy(
    gate: AccuracyGate,
    rows: list[dict[str, Any]],
    step_started: datetime,
    step_stores: list[str] | None = None,
) -> dict[str, Any]:
    """The gate's verdict from paired rows (store, category, period: both versions' error sums).

    Fails on evidence that the candidate is worse (pooled or in a category, see
    :mod:`server.rollouts.evidence`) or on a category's paired WAPE ratio above the hard ceiling;
    passes on evidence that it is less than ``min_degradation`` worse once ``min_reporting_share`` of
    ``step_stores`` (default: every store with evidence) reported in the step; otherwise keeps baking.
    """
    periods = sorted({r["period_end"] for r in rows})
    # A step's periods are those after every period reported before it began (the stores of one period
    # report over minutes: the stragglers of the period that ended the last step do not bake this one).
    before = max((r["period_end"] for r in rows if r["received_at"] < step_started), default=None)
    in_step = [r for r in rows if before is None or r["period_end"] > before]
    step_periods = len({r["period_end"] for r in in_step})
    reporting = {r["store_id"] for r in in_step}
    expected = set(step_stores) if step_stores is not None else reporting
    reporting_share = len(reporting & expected) / len(expected) if expected else 1.0
    units: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        sums = units.setdefault((r["store_id"], r["category"]), [0.0, 0.0, 0.0, 0.0])
        for k, key in enumerate(("candidate_errors", "champion_errors", "actuals", "n")):
            sums[k] += float(r[key])
    look = len(periods)
    alpha = look_alpha(gate.max_false_rollback, look)
    by_category: dict[str, list[list[float]]] = {}
    category_periods: dict[str, set[Any]] = {}
    for r in rows:
        category_periods.setdefault(r["category"], set()).add(r["period_end"])
    for (_, category), sums in units.items():
        by_category.setdefault(category, []).append(sums)
    category_alpha = alpha / 2 / max(1, len(by_category))
    n_total = int(sum(u[3] for u in units.values()))
    stores = len({store for store, _ in units})
    numbers: dict[str, Any] = {
        "comparison": "paired: both versions on the same stores, series and periods",
        "max_false_rollback": gate.max_false_rollback,
        "min_degradation": gate.min_degradation,
        "max_wape_ratio": gate.max_wape_ratio,
        "min_observations": gate.min_observations,
        "min_stores": gate.min_stores,
        "min_periods": gate.min_periods,
        "look": look,
        "look_alpha": float(f"{alpha:.3g}"),
        "periods": look,
        "step_periods": step_periods,
        "stores": stores,
        "units": len(units),
        "observations": n_total,
        "step_stores": len(expected),
        "step_stores_reporting": len(reporting & expected),
        "min_reporting_share": gate.min_reporting_share,
    }
    categories, ceiling, worse = _judge_categories(gate, by_category, category_periods, category_alpha)
    per_store: dict[str, list[float]] = {}
    for (store, _), sums in units.items():
        totals = per_store.setdefault(store, [0.0, 0.0, 0.0])
        for k in range(3):
            totals[k] += sums[k]
    pooled = paired_test(
        [log_ratio(*totals) for totals in per_store.values()],
        alpha=alpha / 2,
        min_degradation=gate.min_degradation,
    )
    cand_all = sum(u[0] for u in units.values())
    champ_all = sum(u[1] for u in units.values())
    numbers["wape_ratio"] = round(cand_all / champ_all, 4) if champ_all > 0 else None
    numbers["pooled"] = pooled.as_dict() if pooled is not None else None
    verdict = _accuracy_verdict(gate, pooled, ceiling, worse, categories, n_total, stores, look)
    if (
        verdict["outcome"] == INCONCLUSIVE
        and pooled is not None
        and pooled.verdict == OPEN
        and step_periods >= gate.max_step_periods
    ):
        verdict = _truncated(gate, pooled, step_periods)
    if verdict["outcome"] == PASS and gate.enabled and reporting_share < gate.min_reporting_share:
        verdict = {
            "outcome": INCONCLUSIVE,
            "reason": f"inconclusive, keep baking: {len(reporting & expected)} of {len(expected)} stores "
            f"reported paired evidence in this step (needs {gate.min_reporting_share:.0%})",
        }
    return {**verdict, "categories": categories, **numbers}


def _judge_categories(
    gate: AccuracyGate,
    by_category: dict[str, list[list[float]]],
    category_periods: dict[str, set[Any]],
    alpha: float,
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Per category: its numbers and test; the categories above the ceiling, and those shown worse."""
    categories: dict[str, Any] = {}
    ceiling: list[str] = []
    worse: list[str] = []
    for category, members in sorted(by_category.items()):
        cand, champ, actuals = (sum(m[k] for m in members) for k in range(3))
        n = int(sum(m[3] for m in members))
        ratio = cand / champ if champ > 0 else None
        test = paired_test(
            [log_ratio(m[0], m[1], m[2]) for m in members],
            alpha=alpha,
            min_degradation=gate.min_degradation,
        )
        if ratio is not None and n >= gate.min_observations and ratio > gate.max_wape_ratio:
            ceiling.append(category)
            outcome = FAIL
        elif test is not None and test.verdict == WORSE:
            worse.append(category)
            outcome = FAIL
        elif test is not None and test.verdict == NOT_WORSE:
            outcome = PASS
        else:
            outcome = INCONCLUSIVE
        categories[category] = {
            "outcome": outcome,
            "wape_ratio": None if ratio is None else round(ratio, 4),
            "candidate_wape": round(cand / actuals, 5) if actuals > 0 else None,
            "champion_wape": round(champ / actuals, 5) if actuals > 0 else None,
            "candidate_n": n,
            "champion_n": n,
            "stores": len(members),
            "periods": len(category_periods[category]),
            **({"test": test.as_dict()} if test is not None else {}),
        }
    return categories, ceiling, worse


def _accuracy_verdict(  # noqa: PLR0911 - one return per verdict
    gate: AccuracyGate,
    pooled: TestResult | None,
    ceiling: list[str],
    worse: list[str],
    categories: dict[str, Any],
    observations: int,
    stores: int,
    periods: int,
) -> dict[str, str]:
    """Outcome and reason, in words and numbers."""
    if not gate.enabled:
        return {"outcome": PASS, "reason": "accuracy gate disabled"}
    if ceiling:
        detail = ", ".join(f"{c} {categories[c]['wape_ratio']}" for c in ceiling)
        return {
            "outcome": FAIL,
            "reason": f"paired WAPE ratio above the ceiling {gate.max_wape_ratio} in {detail}",
        }
    if pooled is None:
        what = "no paired evidence yet" if not categories else "one store is too few for the test"
        return {"outcome": INCONCLUSIVE, "reason": f"inconclusive, keep baking: {what}"}
    if observations < gate.min_observations or stores < gate.min_stores or periods < gate.min_periods:
        return {
            "outcome": INCONCLUSIVE,
            "reason": f"inconclusive, keep baking: {observations} forecasts, {stores} stores, {periods} "
            f"periods (needs {gate.min_observations}, {gate.min_stores}, {gate.min_periods})",
        }
    if pooled.verdict == WORSE:
        return {"outcome": FAIL, "reason": "candidate worse than the champion: " + _describe(pooled, periods)}
    if worse:
        first = categories[worse[0]]["test"]
        return {
            "outcome": FAIL,
            "reason": f"candidate worse in {', '.join(worse)}: {worse[0]} WAPE ratio "
            f"{first['wape_ratio_effect']} (interval {first['ratio_lower']}-{first['ratio_upper']}, "
            f"alpha {first['alpha']}, n={first['n']} stores)",
        }
    if pooled.verdict == NOT_WORSE:
        return {
            "outcome": PASS,
            "reason": f"not {gate.min_degradation:.0%} worse: " + _describe(pooled, periods),
        }
    return {
        "outcome": INCONCLUSIVE,
        "reason": "inconclusive, keep baking: " + _describe(pooled, periods),
    }


def _truncated(gate: AccuracyGate, pooled: TestResult, step_periods: int) -> dict[str, str]:
    """The decision of a test still open after ``max_step_periods``: the estimate against the midpoint."""
    midpoint = 1 + gate.min_degradation / 2
    worse = pooled.effect > midpoint
    return {
        "outcome": FAIL if worse else PASS,
        "reason": f"still open after {step_periods} periods (max_step_periods), decided by the estimate: "
        f"WAPE ratio {pooled.effect:.3f} is {'above' if worse else 'at or below'} the midpoint "
        f"{midpoint:.3f} (interval {pooled.lower:.3f}-{pooled.upper:.3f}, n={pooled.n} stores)",
    }


def _describe(test: TestResult, periods: int) -> str:
    return (
        f"WAPE ratio {test.effect:.3f} (one-sided interval {test.lower:.3f}-{test.upper:.3f} at alpha "
        f"{test.alpha:.3g}; n={test.n} stores over {periods} period(s))"
    )


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
    by_id = {s["store_id"]: s for s in fleet}
    wave_stores = [by_id[sid] for sid, s in members.items() if step.covers(s["wave"]) and sid in by_id]
    started = rollout["step_started_at"]
    fleet_repo = FleetRepository(repo.db)
    wave_ids = sorted(s["store_id"] for s in wave_stores)
    errors = fleet_repo.errors_since(wave_ids, started, list(GATED_ERROR_KINDS))
    last_errors = fleet_repo.last_errors(sorted(errors)) if errors else {}
    health = health_gate(
        plan, step, rollout["candidate_version"], wave_stores, started, now, errors, last_errors
    )
    accuracy = accuracy_gate(repo, plan, rollout, sorted(members), wave_ids)
    elapsed = (now - started).total_seconds()
    baked = accuracy["step_periods"] >= step.bake_periods and elapsed >= step.bake_min_seconds
    return {
        "step": int(rollout["step"]),
        "step_name": step.name,
        "kind": step.kind,
        "health": health,
        "accuracy": accuracy,
        "bake": {
            "periods": accuracy["step_periods"],
            "bake_periods": step.bake_periods,
            "elapsed_seconds": round(elapsed, 1),
            "bake_min_seconds": step.bake_min_seconds,
            "done": baked,
        },
    }
