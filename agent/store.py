"""The agent's local DuckDB store: sales history, quarantined rows, the report outbox, scoring runs and
the inventory position and policy the inventory system posts.

One process (the running agent) owns the file; every method takes the store's lock, so the API threads
and the lifecycle thread can share one connection safely.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forecasting.common.logs import get_logger

if TYPE_CHECKING:
    import duckdb
    import polars as pl

log = get_logger("agent.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sales (
    store_id VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    ds DATE NOT NULL,
    y DOUBLE NOT NULL,
    source VARCHAR,
    ingested_at TIMESTAMPTZ,
    PRIMARY KEY (store_id, item_id, ds)
);
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR NOT NULL,
    row_number BIGINT,
    reason VARCHAR NOT NULL,
    row_json VARCHAR,
    quarantined_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS ingested_files (
    sha256 VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    rows_ok BIGINT NOT NULL,
    rows_quarantined BIGINT NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS outbox_seq;
CREATE TABLE IF NOT EXISTS outbox (
    seq BIGINT PRIMARY KEY DEFAULT nextval('outbox_seq'),
    idempotency_key VARCHAR NOT NULL UNIQUE,
    kind VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    body BLOB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS scoring_runs (
    run_id VARCHAR PRIMARY KEY,
    model_name VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    trigger VARCHAR NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    n_series BIGINT NOT NULL,
    n_rows BIGINT NOT NULL,
    history_rows BIGINT NOT NULL,
    path VARCHAR NOT NULL
);
ALTER TABLE scoring_runs ADD COLUMN IF NOT EXISTS role VARCHAR;  -- served | shadow (NULL: before roles)
-- the served run's id for every run of one scoring (served and shadow): pairs their accuracy reports
ALTER TABLE scoring_runs ADD COLUMN IF NOT EXISTS scoring_id VARCHAR;
-- inventory (POST /v1/inventory): the latest position and policy per item, its open orders, and the
-- policy defaults per category; a NULL policy field of an item takes its category's default
CREATE TABLE IF NOT EXISTS inventory_items (
    item_id VARCHAR PRIMARY KEY,
    on_hand DOUBLE NOT NULL,
    backorders DOUBLE NOT NULL,
    lead_time_days INTEGER,
    review_period_days INTEGER,
    service_metric VARCHAR,
    target_service_level DOUBLE,
    pack_size DOUBLE,
    min_order DOUBLE,
    shelf_capacity DOUBLE,
    posted_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS inventory_orders (
    item_id VARCHAR NOT NULL,
    due_date DATE NOT NULL,
    quantity DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS inventory_policies (
    category VARCHAR PRIMARY KEY,
    lead_time_days INTEGER,
    review_period_days INTEGER,
    service_metric VARCHAR,
    target_service_level DOUBLE,
    pack_size DOUBLE,
    min_order DOUBLE,
    shelf_capacity DOUBLE,
    posted_at TIMESTAMPTZ NOT NULL
);
-- every position posted for an item, with its resolved policy: two successive posts bound a review
-- cycle, whose outcome measures the cycle service level achieved (kept REVIEW_HISTORY_DAYS days)
CREATE TABLE IF NOT EXISTS inventory_reviews (
    item_id VARCHAR NOT NULL,
    posted_at TIMESTAMPTZ NOT NULL,
    on_hand DOUBLE NOT NULL,
    backorders DOUBLE NOT NULL,
    service_metric VARCHAR NOT NULL,
    target_service_level DOUBLE NOT NULL
);
"""
POLICY_FIELDS = (
    "lead_time_days",
    "review_period_days",
    "service_metric",
    "target_service_level",
    "pack_size",
    "min_order",
    "shelf_capacity",
)
# Policy of an item that neither it nor its category sets (the lead time has no default).
POLICY_DEFAULTS = {
    "review_period_days": "1",
    "service_metric": "'cycle_service_level'",
    "target_service_level": "0.95",
    "pack_size": "1",
    "min_order": "0",
}
REVIEW_HISTORY_DAYS = 91
_LATEST_CATEGORY = "(SELECT item_id, arg_max(category, ds) AS category FROM sales GROUP BY item_id)"


