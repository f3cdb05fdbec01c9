"""SQL of the rollouts domain: rollouts, their wave stores, decisions, the engine lease, gate evidence."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from server.db import utcnow
from server.storage import SqlStore

ACTIVE_STATUSES = ("running", "paused", "awaiting_approval", "promoting")


def _in(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values) or "NULL"


class RolloutRepository:
    def __init__(self, db: SqlStore) -> None:
        self.db = db

    # --- rollouts ---------------------------------------------------------------------------------

    def insert_rollout(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO rollouts (rollout_id, model_name, candidate_version, champion_version, plan, steps, "
            "status, step, step_started_at, created_at, created_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
            [
                row["rollout_id"],
                row["model_name"],
                row["candidate_version"],
                row["champion_version"],
                row["plan"],
                row["steps"],
                row["status"],
                row["now"],
                row["now"],
                row["created_by"],
                row["now"],
            ],
        )

    def insert_stores(self, rollout_id: str, stores: dict[str, tuple[int, str]]) -> None:
        for store_id, (wave, stratum) in sorted(stores.items()):
            self.db.execute(
                "INSERT INTO rollout_stores VALUES (?, ?, ?, ?)", [rollout_id, store_id, wave, stratum]
            )

    def get(self, rollout_id: str) -> dict[str, Any] | None:
        return self.db.fetch_one("SELECT * FROM rollouts WHERE rollout_id = ?", [rollout_id])

    def list_rollouts(self, model_name: str | None, after: str | None, limit: int) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            "SELECT * FROM rollouts WHERE (? IS NULL OR model_name = ?) AND (? IS NULL OR rollout_id < ?) "
            "ORDER BY rollout_id DESC LIMIT ?",
            [model_name, model_name, after, after, limit],
        )

    def active(self, model_name: str | None = None) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            f"SELECT * FROM rollouts WHERE status IN ({_in(ACTIVE_STATUSES)}) "  # noqa: S608 - placeholders
            "AND (? IS NULL OR model_name = ?) ORDER BY created_at",
            [*ACTIVE_STATUSES, model_name, model_name],
        )

    def update(self, rollout_id: str, changes: dict[str, Any]) -> None:
        changes = {**changes, "updated_at": utcnow()}
        sets = ", ".join(f"{k} = ?" for k in changes)
        self.db.execute(
            f"UPDATE rollouts SET {sets} WHERE rollout_id = ?",  # noqa: S608 - fixed column names
            [*changes.values(), rollout_id],
        )

    def stores(self, rollout_id: str) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            "SELECT r.store_id, r.wave, r.stratum, a.state, a.active_version, a.last_contact_at "
            "FROM rollout_stores r LEFT JOIN agent_status a USING (store_id) "
            "WHERE r.rollout_id = ? ORDER BY r.wave, r.store_id",
            [rollout_id],
        )

    def store_wave(self, rollout_id: str, store_id: str) -> int | None:
        value = self.db.scalar(
            "SELECT wave FROM rollout_stores WHERE rollout_id = ? AND store_id = ?", [rollout_id, store_id]
        )
        return None if value is None else int(value)

    def fleet_stores(self, model_name: str) -> list[dict[str, Any]]:
        """The model's live stores with their attributes, groups and last heartbeat."""
        return self.db.fetch_all(
            "SELECT s.store_id, s.type, s.region, s.size, "
            "coalesce((SELECT list(g.group_name ORDER BY g.group_name) FROM store_groups g "
            "WHERE g.store_id = s.store_id), []) AS groups, "
            "a.state, a.active_version, a.last_contact_at "
            "FROM stores s LEFT JOIN agent_status a USING (store_id) "
            "WHERE s.model_name = ? AND s.revoked_at IS NULL ORDER BY s.store_id",
            [model_name],
        )

    # --- decisions --------------------------------------------------------------------------------

    def insert_decision(
        self, rollout_id: str, step: int, action: str, actor: str, reason: str, numbers: dict[str, Any]
    ) -> None:
        self.db.execute(
            "INSERT INTO rollout_decisions (rollout_id, step, action, actor, reason, numbers, decided_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [rollout_id, step, action, actor, reason, msgspec.json.encode(numbers).decode(), utcnow()],
        )

    def decisions(self, rollout_id: str) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            "SELECT * FROM rollout_decisions WHERE rollout_id = ? ORDER BY decision_id", [rollout_id]
        )

    # --- lease ------------------------------------------------------------------------------------

    def take_lease(self, name: str, holder: str, now: datetime, expires_at: datetime) -> bool:
        """Take or renew the named lease unless another holder's lease is still running."""
        with self.db.transaction():
            row = self.db.fetch_one("SELECT holder, expires_at FROM engine_leases WHERE name = ?", [name])
            if row is None:
                self.db.execute("INSERT INTO engine_leases VALUES (?, ?, ?)", [name, holder, expires_at])
                return True
            if row["holder"] != holder and row["expires_at"] > now:
                return False
            self.db.execute(
                "UPDATE engine_leases SET holder = ?, expires_at = ? WHERE name = ?",
                [holder, expires_at, name],
            )
            return True

    def release_lease(self, name: str, holder: str) -> None:
        self.db.execute("DELETE FROM engine_leases WHERE name = ? AND holder = ?", [name, holder])

    # --- gate evidence ----------------------------------------------------------------------------

    def paired_accuracy(
        self,
        *,
        model_name: str,
        candidate: int,
        champion: int,
        stores: Sequence[str],
        received_since: datetime,
    ) -> list[dict[str, Any]]:
        """Both versions' error sums per store x category x period, joined on the scoring that made both.

        Only reports of one scoring pair (the served and the shadow run on one history), so the two sums
        are over the same series, horizons and actuals. ``received_at``: the later of the two reports.
        """
        if not stores:
            return []
        return self.db.fetch_all(
            "SELECT c.store_id, c.category, c.period_end, sum(c.n) AS n, "  # noqa: S608 - placeholders
            "sum(c.abs_err_sum) AS candidate_errors, sum(b.abs_err_sum) AS champion_errors, "
            "sum(c.abs_y_sum) AS actuals, max(greatest(c.received_at, b.received_at)) AS received_at "
            "FROM accuracy_rows c JOIN accuracy_rows b ON b.store_id = c.store_id "
            "AND b.scoring_id = c.scoring_id AND b.category = c.category "
            "AND b.horizon_bucket = c.horizon_bucket AND b.period_start = c.period_start "
            "AND b.period_end = c.period_end "
            "WHERE c.model_name = ? AND b.model_name = ? AND c.version = ? AND b.version = ? "
            f"AND c.store_id IN ({_in(stores)}) AND c.received_at >= ? AND b.received_at >= ? "
            "GROUP BY c.store_id, c.category, c.period_end "
            "ORDER BY c.store_id, c.category, c.period_end",
            [model_name, model_name, candidate, champion, *stores, received_since, received_since],
        )
