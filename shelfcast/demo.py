"""``shelfcast demo``: the whole loop on loopback: train, publish, canary rollouts, promote and roll back.

Generates a small fleet of synthetic stores (weekly sales), starts a real server and one real agent per
store (the first ``--agent-processes`` as ``shelfcast agent run`` processes with their inventory API, the
others in this process), trains and signs a model and publishes it as the champion. Then it replays the
last weeks of sales one week at a time while it rolls out two candidates with a three-wave plan: a good
one (the champion re-signed as a new version), which passes every wave and becomes the champion, and a
deliberately bad one (its forecasts x1.3, see ``shelfcast bundle adjust``), which the accuracy gate halts
in the first wave and rolls back. Finally it pulls forecasts over HTTP as a store's inventory system
would, posts that store's stock (``POST /v1/inventory`` with the agent's operator token), pulls the order
proposals the agent computes from it (``GET /v1/replenishment``) and prints where to look. Everything it
starts it stops, on success, failure or Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from forecasting.common.tables import render_table

if TYPE_CHECKING:  # the simulation and httpx load only when the demo runs
    import httpx

    from shelfcast.simulate import Simulation

MODEL_NAME = "demand"
DEMO_TARGET = 0.95  # the cycle service level the demo's inventory system asks for
GOOD, BAD = 1.0, 1.3
# The stores report accuracy by department (groups of the generator's categories): enough series per
# department and week for a wave of two stores to be compared with its controls.
DEPARTMENTS = {
    **dict.fromkeys(["bakery", "dairy", "meat_seafood", "produce", "frozen"], "fresh"),
    **dict.fromkeys(["beverages", "pantry", "snacks", "baby"], "grocery"),
    **dict.fromkeys(["household", "personal_care", "pet"], "non_food"),
}
# Three cumulative waves by store type (stores are typed by size); two weeks of actuals bake each wave.
# The accuracy gate compares both versions on the same stores (the champion scored in shadow beside the
# candidate): the paired sequential test's defaults (5 % false rollbacks, 5 % worth stopping for).
DEMO_PLAN: dict[str, Any] = {
    "name": "demo canary",
    "stratify_by": ["type"],
    "waves": [
        {"name": "canary", "share": 0.34, "bake_periods": 2},
        {"name": "half", "share": 0.67, "bake_periods": 2},
        {"name": "everyone", "share": 1.0, "bake_periods": 1},
    ],
    "health": {"activation_timeout_seconds": 120.0, "stale_after_seconds": 600.0},
    "accuracy": {"min_observations": 50, "min_stores": 2, "min_periods": 2},
}


@dataclass
class DemoSummary:
    """What the demo prints at the end (as a table or as one JSON object)."""

    server_url: str
    dashboard_url: str
    model_name: str
    version: int | None  # the champion at the end
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    stores: list[dict[str, Any]] = field(default_factory=list)
    timings_seconds: dict[str, float] = field(default_factory=dict)
    sample_forecast: list[dict[str, Any]] = field(default_factory=list)
    # the order proposals of one store with an inventory API, as its inventory system pulls them
    replenishment: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    state_dir: str = ""


def build_summary(sim: Simulation, timings: dict[str, float]) -> DemoSummary:
    """Run the simulation's replay, then look at the agents and pull forecasts from the agent processes."""
    report = sim.run()
    stores: list[dict[str, Any]] = []
    sample: list[dict[str, Any]] = []
    replenishment: dict[str, Any] = {}
    for store_id, agent in sorted(sim.agents.items()):
        status = agent.status()
        entry = {
            "store_id": store_id,
            "type": sim.data.attributes[store_id]["type"] if sim.data else "",
            "active_version": status.get("active_version"),
            "served_version": status.get("served_version"),
            "state": status.get("state"),
            "versions_served": agent.served,
            "url": agent.url,
            "config_file": str(agent.config_file) if agent.url else "",
        }
        if agent.url:
            started = time.monotonic()
            entry["forecast_rows_pulled"], rows, next_demand = pull_forecasts(agent.url, agent.headers)
            timings["pull_forecasts"] = round(
                timings.get("pull_forecasts", 0.0) + time.monotonic() - started, 3
            )
            sample = sample or rows
            if not replenishment:
                started = time.monotonic()
                replenishment = {"store_id": store_id, "agent_url": agent.url}
                replenishment |= pull_replenishment(agent.url, agent.headers, next_demand)
                timings["post_inventory_and_pull_proposals"] = round(time.monotonic() - started, 3)
        stores.append(entry)
    rollouts = [
        {
            "rollout_id": r.rollout_id,
            "version": r.version,
            "forecasts_multiplied_by": r.multiply,
            "label": r.label,
            "outcome": r.outcome,
            "waves_completed": r.waves_completed,
            "waves": len(r.waves),
            "periods": r.periods,
            "wape_ratios": r.wape_ratios,
            "halt_reason": r.halt_reason,
        }
        for r in report.rollouts
    ]
    server = report.server_url
    return DemoSummary(
        server_url=server,
        dashboard_url=report.dashboard_url,
        model_name=report.model_name,
        version=report.champion_end,
        rollouts=rollouts,
        stores=stores,
        timings_seconds=report.timings_seconds | timings,
        sample_forecast=sample,
        replenishment=replenishment,
        commands=[
            f"export SHELFCAST_SERVER_URL={server} SHELFCAST_TOKEN={sim.admin_token}",
            f"shelfcast rollouts list --model {report.model_name}",
            *[f"shelfcast rollouts status {r.rollout_id}" for r in report.rollouts],
            f"shelfcast models alias history {report.model_name} champion",
            "shelfcast stores list",
        ],
        state_dir=report.state_dir,
    )


