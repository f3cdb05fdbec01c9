"""SQL of the monitoring domain: idempotent report storage, grouped queries, alerts and deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import msgspec

from forecasting.common.contracts import AccuracyReport, DriftReport
from server.storage import SqlStore, claim_id, insert_claims

PERIODS = ("day", "week", "month", "quarter", "year")
ACCURACY_GROUPS = ("model_name", "version", "role", "store_id", "category", "horizon_bucket", "period")
REPLENISHMENT_GROUPS = ("store_id", "category")
DRIFT_GROUPS = ("model_name", "version", "role", "store_id", "category", "period")
ROWS_PER_INSERT = 500  # rows of one multi-row INSERT (a prepared statement of at most ~10,000 values)


def _test_stat(tests: Sequence[Any], name: str) -> float | None:
    for t in tests:
        if t.name == name:
            return None if t.statistic is None else float(t.statistic)
    return None


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    model_name: str | None = None
    version: int | None = None
    role: str | None = None
    store_id: str | None = None
    category: str | None = None
    since: date | None = None
    until: date | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column in ("model_name", "version", "role", "store_id", "category"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since is not None:
            clauses.append("period_end >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("period_end <= ?")
            params.append(self.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _select_groups(group_by: Sequence[str], period: str) -> tuple[str, str]:
    cols = [f"date_trunc('{period}', period_end)::DATE AS period" if g == "period" else g for g in group_by]
    names = list(group_by)
    return (", ".join(cols) + ", ") if cols else "", (" GROUP BY " + ", ".join(names)) if names else ""


class QualityRepository:
    def __init__(self, db: SqlStore) -> None:
        self.db = db

    # --- reports ----------------------------------------------------------------------------------

    def claim(self, kind: str, store_id: str, report_id: str, now: datetime) -> bool:
        """Record the report id; False when it was stored before (a duplicate delivery)."""
        return bool(self.claim_many([(kind, store_id, report_id)], now))

    def claim_many(self, reports: Sequence[tuple[str, str, str]], now: datetime) -> set[tuple[str, str, str]]:
        """Record many ``(kind, store_id, report_id)`` at once: those not stored before."""
        wanted = {f"{kind}:{claim_id(store_id, report_id)}": (kind, store_id, report_id)
                  for kind, store_id, report_id in reports}  # fmt: skip
        rows = [[claim, *report, now] for claim, report in wanted.items()]
        claimed = insert_claims(
            self.db, "monitoring_reports (claim, kind, store_id, report_id, received_at)", rows
        )
        return {wanted[c] for c in claimed}

    def insert_accuracy(self, reports: Sequence[AccuracyReport], now: datetime) -> None:
        """All rows of the reports in multi-row ``INSERT``s."""
        rows = [
            [report.report_id, report.store_id, report.model_name, report.version, report.role,
             report.period_start, report.period_end, r.category, r.horizon_bucket, r.n, r.abs_err_sum,
             r.abs_y_sum, r.err_sum, r.scaled_abs_err_sum, r.scaled_n, r.covered.get("80"),
             r.covered.get("95"), msgspec.json.encode(r.covered).decode(), r.backtest_wape, now,
             report.scoring_id]
            for report in reports
            for r in report.rows
        ]  # fmt: skip
        self._insert_rows("accuracy_rows", rows)
        latest: dict[str, list[list[Any]]] = {}  # per store, the totals of its last report carrying any
        for report in reports:
            totals = [
                [report.report_id, report.store_id, report.model_name, report.version, report.period_end,
                 t.category, t.items, t.items_to_order, t.proposed_units, t.order_up_to_units,
                 t.target_service_level, t.cycles, t.cycles_met, t.achieved_service_level, now]
                for t in report.replenishment
            ]  # fmt: skip
            if totals:
                self._insert_rows("replenishment_rows", totals)
                latest[report.store_id] = totals
        if latest:
            marks = ", ".join("?" * len(latest))
            self.db.execute(f"DELETE FROM replenishment_latest WHERE store_id IN ({marks})", list(latest))  # noqa: S608
            self._insert_rows("replenishment_latest", [row for rows in latest.values() for row in rows])

    def insert_drift(self, reports: Sequence[DriftReport], now: datetime) -> None:
        """The reports' head rows, then all their category rows, in multi-row ``INSERT``s."""
        heads = [
            [report.report_id, report.store_id, report.model_name, report.version, report.role,
             report.period_start, report.period_end]
            for report in reports
        ]  # fmt: skip
        self._insert_rows(
            "drift_reports",
            [
                [*head, r.unknown_item_share, r.missing_rate, now]
                for head, r in zip(heads, reports, strict=True)
            ],
        )
        rows = [
            [*head, c.category, c.comparison, c.drifted, c.score, _test_stat(c.tests, "psi"),
             _test_stat(c.tests, "wasserstein"), _test_stat(c.tests, "ks_pvalue"),
             _test_stat(c.tests, "zero_rate"), msgspec.json.encode(c.tests).decode()]
            for head, report in zip(heads, reports, strict=True)
            for c in report.categories
        ]  # fmt: skip
        self._insert_rows("drift_rows", rows)

    def _insert_rows(self, table: str, rows: list[list[Any]]) -> None:
        """``rows`` (all of one width) into ``table``, up to ``ROWS_PER_INSERT`` per statement."""
        if not rows:
            return
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[start : start + ROWS_PER_INSERT]
            values = ", ".join(["(" + ", ".join(["?"] * len(chunk[0])) + ")"] * len(chunk))
            self.db.execute(
                f"INSERT INTO {table} VALUES {values}",  # noqa: S608 - fixed table names, placeholders
                [value for row in chunk for value in row],
            )

    # --- queries ----------------------------------------------------------------------------------

    def accuracy(self, filters: Filters, group_by: Sequence[str], period: str) -> list[dict[str, Any]]:
        select, group = _select_groups(group_by, period)
        where, params = filters.where()
        order = (" ORDER BY " + ", ".join(group_by)) if group_by else ""
        return self.db.fetch_all(
            f"SELECT {select} count(DISTINCT report_id) AS reports, sum(n) AS n, "  # noqa: S608 - fixed names
            "sum(abs_err_sum) AS abs_err_sum, sum(abs_y_sum) AS abs_y_sum, sum(err_sum) AS err_sum, "
            "sum(scaled_abs_err_sum) AS scaled_abs_err_sum, sum(scaled_n) AS scaled_n, "
            "sum(hits_80) AS hits_80, sum(n) FILTER (WHERE hits_80 IS NOT NULL) AS n_80, "
            "sum(hits_95) AS hits_95, sum(n) FILTER (WHERE hits_95 IS NOT NULL) AS n_95, "
            "sum(backtest_wape * n) FILTER (WHERE backtest_wape IS NOT NULL) AS bt_weighted, "
            "sum(n) FILTER (WHERE backtest_wape IS NOT NULL) AS bt_n "
            f"FROM accuracy_rows{where}{group}{order}",
            params,
        )

    def replenishment_stores(self, store_id: str | None = None) -> list[str]:
        """The stores with replenishment totals (or just ``store_id``, if it has any), sorted."""
        where, params = (" WHERE store_id = ?", [store_id]) if store_id is not None else ("", [])
        rows = self.db.fetch_all(
            f"SELECT DISTINCT store_id FROM replenishment_latest{where} ORDER BY store_id",  # noqa: S608
            params,
        )
        return [str(r["store_id"]) for r in rows]

    def replenishment_cells(self, store_id: str | None = None) -> dict[str, int]:
        """How many store x category cells have an achieved service level (``measured``) and how many of
        them are below their target (``below``)."""
        where, params = (" AND store_id = ?", [store_id]) if store_id is not None else ("", [])
        row = self.db.fetch_one(
            "SELECT count(*) AS measured, "  # noqa: S608 - fixed names, placeholders
            "count(*) FILTER (WHERE cycles_met / cycles < target_service_level) AS below "
            f"FROM replenishment_latest WHERE cycles > 0{where}",
            params,
        )
        return {"measured": int(row["measured"]), "below": int(row["below"])} if row else {}

    def replenishment(
        self,
        store_id: str | None,
        category: str | None,
        group_by: Sequence[str],
        stores: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The totals of each store's newest report that carried any (by arrival; a category it no longer
        names is gone), pooled by ``group_by`` (a subset of ``store_id, category``): sums, and the service
        levels weighted by cycles (the target, without a cycle, by items)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("store_id", store_id), ("category", category)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if stores is not None:
            clauses.append("list_contains(?, store_id)")
            params.append(list(stores))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        keys = ", ".join(group_by)
        select, group = (f"{keys}, ", f" GROUP BY {keys} ORDER BY {keys}") if keys else ("", "")
        return self.db.fetch_all(
            f"SELECT {select}count(DISTINCT store_id) AS stores, sum(items) AS items, "  # noqa: S608 - fixed names
            "sum(items_to_order) AS items_to_order, sum(proposed_units) AS proposed_units, "
            "sum(order_up_to_units) AS order_up_to_units, sum(cycles) AS cycles, "
            "sum(cycles_met) AS cycles_met, "
            "sum(target_service_level * cycles) / nullif(sum(cycles), 0) AS cycle_target, "
            "sum(target_service_level * items) / nullif(sum(items) FILTER "
            "(WHERE target_service_level IS NOT NULL), 0) AS item_target, "
            "max(period_end) AS last_period_end, max(received_at) AS last_received_at "
            f"FROM replenishment_latest{where}{group}",
            params,
        )

    def drift(self, filters: Filters, group_by: Sequence[str], period: str) -> list[dict[str, Any]]:
        select, group = _select_groups(group_by, period)
        where, params = filters.where()
        order = (" ORDER BY " + ", ".join(group_by)) if group_by else ""
        return self.db.fetch_all(
            f"SELECT {select} count(DISTINCT report_id) AS reports, count(*) AS checks, "  # noqa: S608
            "count(*) FILTER (WHERE drifted) AS drifted, "
            "avg(score) AS score_mean, max(score) AS score_max, avg(psi) AS psi_mean, "
            "avg(wasserstein) AS wasserstein_mean, max(period_end) AS last_period_end "
            f"FROM drift_rows{where}{group}{order}",
            params,
        )

    def drift_periods(self, key: dict[str, str], metric: str, window: int) -> list[dict[str, float | None]]:
        """Per-period values of a drift metric for a scope key, oldest first (the last ``window`` periods).

        Each period maps category to its value (averaged over the scope's stores); report-level metrics
        (``unknown_item_share``, ``missing_rate``) map ``""``.
        """
        if metric in ("unknown_item_share", "missing_rate"):
            table, expr, category = "drift_reports", metric, "''"
        else:
            table, category = "drift_rows", "category"
            expr = {"drift": "CASE WHEN drifted THEN 1.0 ELSE 0.0 END", "level": "score"}.get(metric, metric)
        where = " AND ".join(f"{k} = ?" for k in key if not (table == "drift_reports" and k == "category"))
        params = [v for k, v in key.items() if not (table == "drift_reports" and k == "category")]
        rows = self.db.fetch_all(
            f"WITH recent AS (SELECT DISTINCT period_end FROM {table} WHERE role = 'served' AND {where} "  # noqa: S608
            "ORDER BY period_end DESC LIMIT ?) "
            f"SELECT period_end, {category} AS category, avg({expr}) AS v FROM {table} "
            f"WHERE role = 'served' AND {where} AND period_end IN (SELECT period_end FROM recent) "
            "GROUP BY ALL ORDER BY period_end",
            [*params, window, *params],
        )
        periods: dict[Any, dict[str, float | None]] = {}
        for r in rows:
            periods.setdefault(r["period_end"], {})[str(r["category"])] = (
                None if r["v"] is None else float(r["v"])
            )
        return list(periods.values())

    def accuracy_window(self, key: dict[str, str], window: int) -> dict[str, Any] | None:
        """Pooled sums of the scope key's last ``window`` report periods (served version)."""
        where = " AND ".join(f"{k} = ?" for k in key)
        return self.db.fetch_one(
            "WITH recent AS (SELECT DISTINCT period_end FROM accuracy_rows "  # noqa: S608
            f"WHERE role = 'served' AND {where} ORDER BY period_end DESC LIMIT ?) "
            "SELECT sum(n) AS n, sum(abs_err_sum) AS abs_err_sum, sum(abs_y_sum) AS abs_y_sum, "
            "sum(err_sum) AS err_sum, sum(scaled_abs_err_sum) AS scaled_abs_err_sum, "
            "sum(scaled_n) AS scaled_n, "
            "sum(hits_80) AS hits_80, sum(n) FILTER (WHERE hits_80 IS NOT NULL) AS n_80, "
            "sum(hits_95) AS hits_95, sum(n) FILTER (WHERE hits_95 IS NOT NULL) AS n_95, "
            "sum(backtest_wape * n) FILTER (WHERE backtest_wape IS NOT NULL) AS bt_weighted, "
            "sum(n) FILTER (WHERE backtest_wape IS NOT NULL) AS bt_n "
            f"FROM accuracy_rows WHERE role = 'served' AND {where} "
            "AND period_end IN (SELECT period_end FROM recent)",
            [*key.values(), window, *key.values()],
        )

    def accuracy_periods(self, key: dict[str, str], limit: int) -> list[dict[str, Any]]:
        """Pooled sums per report period of the scope key's served rows (the last ``limit``), oldest first.

        ``bt_wape`` is the rows' backtest WAPE weighted by their row counts (each row carries its own
        version's); ``version`` the newest version served in the period.
        """
        where = " AND ".join(f"{k} = ?" for k in key)
        rows = self.db.fetch_all(
            "SELECT period_end, max(version) AS version, sum(n) AS n, sum(abs_err_sum) AS abs_err_sum, "  # noqa: S608
            "sum(abs_y_sum) AS abs_y_sum, sum(backtest_wape * n) FILTER (WHERE backtest_wape IS NOT NULL) "
            "/ nullif(sum(n) FILTER (WHERE backtest_wape IS NOT NULL), 0) AS bt_wape "
            f"FROM accuracy_rows WHERE role = 'served' AND {where} "
            "GROUP BY period_end ORDER BY period_end DESC LIMIT ?",
            [*key.values(), limit],
        )
        return rows[::-1]

    # --- alerts -----------------------------------------------------------------------------------

    def open_alerts(self, fingerprints: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The firing alerts of these fingerprints (one statement), by fingerprint."""
        if not fingerprints:
            return {}
        rows = self.db.fetch_all(
            "SELECT * FROM alerts WHERE status = 'firing' AND list_contains(?, fingerprint)",
            [list(fingerprints)],
        )
        return {row["fingerprint"]: row for row in rows}

    def insert_alert(self, row: dict[str, Any]) -> None:
        cols = list(row)
        self.db.execute(
            f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",  # noqa: S608
            list(row.values()),
        )

    def touch_alert(
        self,
        alert_id: str,
        value: float | None,
        samples: int,
        learnt: tuple[float, str] | None,
        now: datetime,
    ) -> None:
        """Refresh an open alert with the newest evaluation (``learnt``: a learnt rule's threshold and
        details JSON; None keeps the stored ones)."""
        threshold, details = learnt if learnt is not None else (None, None)
        self.db.execute(
            "UPDATE alerts SET value = ?, samples = ?, evaluations = evaluations + 1, updated_at = ?, "
            "threshold = coalesce(?, threshold), details = coalesce(?, details) WHERE alert_id = ?",
            [value, samples, now, threshold, details, alert_id],
        )

    def resolve_alert(self, alert_id: str, value: float | None, details: str | None, now: datetime) -> None:
        self.db.execute(
            "UPDATE alerts SET status = 'resolved', value = ?, resolved_at = ?, updated_at = ?, "
            "details = coalesce(?, details) WHERE alert_id = ?",
            [value, now, now, details, alert_id],
        )

    def ack_alert(self, alert_id: str, who: str, now: datetime) -> None:
        self.db.execute(
            "UPDATE alerts SET acked_at = ?, acked_by = ? WHERE alert_id = ?", [now, who, alert_id]
        )

    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        return self.db.fetch_one("SELECT * FROM alerts WHERE alert_id = ?", [alert_id])

    def list_alerts(
        self, *, status: str | None, store_id: str | None, severity: str | None, limit: int
    ) -> list[dict[str, Any]]:
        clauses, params = [], []
        for column, value in (("status", status), ("store_id", store_id), ("severity", severity)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return self.db.fetch_all(
            f"SELECT * FROM alerts{where} ORDER BY fired_at DESC, alert_id LIMIT ?",  # noqa: S608
            [*params, limit],
        )

    def firing_alerts(self) -> list[dict[str, Any]]:
        return self.db.fetch_all("SELECT * FROM alerts WHERE status = 'firing' ORDER BY alert_id")

    def record_delivery(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO alert_deliveries "
            "(alert_id, event, target, attempt, status_code, ok, error, attempted_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [row["alert_id"], row["event"], row["target"], row["attempt"], row["status_code"], row["ok"],
             row["error"], row["attempted_at"]],
        )  # fmt: skip

    def deliveries(self, alert_id: str) -> list[dict[str, Any]]:
        return self.db.fetch_all(
            "SELECT * FROM alert_deliveries WHERE alert_id = ? ORDER BY delivery_id", [alert_id]
        )
