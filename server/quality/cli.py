"""``shelfcast accuracy``, ``drift`` and ``alerts list|show|ack``: over HTTP, like the admin CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from forecasting.commands.train import output_option
from server.cli_client import connect, emit, remote_options

F = TypeVar("F", bound=Callable[..., Any])

ACCURACY_COLUMNS = [
    "model_name",
    "version",
    "role",
    "store_id",
    "category",
    "horizon_bucket",
    "period",
    "reports",
    "n",
    "wape",
    "mae",
    "mase",
    "bias",
    "coverage_80",
    "coverage_95",
    "backtest_wape",
    "wape_ratio",
]
DRIFT_COLUMNS = [
    "model_name",
    "version",
    "role",
    "store_id",
    "category",
    "period",
    "reports",
    "checks",
    "drifted",
    "drift_rate",
    "score_mean",
    "score_max",
    "psi_mean",
    "wasserstein_mean",
    "last_period_end",
]
REPLENISHMENT_COLUMNS = [
    "store_id",
    "category",
    "stores",
    "items",
    "items_to_order",
    "proposed_units",
    "order_up_to_units",
    "target_service_level",
    "achieved_service_level",
    "below_target",
    "cycles",
    "cycles_met",
    "last_reported_at",
]
ALERT_COLUMNS = [
    "alert_id",
    "status",
    "severity",
    "rule",
    "metric",
    "store_id",
    "category",
    "value",
    "threshold",
    "fired_at",
    "resolved_at",
    "acked_by",
]


def query_options(func: F) -> F:
    """Filters and grouping shared by ``accuracy`` and ``drift``."""
    options = [
        click.option("--model", "model_name", default=None, help="Only this model."),
        click.option("--version", type=int, default=None, help="Only this model version."),
        click.option(
            "--role", type=click.Choice(["served", "shadow"]), default=None, help="Served or shadow."
        ),
        click.option("--store", "store_id", default=None, help="Only this store."),
        click.option("--category", default=None, help="Only this category."),
        click.option("--since", default=None, help="First period end (YYYY-MM-DD)."),
        click.option("--until", default=None, help="Last period end (YYYY-MM-DD)."),
        click.option(
            "--by",
            "group_by",
            default="model_name,version,store_id,category",
            show_default=True,
            help="Comma-separated groups: model_name, version, role, store_id, category, period (and "
            "horizon_bucket for accuracy).",
        ),
        click.option(
            "--period",
            type=click.Choice(["day", "week", "month", "quarter", "year"]),
            default="week",
            show_default=True,
            help="Length of a period when grouping by period.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _params(group_by: str, period: str, **filters: Any) -> dict[str, Any]:
    names = {"model_name": "model", "store_id": "store"}
    params: dict[str, Any] = {names.get(k, k): v for k, v in filters.items() if v is not None}
    params["group_by"] = [g.strip() for g in group_by.split(",") if g.strip()]
    params["period"] = period
    return params


@click.command("accuracy")
@query_options
@remote_options
@output_option
def accuracy(
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    group_by: str,
    period: str,
    **filters: Any,
) -> None:
    """Live forecast accuracy (WAPE, MAE, MASE, bias, coverage) reported by the stores, pooled by groups."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.get("/v1/accuracy", **_params(group_by, period, **filters))
    emit(rows, output, [c for c in ACCURACY_COLUMNS if any(c in r for r in rows)] or None)


@click.command("drift")
@query_options
@remote_options
@output_option
def drift(
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    group_by: str,
    period: str,
    **filters: Any,
) -> None:
    """Data drift reported by the stores (reports, how many flagged drift, scores), pooled by groups."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.get("/v1/drift", **_params(group_by, period, **filters))
    emit(rows, output, [c for c in DRIFT_COLUMNS if any(c in r for r in rows)] or None)


@click.command("replenishment")
@click.option("--store", "store_id", default=None, help="Only this store.")
@click.option("--category", default=None, help="Only this category.")
@click.option(
    "--by",
    "group_by",
    default="store_id,category",
    show_default=True,
    help="Comma-separated groups: store_id and/or category.",
)
@remote_options
@output_option
def replenishment(
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    store_id: str | None,
    category: str | None,
    group_by: str,
) -> None:
    """The stores' order proposals and the cycle service level achieved against target, from each store's
    newest accuracy report that carried them."""
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    with connect(server_url, token, client_config) as remote:
        rows = remote.get("/v1/replenishment", store=store_id, category=category, group_by=groups)
    emit(rows, output, [c for c in REPLENISHMENT_COLUMNS if any(c in r for r in rows)] or None)


@click.group()
def alerts() -> None:
    """Monitoring alerts: list, show (with webhook deliveries), acknowledge."""


@alerts.command("list")
@click.option("--status", type=click.Choice(["firing", "resolved"]), default=None, help="Only this status.")
@click.option("--store", "store_id", default=None, help="Only this store's alerts.")
@click.option("--severity", type=click.Choice(["info", "warning", "critical"]), default=None)
@click.option("--limit", type=int, default=None, help="At most this many (newest first).")
@remote_options
@output_option
def alerts_list(
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    status: str | None,
    store_id: str | None,
    severity: str | None,
    limit: int | None,
) -> None:
    """List alerts, newest first."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.get("/v1/alerts", status=status, store=store_id, severity=severity, limit=limit)
    emit(rows, output, ALERT_COLUMNS)


@alerts.command("show")
@click.argument("alert_id")
@remote_options
@output_option
def alerts_show(
    server_url: str | None, token: str | None, client_config: Path | None, output: str, alert_id: str
) -> None:
    """One alert (with the numbers a learnt-baseline rule judged it by) and its webhook delivery log."""
    with connect(server_url, token, client_config) as remote:
        detail = remote.get(f"/v1/alerts/{alert_id}")
    if output == "json":
        emit(detail, output)
        return
    emit([detail["alert"]], output, ALERT_COLUMNS)
    numbers = {k: v for k, v in (detail["alert"].get("details") or {}).items() if k != "recent"}
    if numbers:
        click.echo("")
        emit([{"number": k, "value": v} for k, v in numbers.items()], output, ["number", "value"])
    if detail["deliveries"]:
        click.echo("")
        emit(
            detail["deliveries"],
            output,
            ["attempt", "event", "target", "ok", "status_code", "error", "attempted_at"],
        )


@alerts.command("ack")
@click.argument("alert_id")
@remote_options
@output_option
def alerts_ack(
    server_url: str | None, token: str | None, client_config: Path | None, output: str, alert_id: str
) -> None:
    """Acknowledge an alert (it stays firing until its rule clears)."""
    with connect(server_url, token, client_config) as remote:
        alert = remote.request("POST", f"/v1/alerts/{alert_id}/ack")
    emit([alert], output, ALERT_COLUMNS)


MONITORING_COMMANDS = (accuracy, drift, replenishment, alerts)