def pull_forecasts(
    agent_url: str, headers: dict[str, str]
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """What an inventory system does: page through every forecast, then look at one item. Returns the rows
    pulled, the item's first forecasts and each item's category and forecast of the first period."""
    import httpx

    rows = 0
    body: dict[str, Any] = {"rows": []}
    first: dict[str, Any] = {}
    cursor: str | None = None
    with httpx.Client(base_url=agent_url, headers=headers, timeout=30) as client:
        for _ in range(10_000):  # bounded: a store has far fewer pages
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            response = client.get("/v1/forecasts", params=params)
            _check(response, "pull forecasts")
            body = response.json()
            rows += len(body["rows"])
            for row in body["rows"]:
                if row["item_id"] not in first or row["ds"] < first[row["item_id"]]["ds"]:
                    first[row["item_id"]] = row
            cursor = body.get("next_cursor")
            if not cursor:
                break
        first_item = min(first) if first else None
        sample: list[dict[str, Any]] = []
        if first_item is not None:
            response = client.get(f"/v1/forecasts/{first_item}", params={"horizon": 4})
            _check(response, f"pull forecasts of item {first_item}")
            sample = response.json()["rows"]
    return rows, sample, first


def pull_replenishment(agent_url: str, headers: dict[str, str], first: dict[str, Any]) -> dict[str, Any]:
    """What an inventory system does at its review: post every item's stock and policy (on hand 0 to 3
    times the first period's forecast; lead time and review period one period each, 95 % cycle service
    level), then pull the order proposals the agent computes from them."""
    import httpx

    lines = ["item_id,on_hand,lead_time_days,review_period_days,service_metric,target_service_level"]
    for i, item in enumerate(sorted(first)):
        on_hand = round(max(0.0, float(first[item]["forecast"])) * (i % 4))
        lines.append(f"{item},{on_hand},1,1,cycle_service_level,{DEMO_TARGET}")
    with httpx.Client(base_url=agent_url, headers=headers, timeout=30) as client:
        response = client.post(
            "/v1/inventory", content="\n".join(lines).encode(), headers={"Content-Type": "text/csv"}
        )
        _check(response, "post the inventory")
        posted = response.json()
        proposals: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the agent computes proposals in its work loop, soon after
            response = client.get("/v1/replenishment", params={"limit": 10_000})
            _check(response, "pull order proposals")
            proposals = response.json()["rows"]
            if len(proposals) == posted["items_accepted"]:
                break
            time.sleep(0.3)
        else:
            raise click.ClickException(
                f"the agent at {agent_url} proposed orders for {len(proposals)} of "
                f"{posted['items_accepted']} posted items within 120 s"
            )
    return {
        "items_posted": posted["items_accepted"],
        "rows_quarantined": posted["rows_quarantined"],
        "items_to_order": sum(p["proposed_quantity"] > 0 for p in proposals),
        "proposed_units": sum(p["proposed_quantity"] for p in proposals),
        "proposals": proposals,
    }


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 400:
        detail = response.text[:300]
        raise click.ClickException(f"could not {what}: HTTP {response.status_code} {detail}")


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM as Ctrl-C: unwind through the demo's ``finally``, which stops what it started."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _print_summary(summary: DemoSummary, kept: bool) -> None:
    click.echo("")
    click.echo(
        f"shelfcast demo: model {summary.model_name}, champion now v{summary.version}, "
        f"{len(summary.stores)} stores"
    )
    click.echo("")
    click.echo("rollouts")
    click.echo(
        render_table(
            [
                {
                    "version": r["version"],
                    "forecasts": f"x{r['forecasts_multiplied_by']}",
                    "outcome": r["outcome"],
                    "waves_completed": f"{r['waves_completed']}/{r['waves']}",
                    "weeks_of_actuals": r["periods"],
                    "wape_ratio_max": max(
                        (v for v in r["wape_ratios"].values() if v is not None), default=None
                    ),
                    "why": r["halt_reason"] or "every gate passed",
                }
                for r in summary.rollouts
            ]
        )
    )
    click.echo("")
    click.echo(
        render_table(
            [
                {
                    "store": s["store_id"],
                    "type": s["type"],
                    "serving": s["served_version"],
                    "versions_served": " -> ".join(f"v{v}" for v in s["versions_served"]),
                    "agent_url": s["url"] or "(in the demo process)",
                }
                for s in summary.stores
            ]
        )
    )
    click.echo("")
    click.echo(render_table([{"step": k, "seconds": v} for k, v in summary.timings_seconds.items()]))
    if summary.sample_forecast:
        click.echo("")
        click.echo("first forecasts of one item, as an inventory system sees them:")
        columns = ["item_id", "category", "ds", "forecast", "forecast-lo-80", "forecast-hi-80", "model"]
        click.echo(render_table(summary.sample_forecast[:7], columns))
    if summary.replenishment:
        r = summary.replenishment
        click.echo("")
        click.echo(
            f"order proposals of store {r['store_id']}, as its inventory system pulls them after posting "
            f"its stock: {r['items_to_order']} of {r['items_posted']} items to order, "
            f"{r['proposed_units']:g} units (GET {r['agent_url']}/v1/replenishment):"
        )
        columns = ["item_id", "category", "inventory_position", "order_up_to", "proposed_quantity",
                   "expected_service_level", "target_service_level"]  # fmt: skip
        click.echo(render_table(r["proposals"][:8], columns))
    click.echo("")
    click.echo("where to look:")
    click.echo(f"  server     {summary.server_url}  (OpenAPI: {summary.server_url}/schema)")
    click.echo(f"  dashboard  {summary.dashboard_url}")
    for command in summary.commands:
        click.echo(f"  {command}")
    click.echo(f"  state and logs: {summary.state_dir}")
    if kept:
        with_api = [s for s in summary.stores if s["url"]]
        if with_api:
            store = with_api[0]
            click.echo(
                f"  try: curl -H 'Authorization: Bearer <[api] operator_token of {store['config_file']}>' "
                f"'{store['url']}/v1/replenishment?limit=5'"
            )


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".shelfcast/demo"),
    show_default=True,
    help="Folder for the demo's data, models, server and agent state (emptied first).",
)
@click.option("--stores", default=12, show_default=True, help="Number of stores (one agent each).")
@click.option(
    "--agent-processes",
    default=2,
    show_default=True,
    help="How many agents run as their own process with an inventory API (the rest in this process).",
)
@click.option("--items", default=120, show_default=True, help="Items per store.")
@click.option("--weeks", default=110, show_default=True, help="Weeks of sales history before the replay.")
@click.option("--replay-weeks", default=12, show_default=True, help="Weeks of sales replayed at most.")
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic data.")
@click.option("--keep-running", is_flag=True, help="Leave the server and agents up until Ctrl-C or SIGTERM.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the demo's server listens.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="The server's port (default: a free one)."
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def demo(
    state_dir: Path,
    stores: int,
    agent_processes: int,
    items: int,
    weeks: int,
    replay_weeks: int,
    seed: int,
    keep_running: bool,
    host: str,
    port: int,
    output: str,
) -> None:
    """Train, publish, roll a good candidate to champion and roll back a bad one, on loopback.

    Progress goes to stderr as it happens; the summary to stdout. SIGTERM stops everything the demo
    started, as Ctrl-C does.
    """
    from shelfcast.simulate import Candidate, Simulation, SimulationOptions, log_to_file

    signal.signal(signal.SIGTERM, _interrupt)

    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    log_to_file(state_dir / "logs" / "demo.log")
    sim = Simulation(
        SimulationOptions(
            state_dir=state_dir.resolve(),
            source="synthetic",
            stores=stores,
            items=items,
            freq="W",
            history_periods=weeks,
            periods=replay_weeks,
            category_groups=DEPARTMENTS,
            seed=seed,
            model_name=MODEL_NAME,
            horizon=4,
            train_models=["Naive", "WindowAverage", "SeasonalWindowAverage"],
            candidates=[
                Candidate(multiply=GOOD, label="good: the champion as a new version", plan=DEMO_PLAN),
                Candidate(multiply=BAD, label="bad: forecasts x1.3", plan=DEMO_PLAN),
            ],
            agent_processes=min(agent_processes, stores),
            engine_interval_seconds=0.5,
            keep_server=True,
            server_host=host,
            server_port=port,
            on_progress=lambda message: click.echo(f"demo: {message}", err=True),
        )
    )
    try:
        summary = build_summary(sim, {})
        if output == "json":
            click.echo(msgspec.json.encode(summary).decode())
        else:
            _print_summary(summary, keep_running)
        if keep_running:
            click.echo("running; press Ctrl-C to stop everything")
            while sim.server is not None and sim.server.running():
                time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("interrupted; stopping the server and agents", err=True)
        raise SystemExit(130) from None
    finally:
        sim.options.keep_server = False
        sim.close()
