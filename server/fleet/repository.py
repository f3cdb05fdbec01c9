"""SQL of the fleet domain: stores, groups, enrollment tokens, credentials, agent status, report keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from server.db import utcnow
from server.storage import SqlStore, claim_id, insert_claims

STORE_COLUMNS = "store_id, model_name, name, region, type, size, tags, created_at, revoked_at"


class FleetRepository:
    def __init__(self, db: SqlStore) -> None:
        self.db = db

    # --- stores -----------------------------------------------------------------------------------

    def insert_store(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO stores (store_id, model_name, name, region, type, size, tags, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                row["store_id"],
                row["model_name"],
                row["name"],
                row["region"],
                row["type"],
                row["size"],
                msgspec.json.encode(row["tags"]).decode(),
                utcnow(),
            ],
        )

    def update_store(self, store_id: str, changes: dict[str, Any]) -> None:
        if not changes:
            return
        values = [msgspec.json.encode(v).decode() if k == "tags" else v for k, v in changes.items()]
        assignments = ", ".join(f'"{k}" = ?' for k in changes)
        self.db.execute(f"UPDATE stores SET {assignments} WHERE store_id = ?", [*values, store_id])  # noqa: S608

    def set_store_revoked(self, store_id: str, revoked: bool) -> None:
        self.db.execute(
            "UPDATE stores SET revoked_at = ? WHERE store_id = ?", [utcnow() if revoked else None, store_id]
        )

    def get_store(self, store_id: str) -> dict[str, Any] | None:
        rows = self._stores_where("s.store_id = ?", [store_id], limit=1)
        return rows[0] if rows else None

    def list_stores(
        self, *, after: str | None, limit: int, region: str | None, group: str | None, model_name: str | None
    ) -> list[dict[str, Any]]:
        clauses, params = ["TRUE"], []
        if after is not None:
            clauses.append("s.store_id > ?")
            params.append(after)
        if region is not None:
            clauses.append("s.region = ?")
            params.append(region)
        if model_name is not None:
            clauses.append("s.model_name = ?")
            params.append(model_name)
        if group is not None:
            clauses.append("s.store_id IN (SELECT store_id FROM store_groups WHERE group_name = ?)")
            params.append(group)
        return self._stores_where(" AND ".join(clauses), params, limit=limit)

    def all_store_models(self) -> dict[str, str]:
        rows = self.db.fetch_all("SELECT store_id, model_name FROM stores WHERE revoked_at IS NULL")
        return {r["store_id"]: r["model_name"] for r in rows}

    def _stores_where(self, where: str, params: list[Any], *, limit: int) -> list[dict[str, Any]]:
        rows = self.db.fetch_all(
            f"SELECT s.store_id, s.model_name, s.name, s.region, s.type, s.size, s.tags, s.created_at, "  # noqa: S608
            "s.revoked_at, a.state, a.model_name AS status_model_name, a.active_version, a.last_scored_at, "
            "a.agent_version, a.last_contact_at, a.errors, a.last_error, a.last_error_at, a.shadow_version, "
            "a.current_errors, "
            "coalesce((SELECT list(g.group_name ORDER BY g.group_name) FROM store_groups g "
            "WHERE g.store_id = s.store_id), []) AS groups "
            f"FROM stores s LEFT JOIN agent_status a USING (store_id) WHERE {where} "
            "ORDER BY s.store_id LIMIT ?",
            [*params, limit],
        )
        for row in rows:
            row["tags"] = msgspec.json.decode(row["tags"])
            row["errors"] = _decode_counts(row["errors"])
            row["current_errors"] = _decode_reasons(row["current_errors"])
        return rows

    def set_groups(self, store_id: str, groups: list[str]) -> None:
        self.db.execute("DELETE FROM store_groups WHERE store_id = ?", [store_id])
        for group in sorted(set(groups)):
            self.db.execute("INSERT INTO store_groups VALUES (?, ?)", [group, store_id])

    def list_groups(self) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            "SELECT group_name AS group, list(store_id ORDER BY store_id) AS store_ids "
            "FROM store_groups GROUP BY group_name ORDER BY group_name"
        )

    # --- enrollment tokens and credentials ----------------------------------------------------------

    def insert_enrollment_token(self, token_sha256: str, store_id: str, expires_at: datetime) -> None:
        self.db.execute(
            "INSERT INTO enrollment_tokens VALUES (?, ?, ?, ?, NULL)",
            [token_sha256, store_id, utcnow(), expires_at],
        )

    def get_enrollment_token(self, token_sha256: str) -> dict[str, Any] | None:
        return self.db.fetch_one("SELECT * FROM enrollment_tokens WHERE token_sha256 = ?", [token_sha256])

    def use_enrollment_token(self, token_sha256: str) -> None:
        self.db.execute(
            "UPDATE enrollment_tokens SET used_at = ? WHERE token_sha256 = ?", [utcnow(), token_sha256]
        )

    def expire_enrollment_tokens(self, store_id: str) -> None:
        self.db.execute(
            "UPDATE enrollment_tokens SET used_at = ? WHERE store_id = ? AND used_at IS NULL",
            [utcnow(), store_id],
        )

    def insert_credential(
        self, credential_id: str, token_sha256: str, role: str, store_id: str | None, label: str
    ) -> None:
        self.db.execute(
            "INSERT INTO credentials VALUES (?, ?, ?, ?, ?, ?, NULL)",
            [credential_id, token_sha256, role, store_id, label, utcnow()],
        )

    def revoke_credentials(self, *, store_id: str | None = None, credential_id: str | None = None) -> int:
        if store_id is not None:
            where, param = "store_id = ?", store_id
        elif credential_id is not None:
            where, param = "credential_id = ?", credential_id
        else:
            return 0
        count = self.db.scalar(
            f"SELECT count(*) FROM credentials WHERE {where} AND revoked_at IS NULL",  # noqa: S608
            [param],
        )
        self.db.execute(
            f"UPDATE credentials SET revoked_at = ? WHERE {where} AND revoked_at IS NULL",  # noqa: S608
            [utcnow(), param],
        )
        return int(count or 0)

    def active_credentials(self) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            "SELECT credential_id, token_sha256, role, store_id FROM credentials WHERE revoked_at IS NULL"
        )

    def list_credentials(self) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            "SELECT credential_id, role, store_id, label, created_at, revoked_at FROM credentials "
            "ORDER BY created_at, credential_id"
        )

    def get_credential(self, credential_id: str) -> dict[str, Any] | None:
        return self.db.fetch_one("SELECT * FROM credentials WHERE credential_id = ?", [credential_id])

    # --- agent status and report idempotency --------------------------------------------------------

    def claim_report_key(self, store_id: str, key: str) -> bool:
        """Record ``key`` for ``store_id``; False when it was seen before (a retried delivery)."""
        return bool(self.claim_report_keys([(store_id, key)], utcnow()))

    def claim_report_keys(self, keys: Sequence[tuple[str, str]], now: datetime) -> set[tuple[str, str]]:
        """Record many ``(store_id, key)`` at once: those not seen before (each checked through the
        one-column key's index, one statement per ``CLAIMS_PER_INSERT``)."""
        wanted = {claim_id(store_id, key): (store_id, key) for store_id, key in keys}
        rows = [[claim, store_id, key, now] for claim, (store_id, key) in wanted.items()]
        claimed = insert_claims(self.db, "report_keys (claim, store_id, idempotency_key, received_at)", rows)
        return {wanted[c] for c in claimed}

    def store_exists(self, store_id: str) -> bool:
        return bool(self.db.scalar("SELECT count(*) FROM stores WHERE store_id = ?", [store_id]))

    def prune_report_keys(self, older_than: datetime) -> None:
        self.db.execute("DELETE FROM report_keys WHERE received_at < ?", [older_than])

    def upsert_agent_status(self, row: dict[str, Any]) -> None:
        """Insert or replace the store's reported state, unless what is stored was sent later.

        A stored ``sent_at`` ahead of the server's clock (an agent whose clock ran ahead and was set back)
        does not order anything: the new report replaces it.
        """
        self.db.execute(
            "INSERT INTO agent_status (store_id, state, model_name, active_version, last_scored_at, "
            "agent_version, sent_at, last_contact_at, errors, last_error, last_error_at, shadow_version, "
            "current_errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (store_id) DO UPDATE SET state = excluded.state, model_name = excluded.model_name, "
            "active_version = excluded.active_version, last_scored_at = excluded.last_scored_at, "
            "agent_version = excluded.agent_version, sent_at = excluded.sent_at, "
            "last_contact_at = excluded.last_contact_at, errors = excluded.errors, "
            "last_error = excluded.last_error, last_error_at = excluded.last_error_at, "
            "shadow_version = excluded.shadow_version, current_errors = excluded.current_errors "
            "WHERE excluded.sent_at >= agent_status.sent_at "
            "OR agent_status.sent_at > excluded.last_contact_at",
            [
                row["store_id"],
                row["state"],
                row["model_name"],
                row["active_version"],
                row["last_scored_at"],
                row["agent_version"],
                row["sent_at"],
                row["last_contact_at"],
                msgspec.json.encode(row.get("errors") or {}).decode(),
                row.get("last_error"),
                row.get("last_error_at"),
                row.get("shadow_version"),
                msgspec.json.encode(row.get("current_errors") or {}).decode(),
            ],
        )

    def reported_errors(self, store_id: str) -> tuple[datetime, dict[str, int]] | None:
        """The stored report time and error counts of the store's agent (None before its first heartbeat)."""
        row = self.db.fetch_one("SELECT sent_at, errors FROM agent_status WHERE store_id = ?", [store_id])
        if row is None:
            return None
        return row["sent_at"], _decode_counts(row["errors"])

    def insert_error_increases(
        self, store_id: str, increases: dict[str, tuple[int, int]], last_error: str | None, at: datetime
    ) -> None:
        """One row per error kind whose counter went up: ``kind -> (new errors, reported total)``."""
        for kind, (new, total) in sorted(increases.items()):
            self.db.execute(
                "INSERT INTO agent_errors VALUES (?, ?, ?, ?, ?, ?)",
                [store_id, kind, new, total, last_error, at],
            )

    def errors_since(
        self, store_ids: list[str], since: datetime, kinds: list[str]
    ) -> dict[str, dict[str, int]]:
        """``store_id -> {kind: new errors}`` reported by heartbeats received at or after ``since``."""
        if not store_ids or not kinds:
            return {}
        rows = self.db.fetch_all(
            "SELECT store_id, kind, sum(new_errors) AS n FROM agent_errors "
            "WHERE received_at >= ? AND list_contains(?, store_id) AND list_contains(?, kind) "
            "GROUP BY ALL ORDER BY ALL",
            [since, store_ids, kinds],
        )
        found: dict[str, dict[str, int]] = {}
        for row in rows:
            found.setdefault(row["store_id"], {})[row["kind"]] = int(row["n"])
        return found

    def last_errors(self, store_ids: list[str]) -> dict[str, str | None]:
        if not store_ids:
            return {}
        rows = self.db.fetch_all(
            "SELECT store_id, last_error FROM agent_status WHERE list_contains(?, store_id)", [store_ids]
        )
        return {r["store_id"]: r["last_error"] for r in rows}

    def prune_agent_errors(self, older_than: datetime) -> None:
        self.db.execute("DELETE FROM agent_errors WHERE received_at < ?", [older_than])

    def touch_agent(self, store_id: str, at: datetime) -> None:
        """Record contact without changing the reported state (a late, out-of-order report)."""
        self.db.execute(
            "UPDATE agent_status SET last_contact_at = greatest(last_contact_at, ?) WHERE store_id = ?",
            [at, store_id],
        )

    def touch_agents(self, contacts: list[tuple[str, datetime, datetime | None]]) -> None:
        """Record many stores' contacts in one statement: ``(store_id, at, sent_at or None)``.

        The contact time only moves forward; a ``sent_at`` (an unchanged heartbeat's) moves the stored one
        forward too, so an older heartbeat arriving late is still recognised as older.
        """
        if not contacts:
            return
        self.db.execute(
            "UPDATE agent_status SET last_contact_at = greatest(agent_status.last_contact_at, c.at), "
            "sent_at = CASE WHEN c.sent_at > agent_status.sent_at THEN c.sent_at "
            "ELSE agent_status.sent_at END "
            "FROM (SELECT unnest(?::VARCHAR[]) AS store_id, unnest(?::TIMESTAMP[]) AS at, "
            "unnest(?::TIMESTAMP[]) AS sent_at) AS c WHERE agent_status.store_id = c.store_id",
            [[c[0] for c in contacts], [c[1] for c in contacts], [c[2] for c in contacts]],
        )

    def fleet_gauges(self, stale_before: datetime) -> dict[str, Any]:
        by_version = self.db.fetch_all(
            "SELECT coalesce(model_name, '') AS model_name, "
            "coalesce(CAST(active_version AS VARCHAR), 'none') "
            "AS version, count(*) AS n FROM agent_status GROUP BY ALL ORDER BY ALL"
        )
        stores = self.db.scalar("SELECT count(*) FROM stores WHERE revoked_at IS NULL")
        stale = self.db.scalar(
            "SELECT count(*) FROM stores s LEFT JOIN agent_status a USING (store_id) "
            "WHERE s.revoked_at IS NULL AND (a.last_contact_at IS NULL OR a.last_contact_at < ?)",
            [stale_before],
        )
        return {"by_version": by_version, "stores": int(stores or 0), "stale": int(stale or 0)}


def _decode_counts(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    counts: dict[str, int] = msgspec.json.decode(text, type=dict[str, int])
    return counts


def _decode_reasons(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    reasons: dict[str, str] = msgspec.json.decode(text, type=dict[str, str])
    return reasons
