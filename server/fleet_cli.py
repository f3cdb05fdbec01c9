"""Fleet commands of the admin CLI over HTTP: ``shelfcast stores ...`` (stores, enrollment, credentials) and
``shelfcast keys trust|list|revoke|history`` (the signing keys the server trusts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from forecasting.commands.train import output_option
from server.cli_client import connect, emit, limit_option, remote_options

# --- stores ---------------------------------------------------------------------------------------


@click.group()
def stores() -> None:
    """Stores, enrollment and credentials of the fleet (admin CLI over HTTP)."""


@stores.command("list")
@click.option("--region", default=None)
@click.option("--group", default=None)
@click.option("--model", "model_name", default=None)
@remote_options
@output_option
@limit_option
def stores_list(
    region: str | None,
    group: str | None,
    model_name: str | None,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    limit: int | None,
) -> None:
    """List stores with their agent's last reported state and version."""
    with connect(server_url, token, client_config) as remote:
        items = remote.paginate("/v1/stores", limit=limit, region=region, group=group, model_name=model_name)
    if output == "json":
        emit(items, output)
        return
    rows = []
    for s in items:
        status = s.get("status") or {}
        rows.append(
            {
                "store_id": s["store_id"],
                "model_name": s["model_name"],
                "region": s["region"],
                "groups": ",".join(s["groups"]),
                "state": status.get("state"),
                "active_version": status.get("active_version"),
                "last_contact_at": status.get("last_contact_at"),
                "stale": status.get("stale"),
                "current_errors": "; ".join(
                    f"{kind}: {reason}" for kind, reason in (status.get("current_errors") or {}).items()
                ),
                "errors": sum((status.get("errors") or {}).values()),
                "last_error": status.get("last_error"),
                "revoked": s["revoked_at"] is not None,
            }
        )
    emit(rows, output, list(rows[0]) if rows else None)


@stores.command("show")
@click.argument("store_id")
@remote_options
@output_option
def stores_show(
    store_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Show one store."""
    with connect(server_url, token, client_config) as remote:
        emit(remote.get(f"/v1/stores/{store_id}"), output)


@stores.command("create")
@click.argument("store_id")
@click.option("--model", "model_name", default="demand", show_default=True, help="Model the store runs.")
@click.option("--name", default="")
@click.option("--region", default="")
@click.option("--type", "store_type", default="")
@click.option("--size", default="")
@click.option("--tag", "tags", multiple=True, help="Repeatable.")
@click.option("--group", "groups", multiple=True, help="Repeatable.")
@remote_options
@output_option
def stores_create(
    store_id: str,
    model_name: str,
    name: str,
    region: str,
    store_type: str,
    size: str,
    tags: tuple[str, ...],
    groups: tuple[str, ...],
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Create a store; prints its one-time enrollment token (give it to the store's agent)."""
    body = {
        "store_id": store_id,
        "model_name": model_name,
        "name": name,
        "region": region,
        "type": store_type,
        "size": size,
        "tags": list(tags),
        "groups": list(groups),
    }
    with connect(server_url, token, client_config) as remote:
        emit(remote.request("POST", "/v1/stores", json=body), output)


@stores.command("update")
@click.argument("store_id")
@click.option("--model", "model_name", default=None, help="Model the store runs.")
@click.option("--name", default=None)
@click.option("--region", default=None)
@click.option("--type", "store_type", default=None)
@click.option("--size", default=None)
@click.option("--tag", "tags", multiple=True, help="Repeatable; replaces the store's tags.")
@click.option("--group", "groups", multiple=True, help="Repeatable; replaces the store's groups.")
@remote_options
@output_option
def stores_update(
    store_id: str,
    model_name: str | None,
    name: str | None,
    region: str | None,
    store_type: str | None,
    size: str | None,
    tags: tuple[str, ...],
    groups: tuple[str, ...],
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Change a store's attributes, tags or groups (only the options given)."""
    body = {"model_name": model_name, "name": name, "region": region, "type": store_type, "size": size}
    changes: dict[str, Any] = {k: v for k, v in body.items() if v is not None}
    if tags:
        changes["tags"] = list(tags)
    if groups:
        changes["groups"] = list(groups)
    with connect(server_url, token, client_config) as remote:
        emit(remote.request("PATCH", f"/v1/stores/{store_id}", json=changes), output)


@stores.command("enroll")
@click.argument("store_id")
@remote_options
@output_option
def stores_enroll(
    store_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Issue a new one-time enrollment token for a store (a replaced machine, or after revoke)."""
    with connect(server_url, token, client_config) as remote:
        emit(remote.request("POST", f"/v1/stores/{store_id}/enrollment-tokens"), output)


@stores.command("revoke")
@click.argument("store_id")
@remote_options
@output_option
def stores_revoke(
    store_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Revoke every credential and pending enrollment token of a store."""
    with connect(server_url, token, client_config) as remote:
        store = remote.request("POST", f"/v1/stores/{store_id}/revoke")
    emit({"store_id": store["store_id"], "revoked_at": store["revoked_at"]}, output)


# --- trusted signing keys (subcommands of `shelfcast keys`, beside `keys generate`) ------------------


@click.command("trust")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--label", default="", help="Who or what signs with this key (kept in the audit).")
@remote_options
@output_option
def keys_trust(
    public_key: Path,
    label: str,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Make the server accept bundles signed by the key whose public half is PUBLIC_KEY (FILE.pub)."""
    text = public_key.read_text(errors="replace")
    if "PRIVATE KEY" in text:
        raise click.UsageError(f"{public_key} is a private key: pass its public half ({public_key}.pub)")
    with connect(server_url, token, client_config) as remote:
        emit(remote.request("POST", "/v1/keys", json={"public_key": text, "label": label}), output)


@click.command("list")
@remote_options
@output_option
def keys_list(server_url: str | None, token: str | None, client_config: Path | None, output: str) -> None:
    """Keys the server trusts for uploads, with where each comes from (config or the API)."""
    with connect(server_url, token, client_config) as remote:
        emit(remote.get("/v1/keys"), output, ["key_id", "source", "path", "error"])


@click.command("revoke")
@click.argument("key_id")
@remote_options
@output_option
def keys_revoke(
    key_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Stop accepting bundles signed by KEY_ID (published versions stay; agents keep their own trust)."""
    with connect(server_url, token, client_config) as remote:
        emit(remote.request("DELETE", f"/v1/keys/{key_id}"), output)


@click.command("history")
@limit_option
@remote_options
@output_option
def keys_history(
    limit: int | None, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Who trusted and revoked which key, and when (newest first)."""
    with connect(server_url, token, client_config) as remote:
        emit(
            remote.get("/v1/keys/history", limit=limit), output, ["at", "action", "key_id", "actor", "label"]
        )


KEY_COMMANDS = (keys_trust, keys_list, keys_revoke, keys_history)