def _resolved_items(where: str = "") -> str:
    """Each stored item's position with its resolved policy (item, else category default, else the
    defaults), optionally limited by ``where`` on ``i.item_id``."""
    resolved = ", ".join(
        f"coalesce(i.{f}, p.{f}{', ' + POLICY_DEFAULTS[f] if f in POLICY_DEFAULTS else ''}) AS {f}"
        for f in POLICY_FIELDS
    )
    return (
        f"SELECT i.item_id, i.on_hand, i.backorders, {resolved} FROM inventory_items i "  # noqa: S608 - fixed names
        f"LEFT JOIN {_LATEST_CATEGORY} c USING (item_id) "
        f"LEFT JOIN inventory_policies p ON p.category = c.category {where} ORDER BY i.item_id"
    )


@dataclass(frozen=True)
class OutboxItem:
    """One queued report."""

    seq: int
    idempotency_key: str
    kind: str
    path: str
    body: bytes
    attempts: int


class LocalStore:
    """The agent's DuckDB file."""

    def __init__(self, path: Path) -> None:
        import duckdb

        self.path = path
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection = duckdb.connect(str(path))
        self._exec("SET threads = 2")
        self._con.execute(SCHEMA).fetchall()

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def _fetch(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._exec(sql, params)

    def _exec(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Execute and drain the result (DuckDB refuses other work while a result is unfinished)."""
        return self._con.execute(sql, params or []).fetchall()

    def _exec_many(self, sql: str, rows: list[list[Any]]) -> None:
        for row in rows:
            self._exec(sql, row)

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (e.g. over ``read_parquet``)."""
        return self._fetch(sql, params)

    def query_numpy(self, sql: str, params: list[Any] | None = None) -> dict[str, Any]:
        """Columns of a read-only query as NumPy arrays."""
        with self._lock:
            return dict(self._con.execute(sql, params or []).fetchnumpy())

    # -- sales ---------------------------------------------------------------------------------------

    def append_sales(self, frame: pl.DataFrame, source: str) -> int:
        """Upsert canonical rows (a later extract corrects an earlier one for the same store/item/day)."""
        if frame.height == 0:
            return 0
        # Handed over as a Parquet file: no Arrow bridge (pyarrow) needed in the agent process.
        batch = self.path.parent / f".incoming-{uuid.uuid4().hex}.parquet"
        frame.select("store_id", "item_id", "category", "ds", "y").write_parquet(batch, compression="lz4")
        now = datetime.now(UTC)
        try:
            with self._lock:
                self._exec(
                    "INSERT OR REPLACE INTO sales SELECT store_id, item_id, category, ds, y, ?, ? "
                    "FROM read_parquet(?)",
                    [source, now, str(batch)],
                )
        finally:
            batch.unlink(missing_ok=True)
        return frame.height

    def quarantine(self, rows: Sequence[tuple[int | None, str, str | None]], source: str) -> None:
        """Keep rejected rows with the reason (row number, reason, the row as JSON)."""
        if not rows:
            return
        now = datetime.now(UTC)
        with self._lock:
            self._exec_many(
                "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                [[source, number, reason, raw, now] for number, reason, raw in rows],
            )

    def file_seen(self, sha256: str) -> bool:
        return bool(self._fetch("SELECT 1 FROM ingested_files WHERE sha256 = ?", [sha256]))

    def record_file(self, sha256: str, name: str, rows_ok: int, rows_bad: int) -> None:
        with self._lock:
            self._exec(
                "INSERT OR REPLACE INTO ingested_files VALUES (?, ?, ?, ?, ?)",
                [sha256, name, rows_ok, rows_bad, datetime.now(UTC)],
            )

    def export_history(self, out: Path) -> int:
        """Write the whole history as a canonical Parquet file (for the scoring process); returns rows."""
        with self._lock:
            (count,) = self._exec("SELECT count(*) FROM sales")[0]
            target = str(out).replace("'", "''")
            query = (
                "COPY (SELECT store_id, item_id, category, ds, y FROM sales ORDER BY store_id, item_id, ds) "
            )
            self._exec(query + f"TO '{target}' (FORMAT PARQUET)")
        return int(count)

    def sales_summary(self) -> dict[str, Any]:
        rows = self._fetch("SELECT count(*), count(DISTINCT item_id), min(ds), max(ds) FROM sales")
        (quarantined,) = self._fetch("SELECT count(*) FROM quarantine")[0]
        n, items, first, last = rows[0]
        return {
            "rows": int(n),
            "series": int(items),
            "first_ds": first.isoformat() if first else None,
            "last_ds": last.isoformat() if last else None,
            "quarantined_rows": int(quarantined),
        }

    def item_categories(self) -> dict[str, str]:
        """Every item with sales history and its latest category."""
        rows = self._fetch("SELECT item_id, arg_max(category, ds) FROM sales GROUP BY item_id")
        return {str(item): str(category) for item, category in rows}

    # -- inventory -----------------------------------------------------------------------------------

    def policy_defaults(self) -> dict[str, dict[str, Any]]:
        """The stored policy defaults per category."""
        columns = ", ".join(POLICY_FIELDS)
        rows = self._fetch(f"SELECT category, {columns} FROM inventory_policies")  # noqa: S608 - fixed names
        return {str(r[0]): dict(zip(POLICY_FIELDS, r[1:], strict=True)) for r in rows}

    def save_inventory(self, items: pl.DataFrame, orders: pl.DataFrame, policies: pl.DataFrame) -> None:
        """Replace the position, policy and open orders of the posted items, and the posted categories'
        defaults, in one transaction."""
        now = datetime.now(UTC)
        batch = self.path.parent / f".inventory-{uuid.uuid4().hex}"
        files = {name: batch.with_suffix(f".{name}.parquet") for name in ("items", "orders", "policies")}
        items.write_parquet(files["items"])
        orders.write_parquet(files["orders"])
        policies.write_parquet(files["policies"])
        item_cols = ", ".join(["item_id", "on_hand", "backorders", *POLICY_FIELDS])
        policy_cols = ", ".join(["category", *POLICY_FIELDS])
        try:
            with self._lock:
                self._exec("BEGIN TRANSACTION")
                try:
                    self._exec(
                        "DELETE FROM inventory_orders WHERE item_id IN (SELECT item_id FROM read_parquet(?))",
                        [str(files["items"])],
                    )
                    self._exec(
                        f"INSERT OR REPLACE INTO inventory_items ({item_cols}, posted_at) "  # noqa: S608 - fixed names
                        f"SELECT {item_cols}, ? FROM read_parquet(?)",
                        [now, str(files["items"])],
                    )
                    self._exec(
                        "INSERT INTO inventory_orders "
                        "SELECT item_id, due_date, quantity FROM read_parquet(?)",
                        [str(files["orders"])],
                    )
                    self._exec(
                        f"INSERT OR REPLACE INTO inventory_policies ({policy_cols}, posted_at) "  # noqa: S608 - fixed names
                        f"SELECT {policy_cols}, ? FROM read_parquet(?)",
                        [now, str(files["policies"])],
                    )
                    posted = _resolved_items("WHERE i.item_id IN (SELECT item_id FROM read_parquet(?))")
                    self._exec(
                        "INSERT INTO inventory_reviews SELECT item_id, ?, on_hand, backorders, "  # noqa: S608 - fixed names
                        f"service_metric, target_service_level FROM ({posted})",
                        [now, str(files["items"])],
                    )
                    self._exec(
                        "DELETE FROM inventory_reviews WHERE posted_at < ?",
                        [now - timedelta(days=REVIEW_HISTORY_DAYS)],
                    )
                    self._exec("COMMIT")
                except Exception:
                    self._exec("ROLLBACK")
                    raise
        finally:
            for path in files.values():
                path.unlink(missing_ok=True)

    def export_inventory(self, positions: Path, orders: Path) -> int:
        """Write each item's position with its resolved policy (item, else category default, else the
        defaults) and the open orders, as Parquet files for the scoring process; returns the items."""
        query = _resolved_items()
        with self._lock:
            (count,) = self._exec("SELECT count(*) FROM inventory_items")[0]
            for sql, out in (
                (query, positions),
                ("SELECT item_id, due_date, quantity FROM inventory_orders ORDER BY ALL", orders),
            ):
                target = str(out).replace("'", "''")
                self._exec(f"COPY ({sql}) TO '{target}' (FORMAT PARQUET)")
        return int(count)

    def review_cycles(self) -> dict[str, tuple[int, int, float]]:
        """Per category, the completed review cycles of items under a cycle-service-level target: how many,
        how many were met, and the mean target in force at their start.

        A cycle runs from one posted position of an item to the next; it is met when the later post shows
        stock on hand and no more backorders than the earlier one (demand did not exhaust the stock).
        """
        rows = self._fetch(
            "WITH r AS (SELECT item_id, on_hand, backorders, "  # noqa: S608 - fixed names
            "lag(backorders) OVER w AS start_backorders, lag(service_metric) OVER w AS metric, "
            "lag(target_service_level) OVER w AS target FROM inventory_reviews "
            "WINDOW w AS (PARTITION BY item_id ORDER BY posted_at)) "
            "SELECT c.category, count(*), "
            "count(*) FILTER (WHERE on_hand > 0 AND backorders <= start_backorders), "
            f"avg(target) FROM r JOIN {_LATEST_CATEGORY} c USING (item_id) "
            "WHERE metric = 'cycle_service_level' GROUP BY c.category ORDER BY c.category"
        )
        return {str(c): (int(n), int(met), float(target)) for c, n, met, target in rows}

    # -- outbox --------------------------------------------------------------------------------------

    def enqueue(self, kind: str, path: str, body: bytes, idempotency_key: str, *, max_rows: int) -> None:
        """Queue a report; when the outbox is full, drop the oldest heartbeats first (loudly)."""
        with self._lock:
            self._exec(
                "INSERT INTO outbox (idempotency_key, kind, path, body, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [idempotency_key, kind, path, body, datetime.now(UTC)],
            )
            (count,) = self._exec("SELECT count(*) FROM outbox")[0]
            if count > max_rows:
                self._compact(int(count) - max_rows)

    def _compact(self, excess: int) -> None:
        # Heartbeats are superseded by later ones; other reports go only when heartbeats cannot make room.
        dropped = 0
        for condition in ("kind = 'heartbeat'", "TRUE"):
            if dropped >= excess:
                break
            rows = self._exec(
                f"SELECT seq FROM outbox WHERE {condition} ORDER BY seq LIMIT ?",  # noqa: S608 - fixed conditions
                [excess - dropped],
            )
            if rows:
                self._exec_many("DELETE FROM outbox WHERE seq = ?", [[r[0]] for r in rows])
                dropped += len(rows)
        log.warning(
            "outbox_compacted",
            dropped=dropped,
            reason="outbox over its bound while the server is unreachable; oldest reports discarded",
        )

    def outbox_batch(self, limit: int = 100) -> list[OutboxItem]:
        rows = self._fetch(
            "SELECT seq, idempotency_key, kind, path, body, attempts FROM outbox ORDER BY seq LIMIT ?",
            [limit],
        )
        return [OutboxItem(int(r[0]), r[1], r[2], r[3], bytes(r[4]), int(r[5])) for r in rows]

    def outbox_done(self, seq: int) -> None:
        with self._lock:
            self._exec("DELETE FROM outbox WHERE seq = ?", [seq])

    def outbox_attempted(self, seq: int) -> None:
        with self._lock:
            self._exec("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", [seq])

    def outbox_size(self) -> int:
        return int(self._fetch("SELECT count(*) FROM outbox")[0][0])

    # -- scoring runs --------------------------------------------------------------------------------

    def record_run(self, run: dict[str, Any]) -> None:
        with self._lock:
            self._exec(
                "INSERT OR REPLACE INTO scoring_runs (run_id, model_name, version, trigger, started_at, "
                "finished_at, n_series, n_rows, history_rows, path, role, scoring_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run["run_id"],
                    run["model_name"],
                    run["version"],
                    run["trigger"],
                    run["started_at"],
                    run["finished_at"],
                    run["n_series"],
                    run["n_rows"],
                    run["history_rows"],
                    run["path"],
                    run.get("role"),
                    run.get("scoring_id"),
                ],
            )

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._fetch(
            "SELECT run_id, model_name, version, trigger, started_at, finished_at, n_series, n_rows, "
            "history_rows, path, role, scoring_id FROM scoring_runs ORDER BY started_at DESC LIMIT ?",
            [limit],
        )
        keys = [
            *("run_id", "model_name", "version", "trigger", "started_at", "finished_at"),
            *("n_series", "n_rows", "history_rows", "path", "role", "scoring_id"),
        ]
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._exec("DELETE FROM scoring_runs WHERE run_id = ?", [run_id])
