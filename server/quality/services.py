"""Rules of the monitoring domain: store reports once, answer grouped queries, evaluate alert rules.

After each stored report the rules of its kind are evaluated for the scope keys the report touches; one
alert stays open per rule and key (its fingerprint): a breach with no open alert fires one (log line,
webhooks), a breach with one open only refreshes it (de-duplication), a clear verdict resolves it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import anyio
import msgspec

from forecasting.common.contracts import AccuracyReport, DriftReport
from forecasting.common.logs import get_logger
from forecasting.monitoring.accuracy import Sums
from server.auth import Principal, new_id
from server.db import as_utc, utcnow
from server.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from server.quality import schemas
from server.quality.alerts import (
    SCOPE_COLUMNS,
    AlertRule,
    AlertsConfig,
    Verdict,
    fingerprint,
    judge,
    judge_learnt,
    judge_periods,
)
from server.quality.baseline import PeriodSums, Point, points
from server.quality.repository import (
    ACCURACY_GROUPS,
    DRIFT_GROUPS,
    PERIODS,
    REPLENISHMENT_GROUPS,
    Filters,
    QualityRepository,
)
from server.quality.webhooks import WebhookSender
from server.writer import GroupWriter

log = get_logger("server.quality")

MAX_ROWS_PER_REPORT = 100_000
MAX_ALERTS_LISTED = 1000


def _check_groups(group_by: Sequence[str], allowed: Sequence[str], period: str) -> list[str]:
    unknown = [g for g in group_by if g not in allowed]
    if unknown:
        raise InvalidInputError(f"cannot group by {', '.join(unknown)} (choose from {', '.join(allowed)})")
    if period not in PERIODS:
        raise InvalidInputError(f"period must be one of {', '.join(PERIODS)}")
    return list(dict.fromkeys(group_by))


def _sums(row: dict[str, Any]) -> tuple[Sums, dict[str, float | None]]:
    covered = {}
    extra: dict[str, float | None] = {}
    for level in ("80", "95"):
        hits, n_level = row.get(f"hits_{level}"), row.get(f"n_{level}")
        extra[f"coverage_{level}"] = float(hits) / float(n_level) if hits is not None and n_level else None
        if hits is not None:
            covered[level] = int(hits)
    sums = Sums(
        n=int(row["n"] or 0),
        abs_err_sum=float(row["abs_err_sum"] or 0.0),
        abs_y_sum=float(row["abs_y_sum"] or 0.0),
        err_sum=float(row["err_sum"] or 0.0),
        scaled_abs_err_sum=float(row["scaled_abs_err_sum"] or 0.0),
        scaled_n=int(row["scaled_n"] or 0),
        covered=covered,
    )
    bt = (
        float(row["bt_weighted"]) / float(row["bt_n"])
        if row.get("bt_weighted") is not None and row.get("bt_n")
        else None
    )
    extra["backtest_wape"] = bt
    wape = sums.ratios().wape
    extra["wape_ratio"] = wape / bt if wape is not None and bt else None
    return sums, extra


def accuracy_metric(row: dict[str, Any], metric: str) -> tuple[float | None, int]:
    """One accuracy metric (and the row count behind it) from pooled sums."""
    sums, extra = _sums(row)
    ratios = sums.ratios()
    values: dict[str, float | None] = {
        "wape": ratios.wape, "mae": ratios.mae, "mase": ratios.mase, "bias": ratios.bias,
        "abs_bias": abs(ratios.bias) if ratios.bias is not None else None, **extra,
    }  # fmt: skip
    return values.get(metric), sums.n


def _alert(row: dict[str, Any]) -> schemas.Alert:
    fields = {f: row[f] for f in schemas.Alert.__struct_fields__ if f in row}
    for name in ("fired_at", "updated_at", "resolved_at", "acked_at"):
        fields[name] = as_utc(fields.get(name))
    for name, column in (("details", "details"), ("scope", "scope_key")):
        text = row.get(column)
        fields[name] = msgspec.json.decode(text) if isinstance(text, str) and text else {}
    return schemas.Alert(**fields)


def _period_sums(row: dict[str, Any]) -> PeriodSums:
    return PeriodSums(
        period=str(row["period_end"]), n=int(row["n"] or 0), abs_err_sum=float(row["abs_err_sum"] or 0.0),
        abs_y_sum=float(row["abs_y_sum"] or 0.0),
        backtest_wape=None if row["bt_wape"] is None else float(row["bt_wape"]), version=row["version"],
    )  # fmt: skip


def _details(verdict: Verdict) -> str | None:
    return None if verdict.details is None else msgspec.json.encode(verdict.details).decode()


@dataclass(frozen=True)
class _Pending:
    """A report on its way into the group writer's batch."""

    kind: str
    report: AccuracyReport | DriftReport
    categories: list[str]

    @property
    def claim(self) -> tuple[str, str, str]:
        return self.kind, self.report.store_id, self.report.report_id


