"""The rollout gates' power and error rates on the 45 Walmart stores, over seeded fleet replays.

Each replay is ``shelfcast simulate`` on the real Walmart weeks (real server, one real agent per store,
the default plan: canary 20 %, half, everyone), seeded: the seed draws each rollout's waves and the
replay noise on the replayed weeks' sales (``REPLAY_NOISE``). In every replay the same candidates are
rolled out one after the other against the trained champion (Naive or SeasonalNaive per department;
moved back to it after a promotion, so every candidate faces the same model):

- ``x1.05`` and ``x0.95``: the champion's forecasts 5 % too high / too low (and ``x1.02`` / ``x0.98`` for
  the power curve);
- ``worse_model``: a model trained on the same history with Naive only;
- ``x1.00``: the champion re-signed (forecasts identical);
- ``better_model``: a model trained on the same history with the champion's settings and ``BETTER_TRAIN``
  laid over them, chosen by ``benchmarks/gates_candidates.py`` for being better than the champion on the
  replayed weeks (paired WAPE ratio, next week and over the horizon, per department and pooled).

Figures (suite ``gates``), each the share of replays:

- ``promote_rate_x1.00`` (target >= 0.95), ``promote_rate_better_model`` (>= 0.80);
- ``rollback_rate_x1.05`` / ``rollback_rate_x0.95`` (>= 0.90): rolled back within two bake periods of
  the first wave; ``rollback_rate_worse_model`` (>= 0.95).

``SHELFCAST_GATES_SEEDS`` sets the number of replays (default 20; the tiny size runs one on 12 stores).
``SHELFCAST_GATES_ROLLOUTS`` (labels, comma-separated) rolls out only those candidates, and only their
figures are reported (run such a subset with ``--results`` elsewhere: a run's rows replace its suite's).
The power curve (rollback rate, at any wave, against the forecast factor; ``rollback_rate_any_x<f>``) is
drawn to ``benchmarks/gates_power.png``.

``false_alert_rate`` (target <= 0.01): accuracy-degradation alerts fired (firing now or since resolved) per
store x department x week with a served report, on a healthy 26-week replay of the 45 stores with no
rollout (every such alert is a false one); ``false_alerts`` and ``store_category_weeks`` are the counts
behind it (tiny: 3 stores, 8 weeks). ``./run bench gates -- -k false_alert`` runs it alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from shelfcast.simulate import Candidate, SimulationOptions, run_simulation, simulation

pytestmark = pytest.mark.timeout(6 * 3600)
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SHELFCAST_TEST_DATA", ROOT.parent / "shared" / "data"))
REPLAY_NOISE = 0.05
# Chosen by benchmarks/gates_candidates.py (BENCHMARKS.md, gates): per department SeasonalNaive, the global
# LightGBM or their mean, by the backtest; next-week paired WAPE ratio 0.863 against the champion on the
# 44 replayed weeks, no department worse.
BETTER_TRAIN: dict[str, Any] = {
    "models": ["SeasonalNaive", "LightGBM"],
    "gbm_lags": [1, 2, 3, 4, 52],
    "ensemble_top_k": 2,
}
FACTORS = (1.05, 0.95, 1.02, 0.98)
# The target rows first; the power curve's inner points (close to the 5 % bar, slow to decide) last. The
# better model goes first: it is better than the champion in 9 of the 11 four-week blocks of the replay but
# worse over the 2011 holidays (replay weeks 9-16, paired ratio 1.29), which a later slot would meet; the
# champion's own forecasts scaled (x1.05, ...) keep their ratio whatever the weeks.
CANDIDATES = (
    Candidate(train=BETTER_TRAIN, label="better_model"),
    Candidate(multiply=1.05, label="x1.05"),
    Candidate(multiply=0.95, label="x0.95"),
    Candidate(models=["Naive"], label="worse_model"),
    Candidate(multiply=1.0, label="x1.00"),
    Candidate(multiply=1.02, label="x1.02"),
    Candidate(multiply=0.98, label="x0.98"),
)
POWER_PNG = ROOT / "benchmarks" / "gates_power.png"


def _rollouts() -> list[Candidate]:
    """The candidates ``SHELFCAST_GATES_ROLLOUTS`` names (comma-separated labels), in their order; all
    by default."""
    wanted = [w.strip() for w in os.environ.get("SHELFCAST_GATES_ROLLOUTS", "").split(",") if w.strip()]
    labels = [c.label for c in CANDIDATES]
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise pytest.UsageError(f"SHELFCAST_GATES_ROLLOUTS: unknown rollout(s) {unknown}; known: {labels}")
    return [Candidate(**vars(c)) for c in CANDIDATES if not wanted or c.label in wanted]


def _replay(seed: int, size: str, work: Path, rollouts: list[Candidate]) -> dict[str, dict[str, Any]]:
    """One seeded replay; per candidate label: outcome, periods, the step it ended in, halt reason."""
    options = SimulationOptions(
        state_dir=work / f"seed-{seed}",
        source="walmart",
        data_path=DATA / "walmart",
        stores=12 if size == "tiny" else None,
        periods=44,
        seed=seed,
        replay_noise=REPLAY_NOISE,
        reset_champion=True,  # every candidate against the same champion
        candidates=rollouts,
    )
    report = run_simulation(options)
    outcomes: dict[str, dict[str, Any]] = {}
    for result in report.rollouts:
        halt = next((d for d in result.decisions if d["action"] == "halt"), None)
        outcomes[result.label] = {
            "outcome": result.outcome,
            "periods": result.periods,
            "halt_step": None if halt is None else halt["step"],
            "reason": result.halt_reason,
        }
    # each replay's outcomes as it ends (a replay takes minutes; a long run shows its progress)
    line = "; ".join(
        f"{k}: {v['outcome']} ({v['periods']} periods{'; ' + v['reason'] if v['reason'] else ''})"
        for k, v in outcomes.items()
    )
    print(f"seed {seed}: {line}", flush=True)
    return outcomes


@pytest.fixture(scope="module")
def replays(bench_size: str) -> list[dict[str, dict[str, Any]]]:
    _walmart()
    rollouts = _rollouts()
    seeds = 1 if bench_size == "tiny" else int(os.environ.get("SHELFCAST_GATES_SEEDS", "20"))
    with tempfile.TemporaryDirectory(prefix="gates-") as tmp:
        return [_replay(seed, bench_size, Path(tmp), rollouts) for seed in range(1, seeds + 1)]


def _share(
    replays: list[dict[str, dict[str, Any]]], label: str, wanted: str, *, max_periods: int = 0
) -> float:
    hits = 0
    for replay in replays:
        got = replay.get(label)
        if got is None or got["outcome"] != wanted:
            continue
        if max_periods and (got["periods"] > max_periods or (got["halt_step"] or 0) > 0):
            continue
        hits += 1
    return hits / len(replays)


def test_gates(benchmark: Any, figures: Any, replays: list[dict[str, dict[str, Any]]]) -> None:
    figures.timing(None)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    ran = set(replays[0])  # the rollouts SHELFCAST_GATES_ROLLOUTS selected: only their rows are reported
    rows = {
        "promote_rate_x1.00": ("x1.00", "promoted", 0, 0.95),
        "rollback_rate_x1.05": ("x1.05", "rolled_back", 2, 0.90),
        "rollback_rate_x0.95": ("x0.95", "rolled_back", 2, 0.90),
        "rollback_rate_worse_model": ("worse_model", "rolled_back", 0, 0.95),
        "promote_rate_better_model": ("better_model", "promoted", 0, 0.80),
    }
    for name, (label, wanted, max_periods, target) in rows.items():
        if label in ran:
            value = _share(replays, label, wanted, max_periods=max_periods)
            figures.value(name, value, "share", target=f"value >= {target}")
    figures.value("gates_replays", len(replays), "replays")
    curve = {f: _share(replays, f"x{f:.2f}", "rolled_back") for f in (*FACTORS, 1.0) if f"x{f:.2f}" in ran}
    for factor, rate in sorted(curve.items()):
        figures.value(f"rollback_rate_any_x{factor:.2f}", rate, "share")
    if len(curve) == len(FACTORS) + 1:
        _plot(curve, len(replays))


def _plot(curve: dict[float, float], replays: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = sorted(curve)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(factors, [curve[f] for f in factors], marker="o")
    ax.axhline(0.05, linestyle=":", color="grey", label="max false rollback 5 %")
    ax.axhline(0.90, linestyle="--", color="grey", label="target power 90 %")
    ax.set_xlabel("candidate forecasts = champion x factor")
    ax.set_ylabel("share of replays rolled back")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Rollout gate power, 45 Walmart stores, {replays} seeded replays")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(POWER_PNG)
    plt.close(fig)


# -- alerts that mean something: the default accuracy-degradation rule on a healthy replay, no rollout --

RULE = "accuracy-degradation"
SIZES = {"full": (None, 26), "tiny": (3, 8)}  # stores (None: all 45), weeks replayed


def _walmart() -> Path:
    folder = DATA / "walmart"
    if not (folder / "train.csv.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real data missing at {folder} (required when CI is set)")
        pytest.skip(f"real data not found at {folder}")
    return folder


def test_false_alert_rate(benchmark: Any, figures: Any, bench_size: str, tmp_path: Path) -> None:
    """Accuracy-degradation alerts per store x department x week of a healthy 26-week Walmart replay."""
    figures.timing(None)
    stores, weeks = SIZES[bench_size]
    options = SimulationOptions(
        state_dir=tmp_path / "replay", source="walmart", data_path=_walmart(), stores=stores, periods=weeks
    )
    with simulation(options) as sim:
        report = benchmark.pedantic(sim.run, rounds=1, iterations=1)
        with sim.admin() as client:
            alerts = client.get("/v1/alerts", params={"limit": 1000}).json()
            groups = client.get(
                "/v1/accuracy",
                params={"group_by": ["store_id", "category", "period"], "role": "served", "period": "week"},
            ).json()
    assert len(alerts) < 1000, "more alerts than one page lists"
    assert report.periods_replayed == weeks
    fired = sum(a["rule"] == RULE for a in alerts)
    figures.value("false_alerts", fired, "alerts")
    figures.value("store_category_weeks", len(groups), "weeks")
    figures.value("false_alert_rate", fired / len(groups), "alerts/week", target="value <= 0.01")
