"""Admin CLI over HTTP only: ``shelfcast models|runs|datasets|stores ...`` (it never opens the database).

Server URL and token come from ``--server``/``--token``, else ``SHELFCAST_SERVER_URL``/``SHELFCAST_TOKEN``,
else a client config file (``--client-config``, ``[client] server_url, token``), else loopback defaults.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from forecasting.commands.train import output_option
from forecasting.common.tables import render
from server.errors import ServerError

F = TypeVar("F", bound=Callable[..., Any])
MAX_LIST_ITEMS = 10_000


class RemoteError(ServerError):
    """The server answered with a problem (its message is passed on as is), or could not be reached."""


def check_response(response: Any) -> Any:
    """The decoded JSON body of a successful response, or ``RemoteError`` with the server's reason."""
    if response.status_code < 400:
        return response.json() if response.content else None
    try:
        body = response.json()
        detail = body.get("detail") or body.get("title")
    except ValueError:
        detail = response.text[:200]
    raise RemoteError(f"server refused ({response.status_code}): {detail}")


class Remote:
    """A small JSON client for the server's /v1 API."""

    def __init__(self, url: str, token: str, timeout_seconds: float) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_seconds)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the server at {self.url}: {exc}") from None
        return check_response(response)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def paginate(self, path: str, *, limit: int | None, **params: Any) -> list[Any]:
        """Follow ``next_cursor`` until ``limit`` items (all when None, capped) are collected."""
        wanted = MAX_LIST_ITEMS if limit is None else limit
        items: list[Any] = []
        cursor = None
        while len(items) < wanted:
            page = self.get(path, cursor=cursor, limit=min(wanted - len(items), 500), **params)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items[:wanted]

    def close(self) -> None:
        self._client.close()


def remote_options(func: F) -> F:
    """``--server``, ``--token``, ``--client-config`` on every admin command."""
    func = click.option(
        "--client-config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="TOML file with [client] server_url and token.",
    )(func)
    func = click.option(
        "--token", envvar="SHELFCAST_TOKEN", default=None, help="Bearer token (env SHELFCAST_TOKEN)."
    )(func)
    return click.option(
        "--server",
        "server_url",
        envvar="SHELFCAST_SERVER_URL",
        default=None,
        help="Server base URL (env SHELFCAST_SERVER_URL; default http://127.0.0.1:8470).",
    )(func)


@contextmanager
def connect(server_url: str | None, token: str | None, client_config: Path | None) -> Iterator[Remote]:
    from server.config import load_client_config

    config = load_client_config([client_config] if client_config else []).client
    remote = Remote(server_url or config.server_url, token or config.token, config.timeout_seconds)
    try:
        yield remote
    finally:
        remote.close()


def emit(data: Any, fmt: str, columns: list[str] | None = None) -> None:
    click.echo(render(data, fmt, columns))  # type: ignore[arg-type]


limit_option = click.option("--limit", type=int, default=None, help="At most this many rows (default: all).")


# --- models ---------------------------------------------------------------------------------------


@click.group()
def models() -> None:
    """Models, versions and aliases in the registry (admin CLI over HTTP)."""


@models.command("list")
@remote_options
@output_option
@limit_option
def models_list(
    server_url: str | None, token: str | None, client_config: Path | None, output: str, limit: int | None
) -> None:
    """List models with their latest version and aliases."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.paginate("/v1/models", limit=limit)
    emit(rows, output, ["name", "latest_version", "version_count", "aliases", "description", "tags"])


@models.command("show")
@click.argument("name")
@remote_options
@output_option
def models_show(
    name: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Show one model."""
    with connect(server_url, token, client_config) as remote:
        emit(remote.get(f"/v1/models/{name}"), output)


