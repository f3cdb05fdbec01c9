"""Wire types of the monitoring API (answers, alerts, deliveries); reports: forecasting.common.contracts."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import msgspec


class ReportAccepted(msgspec.Struct, kw_only=True):
    """Answer to a report POST: stored, or recognised as a duplicate (already counted)."""

    report_id: str
    accepted: bool = True
    duplicate: bool = False
    rows: int = 0
    alerts_fired: int = 0
    alerts_resolved: int = 0


class AccuracyGroup(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Live accuracy pooled over one group (the group's keys are those asked for in ``group_by``)."""

    model_name: str | None = None
    version: int | None = None
    role: str | None = None
    store_id: str | None = None
    category: str | None = None
    horizon_bucket: str | None = None
    period: date | None = None
    reports: int
    n: int
    wape: float | None = None
    mae: float | None = None
    mase: float | None = None
    bias: float | None = None
    coverage_80: float | None = None
    coverage_95: float | None = None
    backtest_wape: float | None = None
    wape_ratio: float | None = None


class DriftGroup(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Drift pooled over one group: reports, category checks, how many flagged drift, scores, statistics."""

    model_name: str | None = None
    version: int | None = None
    role: str | None = None
    store_id: str | None = None
    category: str | None = None
    period: date | None = None
    reports: int
    checks: int
    drifted: int
    drift_rate: float
    score_mean: float | None = None
    score_max: float | None = None
    psi_mean: float | None = None
    wasserstein_mean: float | None = None
    last_period_end: date | None = None


class ReplenishmentGroup(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Order proposals and the cycle service level achieved, from each store's newest report with them,
    pooled over one group (``store_id`` and/or ``category``, as asked in ``group_by``).

    ``achieved_service_level`` is ``cycles_met / cycles``; ``target_service_level`` the targets weighted
    by cycles (by items where no cycle completed); ``below_target`` compares the two.
    """

    store_id: str | None = None
    category: str | None = None
    stores: int
    items: int
    items_to_order: int
    proposed_units: float
    order_up_to_units: float
    target_service_level: float | None = None
    cycles: int
    cycles_met: int
    achieved_service_level: float | None = None
    below_target: bool | None = None
    last_period_end: date | None = None
    last_reported_at: datetime | None = None


class Alert(msgspec.Struct, kw_only=True):
    """An alert; ``details`` holds a learnt-baseline rule's numbers at its newest evaluation: live and
    backtest WAPE, the ratio, its learnt baseline and upper bound, history, periods beyond, persistence."""

    alert_id: str
    rule: str
    metric: str
    severity: str
    status: str
    model_name: str | None = None
    store_id: str | None = None
    category: str | None = None
    value: float | None = None
    threshold: float
    samples: int = 0
    evaluations: int = 1
    fired_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None
    acked_at: datetime | None = None
    acked_by: str | None = None
    scope: dict[str, str] = msgspec.field(default_factory=dict)  # the scope key the rule judged
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class Delivery(msgspec.Struct, kw_only=True):
    delivery_id: int
    alert_id: str
    event: str
    target: str
    attempt: int
    status_code: int | None = None
    ok: bool
    error: str = ""
    attempted_at: datetime


class AlertDetail(msgspec.Struct, kw_only=True):
    alert: Alert
    deliveries: list[Delivery] = msgspec.field(default_factory=list)


class AlertAck(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    comment: str = ""


class ActualsAccepted(msgspec.Struct, kw_only=True):
    """Answer to ``POST /v1/actuals``: the dataset version the batch produced (or already belongs to)."""

    batch_id: str
    dataset_id: str
    rows: int = 0
    duplicate: bool = False
