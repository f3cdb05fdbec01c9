"""``shelfcast retrain now|list|show|status``: retraining through the server's HTTP API."""

from __future__ import annotations

import time
from pathlib import Path

import click

from forecasting.commands.train import output_option
from server.cli_client import RemoteError, connect, emit, limit_option, remote_options

LIST_COLUMNS = [
    "retraining_id", "model_name", "trigger", "status", "stage", "version", "run_id", "dataset_id",
    "created_at", "duration_seconds",
]  # fmt: skip


@click.group()
def retrain() -> None:
    """Retraining on the central dataset: start a run, follow it, list runs (admin CLI over HTTP)."""


@retrain.command("now")
@click.option(
    "--model", "model_name", default="", help="Model to retrain [default: the server's model_name]."
)
@click.option("--reason", default="", help="Why (kept with the run).")
@click.option("--wait", is_flag=True, help="Wait until the run has finished; exit 1 if it failed.")
@click.option("--wait-timeout", type=float, default=4 * 3600.0, show_default=True, help="Seconds to wait.")
@remote_options
@output_option
def retrain_now(
    model_name: str,
    reason: str,
    wait: bool,
    wait_timeout: float,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Start a retraining run now (queued; one run at a time per model)."""
    with connect(server_url, token, client_config) as remote:
        run = remote.request("POST", "/v1/retraining/runs", json={"model_name": model_name, "reason": reason})
        deadline = time.monotonic() + wait_timeout
        while wait and run["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise RemoteError(
                    f"retraining run {run['retraining_id']} still {run['status']} after the wait"
                )
            time.sleep(2.0)
            run = remote.get(f"/v1/retraining/runs/{run['retraining_id']}")
    emit(run, output)
    if wait and run["status"] == "failed":
        raise RemoteError(f"retraining run {run['retraining_id']} failed: {run['error']}")


@retrain.command("list")
@click.option("--model", "model_name", default=None, help="Only runs of this model.")
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "succeeded", "failed"]),
    default=None,
    help="Only these.",
)
@remote_options
@output_option
@limit_option
def retrain_list(
    model_name: str | None,
    status: str | None,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    limit: int | None,
) -> None:
    """List retraining runs, newest first."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.paginate("/v1/retraining/runs", limit=limit, model=model_name, status=status)
    emit(rows, output, LIST_COLUMNS)


@retrain.command("show")
@click.argument("retraining_id")
@remote_options
@output_option
def retrain_show(
    retraining_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """One retraining run with its progress and log tail."""
    with connect(server_url, token, client_config) as remote:
        emit(remote.get(f"/v1/retraining/runs/{retraining_id}"), output)


@retrain.command("status")
@remote_options
@output_option
def retrain_status(
    server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """The schedule (next run), the alert rules that trigger runs, and the rollout policy."""
    with connect(server_url, token, client_config) as remote:
        emit(remote.get("/v1/retraining/status"), output)
