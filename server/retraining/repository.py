"""SQL of the retraining domain: the ``retraining_runs`` table (migration 5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.storage import SqlStore

COLUMNS = (
    "retraining_id", "model_name", "trigger", "reason", "alert_id", "status", "stage", "dataset_id",
    "version", "run_id", "rollout", "error", "log_tail", "work_dir", "requested_by", "created_at",
    "started_at", "finished_at",
)  # fmt: skip
UPDATABLE = frozenset(COLUMNS) - {"retraining_id", "created_at"}


class RetrainingRepository:
    def __init__(self, db: SqlStore) -> None:
        self.db = db

    def insert(self, row: dict[str, Any]) -> None:
        values = [row.get(c) for c in COLUMNS]
        marks = ", ".join("?" for _ in COLUMNS)
        self.db.execute(f"INSERT INTO retraining_runs ({', '.join(COLUMNS)}) VALUES ({marks})", values)  # noqa: S608

    def update(self, retraining_id: str, **fields: Any) -> None:
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        sets = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(
            f"UPDATE retraining_runs SET {sets} WHERE retraining_id = ?",  # noqa: S608 - names checked above
            [*fields.values(), retraining_id],
        )

    def get(self, retraining_id: str) -> dict[str, Any] | None:
        return self.db.fetch_one("SELECT * FROM retraining_runs WHERE retraining_id = ?", [retraining_id])

    def page(
        self, model_name: str | None, status: str | None, after: list[Any] | None, limit: int
    ) -> list[dict[str, Any]]:
        after_at, after_id = (after[0], after[1]) if after else (None, None)
        return self.db.fetch_all(
            "SELECT * FROM retraining_runs WHERE (? IS NULL OR model_name = ?) AND (? IS NULL OR status = ?) "
            "AND (? IS NULL OR (created_at, retraining_id) < (CAST(? AS TIMESTAMP), ?)) "
            "ORDER BY created_at DESC, retraining_id DESC LIMIT ?",
            [model_name, model_name, status, status, after_at, after_at, after_id, limit],
        )

    def active(self, model_name: str) -> dict[str, Any] | None:
        return self.db.fetch_one(
            "SELECT * FROM retraining_runs WHERE model_name = ? AND status IN ('queued', 'running') "
            "ORDER BY created_at LIMIT 1",
            [model_name],
        )

    def last_automatic(self, model_name: str) -> datetime | None:
        """When the newest run started by an alert was requested."""
        value = self.db.scalar(
            "SELECT max(created_at) FROM retraining_runs WHERE model_name = ? AND trigger = 'alert'",
            [model_name],
        )
        return value if isinstance(value, datetime) else None

    def interrupted(self) -> list[dict[str, Any]]:
        return self.db.fetch_all("SELECT * FROM retraining_runs WHERE status IN ('queued', 'running')")

    def latest_dataset(self) -> dict[str, Any] | None:
        """The newest central dataset version (the last actuals batch's) and when it was added."""
        return self.db.fetch_one(
            "SELECT dataset_id, received_at FROM actuals_batches "
            "ORDER BY received_at DESC, dataset_id LIMIT 1"
        )

    def dataset_files(self, received_until: datetime) -> list[str]:
        """Parquet files (relative to the actuals folder) of the batches up to that version, oldest first."""
        rows = self.db.fetch_all(
            "SELECT files FROM actuals_batches WHERE received_at <= ? ORDER BY received_at, batch_id",
            [received_until],
        )
        import msgspec

        files: list[str] = []
        for row in rows:
            files.extend(msgspec.json.decode(row["files"]))
        return files
