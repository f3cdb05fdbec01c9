"""Rules of the registry: immutable, increasing versions; audited alias moves; runs, datasets, lineage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from forecasting.common.contracts import ModelVersionInfo
from forecasting.common.logs import get_logger
from server.auth import Principal, new_id
from server.db import as_utc, to_naive_utc
from server.errors import ConflictError, InvalidInputError, NotFoundError
from server.pagination import next_cursor, page_request
from server.registry import schemas
from server.registry.bundles import inspect_archive, summarize_manifest
from server.registry.keys import KeyRing
from server.registry.repository import RegistryRepository
from server.storage import BlobStorage

log = get_logger("server.registry")

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
RUN_KNOWN_FIELDS = (
    "run_id",
    "model_name",
    "status",
    "params",
    "metrics",
    "selection",
    "artifacts",
    "dataset",
    "dataset_id",
    "code_version",
    "packages",
    "started_at",
    "finished_at",
)


def check_name(value: str, what: str) -> str:
    if not value or len(value) > 128 or not set(value) <= NAME_CHARS or value[0] in "-.":
        raise InvalidInputError(f"{what} {value!r} must be 1-128 letters, digits, '-', '_' or '.'")
    return value


def version_info(row: dict[str, Any]) -> ModelVersionInfo:
    return ModelVersionInfo(
        model_name=row["model_name"],
        version=int(row["version"]),
        bundle_sha256=row["bundle_sha256"],
        bundle_size=int(row["bundle_size"]),
        created_at=as_utc(row["created_at"]) or row["created_at"],
        run_id=row.get("run_id"),
    )


def _utc_rows(row: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if isinstance(row.get(name), datetime):
            row[name] = as_utc(row[name])
    return row


def _parse_time(value: Any, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        raise InvalidInputError(f"run field {field!r}: {value!r} is not an ISO 8601 date-time") from None
    return to_naive_utc(parsed)


class RegistryService:
    def __init__(
        self,
        repo: RegistryRepository,
        blobs: BlobStorage,
        *,
        trusted_keys: Sequence[str],
        keys_dir: Path,
        max_bundle_bytes: int,
        page_default: int,
        page_cap: int,
        on_change: Callable[[], None],
    ) -> None:
        self.repo = repo
        self.blobs = blobs
        self.keys = KeyRing(repo, trusted_keys, keys_dir)
        self.max_bundle_bytes = max_bundle_bytes
        self.page_default = page_default
        self.page_cap = page_cap
        self.on_change = on_change

    # --- models -----------------------------------------------------------------------------------

    def list_models(self, limit: int | None, cursor: str | None) -> schemas.ModelPage:
        page = page_request(limit, cursor, default=self.page_default, cap=self.page_cap)
        rows = self.repo.list_models(page.after[0] if page.after else None, page.limit + 1)
        rows, nxt = next_cursor(rows, page.limit, lambda r: [r["name"]])
        return schemas.ModelPage(items=[self._model(r) for r in rows], next_cursor=nxt)

    def get_model(self, name: str) -> schemas.ModelInfo:
        row = self.repo.get_model(name)
        if row is None:
            raise NotFoundError(f"no model named {name!r}")
        return self._model(row)

    def update_model(self, name: str, body: schemas.ModelUpdate) -> schemas.ModelInfo:
        check_name(name, "model name")
        with self.repo.db.transaction():
            self.repo.ensure_model(name)
            self.repo.update_model(name, body.description, body.tags)
        return self.get_model(name)

    @staticmethod
    def _model(row: dict[str, Any]) -> schemas.ModelInfo:
        return msgspec.convert(_utc_rows(row, "created_at"), schemas.ModelInfo)

    # --- versions ---------------------------------------------------------------------------------

    def publish(self, name: str, archive: Path, sha256: str, size: int, who: Principal) -> ModelVersionInfo:
        """Verify an uploaded archive and register it as the next version of ``name``."""
        check_name(name, "model name")
        try:
            manifest = inspect_archive(
                archive,
                self.blobs.tmp_dir,
                self.keys.files(),
                max_bytes=self.max_bundle_bytes,
            )
            if manifest.get("model_name") != name:
                raise InvalidInputError(
                    f"the bundle is for model {manifest.get('model_name')!r}, uploaded to {name!r}"
                )
            version = int(manifest["version"])
            lineage = manifest.get("lineage") or {}
            run_id = lineage.get("run_id") or None
            dataset_id = lineage.get("dataset_fingerprint") or None
            with self.repo.db.transaction():
                existing = self.repo.get_version(name, version)
                if existing is not None:
                    same = existing["bundle_sha256"] == sha256
                    raise ConflictError(
                        f"{name} v{version} is already registered"
                        + (
                            " (the same bundle)"
                            if same
                            else " with a different bundle; versions are immutable"
                        )
                    )
                latest = self.repo.latest_version(name)
                if latest is not None and version <= latest:
                    raise ConflictError(
                        f"{name} v{version} is not newer than the latest registered version v{latest}; "
                        "versions must increase"
                    )
                other = self.repo.find_blob(sha256)
                if other is not None:
                    raise ConflictError(
                        f"this bundle is already registered as {other['model_name']} v{other['version']}"
                    )
                self.blobs.adopt(archive, sha256)
                self.repo.ensure_model(name)
                self.repo.insert_version(
                    {
                        "model_name": name,
                        "version": version,
                        "bundle_sha256": sha256,
                        "bundle_size": size,
                        "manifest": summarize_manifest(manifest),
                        "run_id": run_id,
                        "dataset_id": dataset_id,
                        "created_by": who.actor,
                    }
                )
        finally:
            archive.unlink(missing_ok=True)
        self.repo.db.checkpoint()
        self.on_change()
        log.info(
            "model_version_registered", model_name=name, version=version, bundle_sha256=sha256, size=size
        )
        return self.get_version(name, version)

    def get_version(self, name: str, version: int) -> ModelVersionInfo:
        row = self.repo.get_version(name, version)
        if row is None:
            raise NotFoundError(f"model {name!r} has no version {version}")
        return version_info(row)

    def assignable_version(self, name: str, version: int) -> dict[str, Any]:
        """The registered version, if stores may be sent to it: 404 when unknown, 409 once it expired
        (every agent would refuse it). Checked before an alias moves and before a rollout starts."""
        row = self.repo.get_version(name, version)
        if row is None:
            raise NotFoundError(f"model {name!r} has no version {version}; upload it first")
        expires = (row.get("manifest") or {}).get("expires_at")
        if expires:
            at = datetime.fromisoformat(str(expires))
            if (at if at.tzinfo else at.replace(tzinfo=UTC)) <= datetime.now(UTC):
                raise ConflictError(
                    f"model {name!r} version {version} expired at {expires}: agents refuse it, so no alias "
                    "or rollout may point at it (publish a fresh version)"
                )
        return row

    def version_detail(self, name: str, version: int) -> schemas.VersionDetail:
        row = self.repo.get_version(name, version)
        if row is None:
            raise NotFoundError(f"model {name!r} has no version {version}")
        row["aliases"] = [a["alias"] for a in self.repo.list_aliases(name) if a["version"] == version]
        return msgspec.convert(_utc_rows(row, "created_at"), schemas.VersionDetail)

    def list_versions(self, name: str, limit: int | None, cursor: str | None) -> schemas.VersionPage:
        self.get_model(name)
        page = page_request(limit, cursor, default=self.page_default, cap=self.page_cap)
        rows = self.repo.list_versions(name, page.after[0] if page.after else None, page.limit + 1)
        rows, nxt = next_cursor(rows, page.limit, lambda r: [r["version"]])
        return schemas.VersionPage(items=[version_info(r) for r in rows], next_cursor=nxt)

    def bundle_size(self, sha256: str) -> int:
        row = self.repo.find_blob(sha256)
        if row is None or not self.blobs.exists(sha256):
            raise NotFoundError(f"no bundle with sha256 {sha256}")
        return int(row["bundle_size"])

    # --- aliases ----------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, body: schemas.AliasSet, who: Principal) -> schemas.AliasInfo:
        check_name(alias, "alias")
        with self.repo.db.transaction():
            self.assignable_version(name, body.version)
            current = self.repo.get_alias(name, alias)
            previous = None if current is None else int(current["version"])
            self.repo.set_alias(name, alias, body.version, who.actor)
            self.repo.insert_alias_event(name, alias, previous, body.version, who.actor, body.reason)
        self.repo.db.checkpoint()
        self.on_change()
        log.info(
            "alias_moved",
            model_name=name,
            alias=alias,
            from_version=previous,
            to_version=body.version,
            actor=who.actor,
            reason=body.reason,
        )
        return self._alias(name, alias, previous)

    def rollback_alias(
        self, name: str, alias: str, body: schemas.AliasRollback, who: Principal
    ) -> schemas.AliasInfo:
        """Point ``alias`` back to the version it pointed at before its last move (recorded as a move)."""
        events = self.repo.alias_history(name, alias, None, 1)
        if not events:
            raise NotFoundError(f"alias {alias!r} of model {name!r} has never been set")
        previous = events[0]["from_version"]
        if previous is None:
            raise ConflictError(f"alias {alias!r} of model {name!r} has no earlier version to roll back to")
        reason = body.reason or f"rollback from v{events[0]['to_version']}"
        return self.set_alias(name, alias, schemas.AliasSet(version=int(previous), reason=reason), who)

    def get_alias(self, name: str, alias: str) -> schemas.AliasInfo:
        return self._alias(name, alias, None)

    def list_aliases(self, name: str) -> list[schemas.AliasInfo]:
        self.get_model(name)
        return [self._alias_row(r, None) for r in self.repo.list_aliases(name)]

    def _alias(self, name: str, alias: str, previous: int | None) -> schemas.AliasInfo:
        row = self.repo.get_alias(name, alias)
        if row is None:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}")
        return self._alias_row(row, previous)

    @staticmethod
    def _alias_row(row: dict[str, Any], previous: int | None) -> schemas.AliasInfo:
        return schemas.AliasInfo(
            model_name=row["model_name"],
            alias=row["alias"],
            version=int(row["version"]),
            previous_version=previous,
            updated_at=as_utc(row["updated_at"]) or row["updated_at"],
            updated_by=row["updated_by"],
        )

    def alias_history(
        self, name: str, alias: str | None, limit: int | None, cursor: str | None
    ) -> schemas.AliasEventPage:
        page = page_request(limit, cursor, default=self.page_default, cap=self.page_cap)
        rows = self.repo.alias_history(name, alias, page.after[0] if page.after else None, page.limit + 1)
        rows, nxt = next_cursor(rows, page.limit, lambda r: [r["event_id"]])
        items = [msgspec.convert(_utc_rows(r, "moved_at"), schemas.AliasEvent) for r in rows]
        return schemas.AliasEventPage(items=items, next_cursor=nxt)

    def champion_versions(self) -> dict[str, int]:
        return self.repo.all_aliases("champion")

    # --- datasets ---------------------------------------------------------------------------------

    def register_dataset(self, body: schemas.DatasetIn) -> schemas.Dataset:
        check_name(body.dataset_id, "dataset id")
        with self.repo.db.transaction():
            self.repo.upsert_dataset(msgspec.to_builtins(body))
        self.repo.db.checkpoint()
        return self.get_dataset(body.dataset_id)

    def get_dataset(self, dataset_id: str) -> schemas.Dataset:
        row = self.repo.get_dataset(dataset_id)
        if row is None:
            raise NotFoundError(f"no dataset {dataset_id!r}")
        return msgspec.convert(_utc_rows(row, "created_at"), schemas.Dataset)

    def list_datasets(self, limit: int | None, cursor: str | None) -> schemas.DatasetPage:
        page = page_request(limit, cursor, default=self.page_default, cap=self.page_cap)
        rows = self.repo.list_datasets(page.after, page.limit + 1)
        rows, nxt = next_cursor(rows, page.limit, lambda r: [r["created_at"].isoformat(), r["dataset_id"]])
        items = [msgspec.convert(_utc_rows(r, "created_at"), schemas.Dataset) for r in rows]
        return schemas.DatasetPage(items=items, next_cursor=nxt)

    def dataset_lineage(self, dataset_id: str) -> schemas.DatasetLineage:
        dataset = self.get_dataset(dataset_id)
        runs = [self._run(r) for r in self.repo.list_runs(None, self.page_cap, None, dataset_id)]
        versions = {(v["model_name"], v["version"]): v for v in self.repo.versions_for_dataset(dataset_id)}
        for v in self.repo.versions_for_runs([r.run_id for r in runs]):
            versions[(v["model_name"], v["version"])] = v
        return schemas.DatasetLineage(
            dataset=dataset, runs=runs, versions=[version_info(versions[k]) for k in sorted(versions)]
        )

    def version_lineage(self, name: str, version: int) -> schemas.VersionLineage:
        row = self.repo.get_version(name, version)
        if row is None:
            raise NotFoundError(f"model {name!r} has no version {version}")
        run = self.repo.get_run(row["run_id"]) if row["run_id"] else None
        dataset_id = row["dataset_id"] or (run["dataset_id"] if run else None)
        dataset = self.repo.get_dataset(dataset_id) if dataset_id else None
        return schemas.VersionLineage(
            version=version_info(row),
            run=None if run is None else self._run(run),
            dataset=None
            if dataset is None
            else msgspec.convert(_utc_rows(dataset, "created_at"), schemas.Dataset),
        )

    # --- runs -------------------------------------------------------------------------------------

    def register_run(self, record: dict[str, Any], who: Principal) -> schemas.Run:
        """Record a training run (the ``run.json`` that ``shelfcast train`` writes), and its dataset."""
        run_id = str(record.get("run_id") or new_id("run"))
        check_name(run_id, "run id")
        dataset = record.get("dataset")
        dataset_id = record.get("dataset_id") or record.get("dataset_fingerprint")
        if isinstance(dataset, dict):
            dataset_id = (
                dataset_id or dataset.get("dataset_id") or dataset.get("fingerprint") or dataset.get("sha256")
            )
        for field, kind in (("params", dict), ("metrics", dict), ("selection", dict), ("packages", dict)):
            if not isinstance(record.get(field, {}), kind):
                raise InvalidInputError(f"run field {field!r} must be an object")
        artifacts = record.get("artifacts", [])
        if isinstance(artifacts, dict):
            artifacts = [{"name": k, "value": v} for k, v in artifacts.items()]
        if not isinstance(artifacts, list):
            raise InvalidInputError("run field 'artifacts' must be a list or an object")
        row = {
            "run_id": run_id,
            "model_name": str(record.get("model_name") or ""),
            "status": str(record.get("status") or "finished"),
            "params": record.get("params", {}),
            "metrics": record.get("metrics", {}),
            "selection": record.get("selection", {}),
            "artifacts": artifacts,
            "dataset_id": str(dataset_id) if dataset_id else None,
            "code_version": str(record.get("code_version") or ""),
            "packages": record.get("packages", {}),
            "started_at": _parse_time(record.get("started_at"), "started_at"),
            "finished_at": _parse_time(record.get("finished_at"), "finished_at"),
            "record": {k: v for k, v in record.items() if k not in RUN_KNOWN_FIELDS},
        }
        with self.repo.db.transaction():
            if row["dataset_id"]:
                self.repo.upsert_dataset(_dataset_row(row["dataset_id"], dataset))
            self.repo.upsert_run(row, who.actor)
            version = record.get("version")
            if row["model_name"] and isinstance(version, int):
                self.repo.link_version(row["model_name"], version, run_id, row["dataset_id"])
        self.repo.db.checkpoint()
        log.info("run_registered", run_id=run_id, model_name=row["model_name"], dataset_id=row["dataset_id"])
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> schemas.Run:
        row = self.repo.get_run(run_id)
        if row is None:
            raise NotFoundError(f"no run {run_id!r}")
        return self._run(row)

    def list_runs(self, model_name: str | None, limit: int | None, cursor: str | None) -> schemas.RunPage:
        page = page_request(limit, cursor, default=self.page_default, cap=self.page_cap)
        rows = self.repo.list_runs(page.after, page.limit + 1, model_name, None)
        rows, nxt = next_cursor(rows, page.limit, lambda r: [r["created_at"].isoformat(), r["run_id"]])
        return schemas.RunPage(items=[self._run(r) for r in rows], next_cursor=nxt)

    def compare_runs(self, run_ids: list[str]) -> schemas.RunComparison:
        if len(run_ids) < 2:
            raise InvalidInputError("compare needs at least two run ids")
        runs = [self.get_run(r) for r in run_ids]
        fields: dict[str, dict[str, Any]] = {}

        def put(field: str, run_id: str, value: Any) -> None:
            fields.setdefault(field, {})[run_id] = value

        for run in runs:
            put("model_name", run.run_id, run.model_name)
            put("dataset_id", run.run_id, run.dataset_id)
            put("code_version", run.run_id, run.code_version)
            put("created_at", run.run_id, run.created_at.isoformat())
            for section in ("params", "metrics", "selection"):
                for key, value in _flatten(getattr(run, section)).items():
                    put(f"{section}.{key}", run.run_id, value)
        rows = []
        for field, values in fields.items():
            row: dict[str, Any] = {"field": field}
            row.update({rid: values.get(rid) for rid in run_ids})
            row["differs"] = len({msgspec.json.encode(values.get(r)) for r in run_ids}) > 1
            rows.append(row)
        return schemas.RunComparison(run_ids=run_ids, rows=rows)

    @staticmethod
    def _run(row: dict[str, Any]) -> schemas.Run:
        return msgspec.convert(_utc_rows(row, "created_at", "started_at", "finished_at"), schemas.Run)


DATASET_ALIASES = {  # names the training run record uses -> dataset fields
    "fingerprint": "dataset_id",
    "rows": "row_count",
    "first_ds": "date_min",
    "last_ds": "date_max",
}


def _dataset_row(dataset_id: str, described: Any) -> dict[str, Any]:
    """The dataset a run names, with what the run record says about it (fields that fit the schema)."""
    data: dict[str, Any] = {}
    if isinstance(described, dict):
        for key, value in described.items():
            name = DATASET_ALIASES.get(key, key)
            if name in schemas.DatasetIn.__struct_fields__:
                data[name] = value
    data["dataset_id"] = dataset_id
    for key in ("date_min", "date_max"):
        if data.get(key) is not None:
            data[key] = str(data[key])
    try:
        result = msgspec.to_builtins(msgspec.convert(data, schemas.DatasetIn, strict=False))
    except msgspec.ValidationError:
        return {"dataset_id": dataset_id}
    assert isinstance(result, dict)
    return result


def _flatten(value: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and depth < 3:
            out.update(_flatten(item, f"{name}.", depth + 1))
        else:
            out[name] = item
    return out