class QualityService:
    def __init__(
        self,
        repo: QualityRepository,
        config: AlertsConfig,
        writer: GroupWriter,
        sender: WebhookSender | None = None,
    ) -> None:
        self.repo = repo
        self.writer = writer
        self.config = config
        self.sender = sender or WebhookSender(config.webhooks, repo.record_delivery)
        self.on_firing: list[Callable[[schemas.Alert], None]] = []  # e.g. retraining's alert trigger

    # --- reports ----------------------------------------------------------------------------------

    @staticmethod
    def _check_sender(store_id: str, who: Principal) -> None:
        if who.role == "agent" and who.store_id != store_id:
            raise PermissionDeniedError(
                f"this credential belongs to store {who.store_id}; it cannot report for store {store_id}"
            )

    async def accept_accuracy(self, report: AccuracyReport, who: Principal) -> schemas.ReportAccepted:
        if report.replenishment and report.role != "served":
            raise InvalidInputError(
                f"replenishment totals come with a served report, not a {report.role} one"
            )
        if len(report.replenishment) > MAX_ROWS_PER_REPORT:
            raise InvalidInputError(f"a report holds at most {MAX_ROWS_PER_REPORT} replenishment rows")
        categories = sorted({r.category for r in report.rows})
        accepted = await self._accept(_Pending("accuracy", report, categories), who, len(report.rows))
        if not accepted.duplicate:
            log.info(
                "accuracy_report_stored", store_id=report.store_id, model_name=report.model_name,
                model_version=report.version, role=report.role, rows=len(report.rows),
                period_end=str(report.period_end), alerts_fired=accepted.alerts_fired,
                alerts_resolved=accepted.alerts_resolved,
            )  # fmt: skip
        return accepted

    async def accept_drift(self, report: DriftReport, who: Principal) -> schemas.ReportAccepted:
        categories = sorted({c.category for c in report.categories})
        accepted = await self._accept(_Pending("drift", report, categories), who, len(report.categories))
        if not accepted.duplicate:
            log.info(
                "drift_report_stored", store_id=report.store_id, model_name=report.model_name,
                model_version=report.version, role=report.role, categories=len(categories),
                drifted=sum(c.drifted for c in report.categories), period_end=str(report.period_end),
                alerts_fired=accepted.alerts_fired, alerts_resolved=accepted.alerts_resolved,
            )  # fmt: skip
        return accepted

    async def _accept(self, pending: _Pending, who: Principal, rows: int) -> schemas.ReportAccepted:
        """Store a report once and evaluate the rules on it in the same transaction, then notify.

        The writes go into the group writer's next batch (with every other report of it: ``_store``) and
        the answer waits for its commit. A reader never sees a stored report without the alerts it fires;
        notifications (log line, webhooks, hooks) leave only after the commit, so none announces an alert
        that was rolled back.
        """
        report = pending.report
        self._check_sender(report.store_id, who)
        if rows > MAX_ROWS_PER_REPORT:
            raise InvalidInputError(f"a {pending.kind} report holds at most {MAX_ROWS_PER_REPORT} rows")
        changes = await self.writer.run_grouped(self._store, pending)
        if changes is None:
            return schemas.ReportAccepted(report_id=report.report_id, duplicate=True)
        if changes:  # hooks may write (a retraining request): off the event loop
            await anyio.to_thread.run_sync(self._notify_all, changes)
        return schemas.ReportAccepted(
            report_id=report.report_id,
            rows=rows,
            alerts_fired=sum(outcome == "fired" for _, outcome in changes),
            alerts_resolved=sum(outcome == "resolved" for _, outcome in changes),
        )

    def _store(self, reports: list[_Pending]) -> list[list[tuple[dict[str, Any], str]] | None]:
        """A batch's reports (in its transaction): one claim of all their ids, their rows in one insert a
        table, then each new one's rule evaluation (over one read of the alerts they may touch); per report
        the alerts it fired or resolved, None for a duplicate."""
        now = utcnow()
        new = self.repo.claim_many([p.claim for p in reports], now)
        stored: list[_Pending | None] = []
        for p in reports:
            stored.append(
                p if p.claim in new else None
            )  # a duplicate: stored before, or earlier in this batch
            new.discard(p.claim)
        fresh = [p for p in stored if p is not None]
        self.repo.insert_accuracy([p.report for p in fresh if isinstance(p.report, AccuracyReport)], now)
        self.repo.insert_drift([p.report for p in fresh if isinstance(p.report, DriftReport)], now)
        scopes = {fingerprint(rule, key) for p in fresh for rule, key in self._scopes(p)}
        firing = self.repo.open_alerts(sorted(scopes))
        return [None if p is None else self._evaluate(p, firing) for p in stored]

    def _notify_all(self, changes: list[tuple[dict[str, Any], str]]) -> None:
        for row, outcome in changes:
            self._notify(row, outcome)

    # --- queries ----------------------------------------------------------------------------------

    def accuracy(self, filters: Filters, group_by: Sequence[str], period: str) -> list[schemas.AccuracyGroup]:
        groups = _check_groups(group_by, ACCURACY_GROUPS, period)
        out = []
        for row in self.repo.accuracy(filters, groups, period):
            if not row["n"]:
                continue
            sums, extra = _sums(row)
            ratios = sums.ratios()
            keys = {g: row[g] for g in groups}
            out.append(
                schemas.AccuracyGroup(
                    **keys,
                    reports=int(row["reports"]),
                    n=sums.n,
                    wape=ratios.wape,
                    mae=ratios.mae,
                    mase=ratios.mase,
                    bias=ratios.bias,
                    coverage_80=extra["coverage_80"],
                    coverage_95=extra["coverage_95"],
                    backtest_wape=extra["backtest_wape"],
                    wape_ratio=extra["wape_ratio"],
                )
            )
        return out

    def drift(self, filters: Filters, group_by: Sequence[str], period: str) -> list[schemas.DriftGroup]:
        groups = _check_groups(group_by, DRIFT_GROUPS, period)
        out = []
        for row in self.repo.drift(filters, groups, period):
            if not row["checks"]:
                continue
            keys = {g: row[g] for g in groups}
            out.append(
                schemas.DriftGroup(
                    **keys,
                    reports=int(row["reports"]),
                    checks=int(row["checks"]),
                    drifted=int(row["drifted"]),
                    drift_rate=int(row["drifted"]) / int(row["checks"]),
                    score_mean=row["score_mean"],
                    score_max=row["score_max"],
                    psi_mean=row["psi_mean"],
                    wasserstein_mean=row["wasserstein_mean"],
                    last_period_end=row["last_period_end"],
                )
            )
        return out

    def replenishment_stores(self, store_id: str | None = None) -> list[str]:
        """The stores with replenishment totals (or just ``store_id``, if it has any), sorted."""
        return self.repo.replenishment_stores(store_id)

    def replenishment_cells(self, store_id: str | None = None) -> dict[str, int]:
        """How many store x category cells are ``measured`` (have cycles) and ``below`` their target."""
        return self.repo.replenishment_cells(store_id)

    def replenishment(
        self,
        store_id: str | None,
        category: str | None,
        group_by: Sequence[str],
        stores: Sequence[str] | None = None,
    ) -> list[schemas.ReplenishmentGroup]:
        """Each store's newest replenishment totals pooled by ``group_by`` (of ``stores`` only, if given)."""
        groups = _check_groups(group_by, REPLENISHMENT_GROUPS, "week")
        out = []
        for row in self.repo.replenishment(store_id, category, groups, stores):
            if not row["stores"]:
                continue
            cycles = int(row["cycles"])
            achieved = int(row["cycles_met"]) / cycles if cycles else None
            target = row["cycle_target"] if cycles else row["item_target"]
            out.append(
                schemas.ReplenishmentGroup(
                    **{g: row[g] for g in groups},
                    stores=int(row["stores"]),
                    items=int(row["items"]),
                    items_to_order=int(row["items_to_order"]),
                    proposed_units=float(row["proposed_units"]),
                    order_up_to_units=float(row["order_up_to_units"]),
                    target_service_level=target,
                    cycles=cycles,
                    cycles_met=int(row["cycles_met"]),
                    achieved_service_level=achieved,
                    below_target=None if achieved is None or target is None else achieved < target,
                    last_period_end=row["last_period_end"],
                    last_reported_at=as_utc(row["last_received_at"]),
                )
            )
        return out

    # --- alerts -----------------------------------------------------------------------------------

    def _scopes(self, p: _Pending) -> list[tuple[AlertRule, dict[str, str]]]:
        """The rules a report is judged by, each with the scope keys it touches (none unless served)."""
        if p.report.role != "served":
            return []
        return [
            (rule, key)
            for rule in self.config.rules
            if rule.kind == p.kind
            for key in self._keys(rule, p.report.model_name, p.report.store_id, p.categories)
        ]

    def _evaluate(self, p: _Pending, firing: dict[str, dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """Evaluate the rules of the report's kind (inside the caller's transaction): the alerts fired or
        resolved. ``firing`` holds the open alerts of the scopes (kept current as alerts fire and resolve).

        A bug in a rule is logged and evaluates nothing, so it never turns the report into a retry loop.
        """
        changes: list[tuple[dict[str, Any], str]] = []
        try:
            for rule, key in self._scopes(p):
                verdict, worst = self._judge(rule, key)
                change = self._apply(rule, key, verdict, worst, firing)
                if change is not None:
                    changes.append(change)
        except Exception as exc:
            log.exception(
                "alert_evaluation_failed", store_id=p.report.store_id, report_kind=p.kind, reason=str(exc)
            )
            return []
        return changes

    @staticmethod
    def _keys(rule: AlertRule, model_name: str, store_id: str, categories: list[str]) -> list[dict[str, str]]:
        values = {"model_name": model_name, "store_id": store_id}
        columns = SCOPE_COLUMNS[rule.scope]
        if "category" not in columns:
            return [{c: values[c] for c in columns}]
        return [{**{c: values[c] for c in columns if c != "category"}, "category": cat} for cat in categories]

    def _judge(self, rule: AlertRule, key: dict[str, str]) -> tuple[Verdict, list[str]]:
        if rule.baseline is not None:
            depth = rule.baseline.history_periods + 2 * rule.window + rule.baseline.persistence
            periods = [_period_sums(r) for r in self.repo.accuracy_periods(key, depth)]
            return judge_learnt(rule, periods), []
        if rule.kind == "accuracy":
            row = self.repo.accuracy_window(key, rule.window)
            if row is None or row["n"] is None:
                return Verdict(state="unknown", value=None, samples=0), []
            value, samples = accuracy_metric(row, rule.metric)
            return judge(rule, value, samples), []
        return judge_periods(rule, self.repo.drift_periods(key, rule.metric, rule.window))

    def rule(self, name: str) -> AlertRule | None:
        """The configured rule of that name (None when the config no longer has it)."""
        return next((r for r in self.config.rules if r.name == name), None)

    def explain(self, alert: schemas.Alert, periods: int = 52) -> list[Point]:
        """A learnt-baseline alert's value and baseline at each of its scope's last ``periods`` periods
        (empty for other rules, or when the rule is no longer configured)."""
        rule = self.rule(alert.rule)
        if rule is None or rule.baseline is None:
            return []
        depth = periods + rule.baseline.history_periods + 2 * rule.window
        rows = self.repo.accuracy_periods(alert.scope, depth) if alert.scope else []
        found = [_period_sums(r) for r in rows]
        return points(found, rule.window, rule.baseline)[-periods:]

    def _apply(
        self,
        rule: AlertRule,
        key: dict[str, str],
        verdict: Verdict,
        worst: list[str],
        firing: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, Any], str] | None:
        """Fire, refresh or resolve the alert of ``rule`` and ``key`` (``firing``: the open alerts by
        fingerprint, updated); the fired or resolved row, if any."""
        fp = fingerprint(rule, key)
        now = utcnow()
        current = firing.get(fp)
        if verdict.state == "firing" and current is None:
            row = {
                "alert_id": new_id("alr"), "fingerprint": fp, "rule": rule.name, "metric": rule.metric,
                "severity": rule.severity, "scope_key": msgspec.json.encode(key).decode(),
                "model_name": key.get("model_name"), "store_id": key.get("store_id"),
                "category": key.get("category") or ",".join(worst) or None, "status": "firing",
                "value": verdict.value, "threshold": verdict.threshold, "samples": verdict.samples,
                "evaluations": 1, "fired_at": now, "updated_at": now, "details": _details(verdict) or "{}",
            }  # fmt: skip
            self.repo.insert_alert(row)
            firing[fp] = row
            return row, "fired"
        if verdict.state in ("firing", "holding") and current is not None:
            details = _details(verdict)
            learnt = (verdict.threshold, details) if details is not None and verdict.threshold else None
            self.repo.touch_alert(current["alert_id"], verdict.value, verdict.samples, learnt, now)
        elif verdict.state == "ok" and current is not None:
            details = _details(verdict)
            self.repo.resolve_alert(current["alert_id"], verdict.value, details, now)
            del firing[fp]
            return {**current, "status": "resolved", "value": verdict.value, "resolved_at": now,
                    "updated_at": now, "details": details or current.get("details")}, "resolved"  # fmt: skip
        return None

    def _notify(self, row: dict[str, Any], outcome: str) -> None:
        alert = _alert(row)
        event = "firing" if outcome == "fired" else "resolved"
        fields = {
            "alert_id": alert.alert_id, "rule": alert.rule, "metric": alert.metric,
            "severity": alert.severity,
            "model_name": alert.model_name, "store_id": alert.store_id, "category": alert.category,
            "value": alert.value, "threshold": alert.threshold, "samples": alert.samples,
        }  # fmt: skip
        if event == "firing":
            log.warning("alert_firing", **fields)
        else:
            log.info("alert_resolved", **fields)
        body = msgspec.json.encode(
            {"event": f"alert.{event}", "sent_at": datetime.now().astimezone(), "alert": alert}
        )
        self.sender.send(alert.alert_id, event, alert.severity, body)
        for hook in self.on_firing if event == "firing" else ():
            try:
                hook(alert)
            except Exception as exc:  # a hook's failure never undoes or repeats the alert
                log.exception("alert_hook_failed", alert_id=alert.alert_id, reason=str(exc))

    def list_alerts(
        self, *, status: str | None, store_id: str | None, severity: str | None, limit: int | None
    ) -> list[schemas.Alert]:
        if status not in (None, "firing", "resolved"):
            raise InvalidInputError("status must be firing or resolved")
        cap = min(limit or MAX_ALERTS_LISTED, MAX_ALERTS_LISTED)
        rows = self.repo.list_alerts(status=status, store_id=store_id, severity=severity, limit=cap)
        return [_alert(r) for r in rows]

    def get_alert(self, alert_id: str) -> schemas.AlertDetail:
        row = self.repo.get_alert(alert_id)
        if row is None:
            raise NotFoundError(f"no alert {alert_id!r}")
        deliveries = [
            schemas.Delivery(**{**d, "attempted_at": as_utc(d["attempted_at"])})
            for d in self.repo.deliveries(alert_id)
        ]
        return schemas.AlertDetail(alert=_alert(row), deliveries=deliveries)

    def ack(self, alert_id: str, who: Principal) -> schemas.Alert:
        if self.repo.get_alert(alert_id) is None:
            raise NotFoundError(f"no alert {alert_id!r}")
        self.repo.ack_alert(alert_id, who.actor, utcnow())
        log.info("alert_acked", alert_id=alert_id, actor=who.actor)
        return self.get_alert(alert_id).alert

    def gauges(self) -> list[dict[str, Any]]:
        """Firing alerts for the Prometheus gauge."""
        return self.repo.firing_alerts()


def parse_filters(
    *,
    model_name: str | None,
    version: int | None,
    role: str | None,
    store_id: str | None,
    category: str | None,
    since: date | None,
    until: date | None,
) -> Filters:
    return Filters(
        model_name=model_name, version=version, role=role, store_id=store_id, category=category,
        since=since, until=until,
    )  # fmt: skip
