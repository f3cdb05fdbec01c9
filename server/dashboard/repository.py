"""Read-only SQL of the dashboard: paginated, filtered fleet listings and aggregates computed in DuckDB.

Everything here reads tables the other domains write; nothing writes. Queries return one page (or one
aggregate row per group), so a page costs the same with ten stores or a thousand.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import msgspec

from server.storage import SqlStore


@dataclass(frozen=True)
class FleetFilter:
    model_name: str | None = None
    region: str | None = None
    version: str | None = None  # a number, or "none" for stores with no active version
    state: str | None = None
    stale: bool = False
    search: str | None = None  # store id prefix


class DashboardRepository:
    def __init__(self, db: SqlStore) -> None:
        self.db = db
        self._status_columns: set[str] | None = None

    def status_columns(self) -> set[str]:
        """Columns of ``agent_status`` (error counters appear once heartbeats carry them)."""
        if self._status_columns is None:
            rows = self.db.fetch_all(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'agent_status'"
            )
            self._status_columns = {r["column_name"] for r in rows}
        return self._status_columns

    # --- fleet ------------------------------------------------------------------------------------

    def _fleet_where(self, f: FleetFilter, stale_before: datetime) -> tuple[str, list[Any]]:
        clauses: list[str] = ["s.revoked_at IS NULL"]
        params: list[Any] = []
        for column, value in (("s.model_name", f.model_name), ("s.region", f.region), ("a.state", f.state)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if f.version == "none":
            clauses.append("a.active_version IS NULL")
        elif f.version:
            clauses.append("a.active_version = ?")
            params.append(int(f.version))
        if f.stale:
            clauses.append("(a.last_contact_at IS NULL OR a.last_contact_at < ?)")
            params.append(stale_before)
        if f.search:
            clauses.append("starts_with(s.store_id, ?)")
            params.append(f.search)
        return " AND ".join(clauses), params

    def fleet_page(
        self, f: FleetFilter, stale_before: datetime, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        where, params = self._fleet_where(f, stale_before)
        extra = [c for c in ("errors", "last_error", "current_errors") if c in self.status_columns()]
        extra_sql = "".join(f", a.{c}" for c in extra)
        rows = self.db.fetch_all(
            "SELECT s.store_id, s.name, s.region, s.type, s.model_name, a.state, a.active_version, "  # noqa: S608
            "a.agent_version, a.last_contact_at, a.last_scored_at, "
            "(a.last_contact_at IS NULL OR a.last_contact_at < ?) AS stale"
            f"{extra_sql} FROM stores s LEFT JOIN agent_status a USING (store_id) WHERE {where} "
            "ORDER BY s.store_id LIMIT ? OFFSET ?",
            [stale_before, *params, limit, offset],
        )
        total = self.db.scalar(
            f"SELECT count(*) FROM stores s LEFT JOIN agent_status a USING (store_id) WHERE {where}",  # noqa: S608
            params,
        )
        for row in rows:
            row["errors"] = _error_counts(row.get("errors"))
            row["current_errors"] = _reasons(row.get("current_errors"))
        return rows, int(total or 0)

    def fleet_counts(self, stale_before: datetime) -> dict[str, Any]:
        """Stores by model and version, by lifecycle state, and how many are stale (live stores only)."""
        by_version = self.db.fetch_all(
            "SELECT s.model_name, a.active_version AS version, count(*) AS n, "
            "count(*) FILTER (WHERE a.last_contact_at IS NULL OR a.last_contact_at < ?) AS stale "
            "FROM stores s LEFT JOIN agent_status a USING (store_id) WHERE s.revoked_at IS NULL "
            "GROUP BY ALL ORDER BY s.model_name, version NULLS FIRST",
            [stale_before],
        )
        by_state = self.db.fetch_all(
            "SELECT coalesce(a.state, 'never seen') AS state, count(*) AS n "
            "FROM stores s LEFT JOIN agent_status a USING (store_id) WHERE s.revoked_at IS NULL "
            "GROUP BY ALL ORDER BY n DESC, state"
        )
        regions = self.db.fetch_all(
            "SELECT DISTINCT region FROM stores WHERE revoked_at IS NULL AND region <> '' ORDER BY region"
        )
        return {"by_version": by_version, "by_state": by_state, "regions": [r["region"] for r in regions]}

    # --- accuracy ---------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        rows = self.db.fetch_all(
            "SELECT name FROM models UNION SELECT DISTINCT model_name FROM accuracy_rows ORDER BY 1"
        )
        return [r["name"] for r in rows]

    def accuracy_stores(
        self, model_name: str, since: date | None, offset: int, limit: int
    ) -> tuple[list[str], int]:
        """A page of the stores that reported served accuracy for the model (by id), and their count."""
        where, params = _acc_where(model_name, since)
        rows = self.db.fetch_all(
            f"SELECT DISTINCT store_id FROM accuracy_rows WHERE {where} ORDER BY store_id LIMIT ? OFFSET ?",  # noqa: S608
            [*params, limit, offset],
        )
        total = self.db.scalar(f"SELECT count(DISTINCT store_id) FROM accuracy_rows WHERE {where}", params)  # noqa: S608
        return [r["store_id"] for r in rows], int(total or 0)

    def top_categories(self, model_name: str, since: date | None, limit: int) -> tuple[list[str], int]:
        """The categories with the largest actual volume (the heat map's columns), and how many there are."""
        where, params = _acc_where(model_name, since)
        rows = self.db.fetch_all(
            f"SELECT category, sum(abs_y_sum) AS volume FROM accuracy_rows WHERE {where} "  # noqa: S608
            "GROUP BY category ORDER BY volume DESC, category LIMIT ?",
            [*params, limit],
        )
        total = self.db.scalar(f"SELECT count(DISTINCT category) FROM accuracy_rows WHERE {where}", params)  # noqa: S608
        return sorted(r["category"] for r in rows), int(total or 0)

    def wape_by_store_category(
        self, model_name: str, since: date | None, stores: list[str], categories: list[str]
    ) -> list[dict[str, Any]]:
        """Pooled served WAPE per store x category, for the given stores and categories only."""
        if not stores or not categories:
            return []
        where, params = _acc_where(model_name, since)
        return self.db.fetch_all(
            f"SELECT store_id, category, sum(abs_err_sum) / nullif(sum(abs_y_sum), 0) AS wape, sum(n) AS n "  # noqa: S608
            f"FROM accuracy_rows WHERE {where} AND list_contains(?, store_id) AND list_contains(?, category) "
            "GROUP BY ALL",
            [*params, stores, categories],
        )

    # --- drift ------------------------------------------------------------------------------------

    def latest_drift(self, store_id: str, model_name: str | None, reports: int = 1) -> list[dict[str, Any]]:
        """The categories of the store's newest ``reports`` served drift reports (newest report first, then
        drifted first)."""
        clauses, params = ["store_id = ?", "role = 'served'"], [store_id]
        if model_name:
            clauses.append("model_name = ?")
            params.append(model_name)
        where = " AND ".join(clauses)
        return self.db.fetch_all(
            f"SELECT category, comparison, drifted, score, period_start, period_end, tests FROM drift_rows "  # noqa: S608
            f"WHERE {where} AND period_end IN (SELECT DISTINCT period_end FROM drift_rows WHERE {where} "
            "ORDER BY period_end DESC LIMIT ?) "
            "ORDER BY period_end DESC, drifted DESC, score DESC NULLS LAST, category",
            [*params, *params, reports],
        )

    def actual_values(self, root: Path, store_id: str, category: str, first: date, last: date) -> list[float]:
        """Daily sales values of one store's category between two dates, from the central actuals files."""
        folder = root / f"store_id={store_id}"
        if not folder.is_dir() or not any(folder.glob("ds=*/*.parquet")):
            return []
        pattern = str(folder / "ds=*" / "*.parquet").replace("'", "''")
        rows = self.db.fetch_all(
            f"SELECT y FROM read_parquet('{pattern}', hive_partitioning = false, union_by_name = true) "  # noqa: S608
            "WHERE category = ? AND CAST(ds AS DATE) BETWEEN ? AND ?",
            [category, first, last],
        )
        return [float(r["y"]) for r in rows if r["y"] is not None]


def _acc_where(model_name: str, since: date | None) -> tuple[str, list[Any]]:
    clauses = ["model_name = ?", "role = 'served'"]
    params: list[Any] = [model_name]
    if since is not None:
        clauses.append("period_end >= ?")
        params.append(since)
    return " AND ".join(clauses), params


def _error_counts(value: Any) -> dict[str, int]:
    """Heartbeat error counters as stored (JSON text or a map), as a plain dict."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = msgspec.json.decode(value)
        except msgspec.DecodeError:
            return {}
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items() if isinstance(v, int | float)}
    return {}


def _reasons(value: Any) -> dict[str, str]:
    """The standing errors as stored (JSON text), as a plain dict (empty when unreadable)."""
    if not isinstance(value, str) or not value:
        return {}
    try:
        decoded = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return {}
    return {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}
