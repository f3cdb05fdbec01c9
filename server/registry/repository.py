"""SQL of the registry domain: models, versions, aliases and their history, runs, datasets."""

from __future__ import annotations

from typing import Any

import msgspec

from server.db import utcnow
from server.storage import SqlStore

VERSION_COLUMNS = (
    "model_name, version, bundle_sha256, bundle_size, run_id, dataset_id, created_at, created_by"
)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _unjson(row: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if isinstance(row.get(name), str):
            row[name] = msgspec.json.decode(row[name])
    return row


class RegistryRepository:
    def __init__(self, db: SqlStore) -> None:
        self.db = db

    # --- models -----------------------------------------------------------------------------------

    def ensure_model(self, name: str) -> None:
        self.db.execute(
            "INSERT INTO models (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            [name, utcnow()],
        )

    def update_model(self, name: str, description: str | None, tags: list[str] | None) -> None:
        if description is not None:
            self.db.execute("UPDATE models SET description = ? WHERE name = ?", [description, name])
        if tags is not None:
            self.db.execute("UPDATE models SET tags = ? WHERE name = ?", [_json(tags), name])

    def get_model(self, name: str) -> dict[str, Any] | None:
        rows = self._models_where("m.name = ?", [name], 1)
        return rows[0] if rows else None

    def list_models(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        if after is None:
            return self._models_where("TRUE", [], limit)
        return self._models_where("m.name > ?", [after], limit)

    def _models_where(self, where: str, params: list[Any], limit: int) -> list[dict[str, Any]]:
        rows = self.db.fetch_all(
            "SELECT m.name, m.description, m.tags, m.created_at, "  # noqa: S608
            "(SELECT max(version) FROM model_versions v WHERE v.model_name = m.name) AS latest_version, "
            "(SELECT count(*) FROM model_versions v WHERE v.model_name = m.name) AS version_count "
            f"FROM models m WHERE {where} ORDER BY m.name LIMIT ?",
            [*params, limit],
        )
        for row in rows:
            _unjson(row, "tags")
            row["aliases"] = {a["alias"]: a["version"] for a in self.list_aliases(row["name"])}
        return rows

    # --- versions ---------------------------------------------------------------------------------

    def latest_version(self, name: str) -> int | None:
        value = self.db.scalar("SELECT max(version) FROM model_versions WHERE model_name = ?", [name])
        return None if value is None else int(value)

    def insert_version(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                row["model_name"],
                row["version"],
                row["bundle_sha256"],
                row["bundle_size"],
                _json(row["manifest"]),
                row["run_id"],
                row["dataset_id"],
                utcnow(),
                row["created_by"],
            ],
        )

    def link_version(self, name: str, version: int, run_id: str | None, dataset_id: str | None) -> None:
        self.db.execute(
            "UPDATE model_versions SET run_id = coalesce(?, run_id), dataset_id = coalesce(?, dataset_id) "
            "WHERE model_name = ? AND version = ?",
            [run_id, dataset_id, name, version],
        )

    def get_version(self, name: str, version: int) -> dict[str, Any] | None:
        row = self.db.fetch_one(
            "SELECT * FROM model_versions WHERE model_name = ? AND version = ?", [name, version]
        )
        return None if row is None else _unjson(row, "manifest")

    def find_blob(self, sha256: str) -> dict[str, Any] | None:
        return self.db.fetch_one(
            "SELECT model_name, version, bundle_size FROM model_versions WHERE bundle_sha256 = ? LIMIT 1",
            [sha256],
        )

    def list_versions(self, name: str, after: int | None, limit: int) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            f"SELECT {VERSION_COLUMNS} "  # noqa: S608 - a constant column list
            "FROM model_versions WHERE model_name = ? AND version < coalesce(?, 2147483647) "
            "ORDER BY version DESC LIMIT ?",
            [name, after, limit],
        )

    def versions_for_runs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        if not run_ids:
            return []
        return self.db.fetch_all(
            f"SELECT {VERSION_COLUMNS} "  # noqa: S608 - a constant column list
            "FROM model_versions WHERE list_contains(?, run_id) ORDER BY model_name, version",
            [run_ids],
        )

    def versions_for_dataset(self, dataset_id: str) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            f"SELECT {VERSION_COLUMNS} "  # noqa: S608 - a constant column list
            "FROM model_versions WHERE dataset_id = ? ORDER BY model_name, version",
            [dataset_id],
        )

    # --- aliases ----------------------------------------------------------------------------------

    def get_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        return self.db.fetch_one("SELECT * FROM aliases WHERE model_name = ? AND alias = ?", [name, alias])

    def list_aliases(self, name: str) -> list[dict[str, Any]]:
        return self.db.fetch_all("SELECT * FROM aliases WHERE model_name = ? ORDER BY alias", [name])

    def all_aliases(self, alias: str) -> dict[str, int]:
        rows = self.db.fetch_all("SELECT model_name, version FROM aliases WHERE alias = ?", [alias])
        return {r["model_name"]: int(r["version"]) for r in rows}

    def set_alias(self, name: str, alias: str, version: int, actor: str) -> None:
        self.db.execute(
            "INSERT INTO aliases VALUES (?, ?, ?, ?, ?) ON CONFLICT (model_name, alias) DO UPDATE SET "
            "version = excluded.version, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            [name, alias, version, utcnow(), actor],
        )

    def insert_alias_event(
        self, name: str, alias: str, from_version: int | None, to_version: int, actor: str, reason: str
    ) -> None:
        self.db.execute(
            "INSERT INTO alias_events (model_name, alias, from_version, to_version, actor, reason, moved_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [name, alias, from_version, to_version, actor, reason, utcnow()],
        )

    def alias_history(
        self, name: str, alias: str | None, before: int | None, limit: int
    ) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            "SELECT * FROM alias_events WHERE model_name = ? AND (? IS NULL OR alias = ?) "
            "AND event_id < coalesce(?, 9223372036854775807) ORDER BY event_id DESC LIMIT ?",
            [name, alias, alias, before, limit],
        )

    # --- datasets ---------------------------------------------------------------------------------

    def upsert_dataset(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dataset_id) DO NOTHING",
            [
                row["dataset_id"],
                row.get("name", ""),
                _json(row.get("schema", {})),
                row.get("row_count"),
                row.get("date_min"),
                row.get("date_max"),
                _json(row.get("stores", [])),
                row.get("source", ""),
                utcnow(),
            ],
        )

    def get_dataset(self, dataset_id: str) -> dict[str, Any] | None:
        row = self.db.fetch_one("SELECT * FROM datasets WHERE dataset_id = ?", [dataset_id])
        return None if row is None else _unjson(row, "schema", "stores")

    def list_datasets(self, after: list[Any] | None, limit: int) -> list[dict[str, Any]]:
        after_at, after_id = (after[0], after[1]) if after else (None, None)
        rows = self.db.fetch_all(
            "SELECT * FROM datasets WHERE ? IS NULL OR (created_at, dataset_id) < (CAST(? AS TIMESTAMP), ?) "
            "ORDER BY created_at DESC, dataset_id DESC LIMIT ?",
            [after_at, after_at, after_id, limit],
        )
        return [_unjson(r, "schema", "stores") for r in rows]

    # --- runs -------------------------------------------------------------------------------------

    def upsert_run(self, row: dict[str, Any], actor: str) -> None:
        self.db.execute("DELETE FROM runs WHERE run_id = ?", [row["run_id"]])
        self.db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                row["run_id"],
                row["model_name"],
                row["status"],
                _json(row["params"]),
                _json(row["metrics"]),
                _json(row["selection"]),
                _json(row["artifacts"]),
                row["dataset_id"],
                row["code_version"],
                _json(row["packages"]),
                row["started_at"],
                row["finished_at"],
                _json(row["record"]),
                utcnow(),
                actor,
            ],
        )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        row = self.db.fetch_one("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return (
            None
            if row is None
            else _unjson(row, "params", "metrics", "selection", "artifacts", "packages", "record")
        )

    def list_runs(
        self, after: list[Any] | None, limit: int, model_name: str | None, dataset_id: str | None
    ) -> list[dict[str, Any]]:
        after_at, after_id = (after[0], after[1]) if after else (None, None)
        rows = self.db.fetch_all(
            "SELECT * FROM runs WHERE (? IS NULL OR (created_at, run_id) < (CAST(? AS TIMESTAMP), ?)) "
            "AND (? IS NULL OR model_name = ?) AND (? IS NULL OR dataset_id = ?) "
            "ORDER BY created_at DESC, run_id DESC LIMIT ?",
            [after_at, after_at, after_id, model_name, model_name, dataset_id, dataset_id, limit],
        )
        return [_unjson(r, "params", "metrics", "selection", "artifacts", "packages", "record") for r in rows]

    # --- trusted keys (the key files live in <state_dir>/keys; this is their audit) ---------------

    def insert_key_event(self, action: str, key_id: str, actor: str, label: str) -> None:
        self.db.execute(
            "INSERT INTO key_events VALUES (?, ?, ?, ?, ?)", [utcnow(), action, key_id, actor, label]
        )

    def key_events(self, limit: int) -> list[dict[str, Any]]:
        return self.db.fetch_all("SELECT * FROM key_events ORDER BY event_at DESC, key_id LIMIT ?", [limit])
