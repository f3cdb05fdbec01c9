"""Admin CLI over HTTP only: ``shelfcast models|runs|datasets ...`` (it never opens the database).

The client, where it connects and the shared options are in :mod:`server.cli_client`; ``shelfcast stores``
and the ``keys`` commands that talk to the server are in :mod:`server.fleet_cli`. ``ADMIN_GROUPS`` is what
the ``shelfcast`` console script mounts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click
import msgspec

from forecasting.commands.train import output_option
from server.cli_client import connect, emit, limit_option, remote_options
from server.fleet_cli import stores

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


ADMIN_GROUPS = (models, runs, datasets, stores)
