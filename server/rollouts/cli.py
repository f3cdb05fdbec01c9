"""``shelfcast rollouts start|list|status|pause|resume|approve|promote|abort`` (admin CLI over HTTP)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from forecasting.commands.train import output_option
from server.cli_client import connect, emit, limit_option, remote_options
from server.errors import InvalidInputError


@click.group()
def rollouts() -> None:
    """Canary rollouts of a candidate version across the fleet (waves, gates, promote, rollback)."""


@rollouts.command("start")
@click.option("--model", "model_name", required=True, help="Model whose candidate is rolled out.")
@click.option("--version", "version", type=int, required=True, help="Candidate version.")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Rollout plan (TOML, e.g. configs/rollout.toml).",
)
@click.option("--reason", default="", help="Why (kept with the start decision).")
@remote_options
@output_option
def start_cmd(
    model_name: str,
    version: int,
    plan_file: Path,
    reason: str,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Start rolling out VERSION of MODEL with the plan in FILE."""
    try:
        plan: dict[str, Any] = tomllib.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(f"{plan_file}: {exc}") from None
    plan.pop("model_name", None)
    plan.pop("version", None)
    body = {"model_name": model_name, "version": version, "plan": plan, "reason": reason}
    with connect(server_url, token, client_config) as remote:
        detail = remote.request("POST", "/v1/rollouts", json=body)
    _emit_detail(detail, output)


@rollouts.command("list")
@click.option("--model", "model_name", default=None, help="Only this model's rollouts.")
@remote_options
@output_option
@limit_option
def list_cmd(
    model_name: str | None,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    limit: int | None,
) -> None:
    """Rollouts, newest first."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.paginate("/v1/rollouts", limit=limit, model_name=model_name)
    columns = ["rollout_id", "model_name", "candidate_version", "champion_version", "status", "step_name"]
    emit(rows, output, [*columns, "last_outcome"])


@rollouts.command("status")
@click.argument("rollout_id")
@remote_options
@output_option
def status_cmd(
    rollout_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Waves, stores, gate values against their thresholds, and every decision of one rollout."""
    with connect(server_url, token, client_config) as remote:
        detail = remote.get(f"/v1/rollouts/{rollout_id}")
    _emit_detail(detail, output)


def _action(name: str, help_text: str) -> click.Command:
    @rollouts.command(name, help=help_text)
    @click.argument("rollout_id")
    @click.option("--reason", default="", help="Why (kept in the rollout's decisions).")
    @remote_options
    @output_option
    def command(
        rollout_id: str,
        reason: str,
        server_url: str | None,
        token: str | None,
        client_config: Path | None,
        output: str,
    ) -> None:
        with connect(server_url, token, client_config) as remote:
            detail = remote.request("POST", f"/v1/rollouts/{rollout_id}/{name}", json={"reason": reason})
        _emit_detail(detail, output)

    return command


_action("pause", "Pause: the current wave keeps its versions; the engine stops deciding.")
_action("resume", "Resume a paused rollout.")
_action("approve", "Approve the next wave of a rollout awaiting manual approval.")
_action("promote", "Promote now: move the champion alias to the candidate.")
_action("abort", "Abort: every store of the candidate goes back to the champion.")


def _emit_detail(detail: dict[str, Any], output: str) -> None:
    if output == "json":
        emit(detail, output)
        return
    rollout = detail["rollout"]
    click.echo(
        f"rollout {rollout['rollout_id']}: {rollout['model_name']} v{rollout['candidate_version']} "
        f"(champion v{rollout['champion_version']}) {rollout['status']} at {rollout['step_name']}"
        + (f" — {rollout['last_outcome']}" if rollout["last_outcome"] else "")
    )
    click.echo("\nwaves")
    waves = [{**w, "stores": len(w["stores"])} for w in detail["waves"]]
    emit(waves, output, ["index", "name", "kind", "state", "stores", "bake_periods", "manual_approval"])
    click.echo("\ngates")
    emit(gate_rows(detail["gates"]), output, ["gate", "item", "outcome", "value", "threshold", "detail"])
    click.echo("\nstores")
    emit(
        detail["stores"],
        output,
        ["store_id", "wave", "stratum", "state", "active_version", "last_contact_at"],
    )
    click.echo("\ndecisions")
    emit(detail["decisions"], output, ["decision_id", "step", "action", "actor", "reason", "decided_at"])


def gate_rows(gates: dict[str, Any]) -> list[dict[str, Any]]:
    """Gate values against their thresholds, one row each (for the table view)."""
    if not gates:
        return []
    rows: list[dict[str, Any]] = []
    health = gates.get("health", {})
    if health:
        rows.append(
            {
                "gate": "health",
                "item": "activated share",
                "outcome": health.get("outcome"),
                "value": health.get("activated_share"),
                "threshold": health.get("min_activated_share"),
                "detail": health.get("reason", ""),
            }
        )
        rows.append(
            {
                "gate": "health",
                "item": "stale share",
                "outcome": health.get("outcome"),
                "value": health.get("stale_share"),
                "threshold": health.get("max_stale_share"),
                "detail": "",
            }
        )
        new_errors: dict[str, dict[str, int]] = health.get("new_errors") or {}
        if "max_errors_per_store" in health:
            worst = max((sum(kinds.values()) for kinds in new_errors.values()), default=0)
            rows.append(
                {
                    "gate": "health",
                    "item": "new errors per store (max)",
                    "outcome": health.get("outcome"),
                    "value": worst,
                    "threshold": health.get("max_errors_per_store"),
                    "detail": ", ".join(health.get("error_stores") or []),
                }
            )
    accuracy = gates.get("accuracy", {})
    for category, c in sorted(accuracy.get("categories", {}).items()):
        rows.append(
            {
                "gate": "accuracy",
                "item": category,
                "outcome": c["outcome"],
                "value": c["wape_ratio"],
                "threshold": accuracy.get("max_wape_ratio"),
                "detail": f"WAPE {c['candidate_wape']} vs {c['champion_wape']}, n {c['candidate_n']}, "
                f"{c['stores']} stores, {c['periods']} periods"
                + (
                    f", interval {c['test']['ratio_lower']}-{c['test']['ratio_upper']}"
                    if c.get("test")
                    else ""
                ),
            }
        )
    if accuracy:
        rows.append(
            {
                "gate": "accuracy",
                "item": "(all)",
                "outcome": accuracy.get("outcome"),
                "value": accuracy.get("wape_ratio"),
                "threshold": accuracy.get("max_wape_ratio"),
                "detail": accuracy.get("reason") or accuracy.get("comparison", ""),
            }
        )
    bake = gates.get("bake", {})
    if bake:
        rows.append(
            {
                "gate": "bake",
                "item": "periods",
                "outcome": "done" if bake.get("done") else "baking",
                "value": bake.get("periods"),
                "threshold": bake.get("bake_periods"),
                "detail": f"{bake.get('elapsed_seconds')} s of {bake.get('bake_min_seconds')} s",
            }
        )
    return rows