@models.command("update")
@click.argument("name")
@click.option("--description", default=None, help="New description.")
@click.option("--tag", "tags", multiple=True, help="Repeatable; replaces the model's tags.")
@remote_options
@output_option
def models_update(
    name: str,
    description: str | None,
    tags: tuple[str, ...],
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Set a model's description and tags (creating the model entry if needed)."""
    body: dict[str, Any] = {"description": description}
    if tags:
        body["tags"] = list(tags)
    with connect(server_url, token, client_config) as remote:
        emit(remote.request("PATCH", f"/v1/models/{name}", json=body), output)


@models.command("versions")
@click.argument("name")
@click.option(
    "--version", "version", type=int, default=None, help="Show this version in full (with lineage)."
)
@remote_options
@output_option
@limit_option
def models_versions(
    name: str,
    version: int | None,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    limit: int | None,
) -> None:
    """List the versions of a model (newest first), or show one with --version."""
    with connect(server_url, token, client_config) as remote:
        if version is not None:
            detail = remote.get(f"/v1/models/{name}/versions/{version}")
            detail["lineage"] = remote.get(f"/v1/models/{name}/versions/{version}/lineage")
            emit(detail, output)
            return
        rows = remote.paginate(f"/v1/models/{name}/versions", limit=limit)
    emit(rows, output, ["model_name", "version", "bundle_sha256", "bundle_size", "run_id", "created_at"])


@models.command("publish")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--alias", default=None, help="Point this alias (e.g. champion) at the new version.")
@click.option("--reason", default="", help="Why (kept in the alias history).")
@click.option(
    "--run-record",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="run.json to register (default: BUNDLE.run/run.json when present).",
)
@remote_options
@output_option
def models_publish(
    bundle: Path,
    alias: str | None,
    reason: str,
    run_record: Path | None,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Upload a bundle (directory or archive) as a new version; register its run record; set an alias."""
    from forecasting.bundle.format import pack_archive, read_manifest

    with tempfile.TemporaryDirectory(prefix="shelfcast-publish-") as tmp:
        if bundle.is_dir():
            name = read_manifest(bundle).model_name
            archive = Path(tmp) / "bundle.tar"
            pack_archive(bundle, archive)
        else:
            archive = bundle
            name = ""
        record_path = run_record or _run_record_beside(bundle)
        with connect(server_url, token, client_config) as remote:
            record = msgspec.json.decode(record_path.read_bytes()) if record_path else None
            if isinstance(record, dict):
                remote.request("POST", "/v1/runs", json=record)
            if not name:
                name = str((record or {}).get("model_name") or "")
            if not name:
                raise click.UsageError("cannot tell the model name of an archive without its run record")
            info = remote.request(
                "POST",
                f"/v1/models/{name}/versions",
                content=archive.read_bytes(),
                headers={"Content-Type": "application/x-tar"},
            )
            if alias:
                remote.request(
                    "PUT",
                    f"/v1/models/{name}/aliases/{alias}",
                    json={"version": info["version"], "reason": reason},
                )
                info["alias"] = alias
    if record_path:
        info["run_record"] = str(record_path)
    emit(info, output)


def _run_record_beside(bundle: Path) -> Path | None:
    base = bundle.with_suffix("") if bundle.is_file() else bundle
    for candidate in (base.parent / f"{base.name}.run" / "run.json", base / "run.json"):
        if candidate.is_file():
            return candidate
    return None


@models.group("alias")
def alias_group() -> None:
    """Move aliases, read their history, roll them back."""


@alias_group.command("set")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@click.option("--reason", default="", help="Why (kept in the alias history).")
@remote_options
@output_option
def alias_set(
    name: str,
    alias: str,
    version: int,
    reason: str,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Point ALIAS of model NAME at VERSION."""
    with connect(server_url, token, client_config) as remote:
        emit(
            remote.request(
                "PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": version, "reason": reason}
            ),
            output,
        )


@alias_group.command("history")
@click.argument("name")
@click.argument("alias")
@remote_options
@output_option
@limit_option
def alias_history(
    name: str,
    alias: str,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    limit: int | None,
) -> None:
    """Every move of ALIAS (newest first): from, to, who, when, why."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.paginate(f"/v1/models/{name}/aliases/{alias}/history", limit=limit)
    emit(rows, output, ["event_id", "alias", "from_version", "to_version", "actor", "moved_at", "reason"])


@alias_group.command("rollback")
@click.argument("name")
@click.argument("alias")
@click.option("--reason", default="", help="Why (kept in the alias history).")
@remote_options
@output_option
def alias_rollback(
    name: str,
    alias: str,
    reason: str,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Point ALIAS back to the version it had before its last move."""
    with connect(server_url, token, client_config) as remote:
        emit(
            remote.request("POST", f"/v1/models/{name}/aliases/{alias}/rollback", json={"reason": reason}),
            output,
        )


# --- runs -----------------------------------------------------------------------------------------


@click.group()
def runs() -> None:
    """Training runs: params, metrics, selection, dataset (admin CLI over HTTP)."""


@runs.command("list")
@click.option("--model", "model_name", default=None, help="Only runs of this model.")
@remote_options
@output_option
@limit_option
def runs_list(
    model_name: str | None,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
    limit: int | None,
) -> None:
    """List runs, newest first."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.paginate("/v1/runs", limit=limit, model_name=model_name)
    emit(rows, output, ["run_id", "model_name", "status", "dataset_id", "code_version", "created_at"])


@runs.command("show")
@click.argument("run_id")
@remote_options
@output_option
def runs_show(
    run_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Show one run (a retraining run ``rtr_...`` with its progress and log tail)."""
    path = f"/v1/retraining/runs/{run_id}" if run_id.startswith("rtr_") else f"/v1/runs/{run_id}"
    with connect(server_url, token, client_config) as remote:
        emit(remote.get(path), output)


@runs.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--only-differences", is_flag=True, help="Hide the fields on which all runs agree.")
@remote_options
@output_option
def runs_compare(
    run_ids: tuple[str, ...],
    only_differences: bool,
    server_url: str | None,
    token: str | None,
    client_config: Path | None,
    output: str,
) -> None:
    """Two or more runs side by side: one row per field, one column per run."""
    if len(run_ids) < 2:
        raise click.UsageError("give at least two run ids")
    with connect(server_url, token, client_config) as remote:
        result = remote.request("GET", "/v1/runs/compare", params=[("run_id", r) for r in run_ids])
    rows = [r for r in result["rows"] if r["differs"] or not only_differences]
    emit(rows, output, ["field", *run_ids, "differs"])


# --- datasets -------------------------------------------------------------------------------------


@click.group()
def datasets() -> None:
    """Datasets by content hash, and their lineage (admin CLI over HTTP)."""


@datasets.command("list")
@remote_options
@output_option
@limit_option
def datasets_list(
    server_url: str | None, token: str | None, client_config: Path | None, output: str, limit: int | None
) -> None:
    """List datasets, newest first."""
    with connect(server_url, token, client_config) as remote:
        rows = remote.paginate("/v1/datasets", limit=limit)
    emit(rows, output, ["dataset_id", "name", "row_count", "date_min", "date_max", "source", "created_at"])


@datasets.command("show")
@click.argument("dataset_id")
@remote_options
@output_option
def datasets_show(
    dataset_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """Show one dataset."""
    with connect(server_url, token, client_config) as remote:
        emit(remote.get(f"/v1/datasets/{dataset_id}"), output)


@datasets.command("lineage")
@click.argument("dataset_id")
@remote_options
@output_option
def datasets_lineage(
    dataset_id: str, server_url: str | None, token: str | None, client_config: Path | None, output: str
) -> None:
    """The runs trained on a dataset and the versions those runs produced."""
    with connect(server_url, token, client_config) as remote:
        lineage = remote.get(f"/v1/datasets/{dataset_id}/lineage")
    if output == "json":
        emit(lineage, output)
        return
    rows = [
        {"kind": "run", "id": r["run_id"], "model_name": r["model_name"], "version": None}
        for r in lineage["runs"]
    ]
    rows += [
        {
            "kind": "version",
            "id": v["bundle_sha256"][:16],
            "model_name": v["model_name"],
            "version": v["version"],
        }
        for v in lineage["versions"]
    ]
    emit(rows, output, ["kind", "id", "model_name", "version"])


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
ADMIN_GROUPS = (models, runs, datasets, stores)
