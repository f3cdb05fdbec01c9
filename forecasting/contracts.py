"""What crosses the wire between the server and the agents, defined once and used by both sides."""

from __future__ import annotations

from datetime import date, datetime

import msgspec


class Assignment(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Which model version a store must run (``GET /v1/stores/{store_id}/assignment``)."""

    store_id: str
    model_name: str
    version: int
    bundle_sha256: str
    bundle_size: int
    shadow_version: int | None = None
    shadow_bundle_sha256: str | None = None
    shadow_bundle_size: int | None = None
    rollout_id: str | None = None


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An agent's periodic report of where it stands."""

    store_id: str
    state: str
    model_name: str | None = None
    active_version: int | None = None
    last_scored_at: datetime | None = None
    agent_version: str = ""
    sent_at: datetime
    # Errors counted by the agent since its state folder was created, by kind (``sync``, ``download``,
    # ``verify``, ``health_check``, ``activation``, ``scoring``, ``shadow``, ``report``, ``ingest``,
    # ``monitoring``): cumulative, so a lost heartbeat loses nothing. ``last_error`` is
    # ``"<kind>: <reason>"`` of the newest one (a refused update names what was wrong with it).
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    last_error: str | None = None
    last_error_at: datetime | None = None
    shadow_version: int | None = None
    # The errors that still stand, by kind: the newest reason of each kind whose work has not succeeded
    # since (a refused bundle still assigned, a failing scoring ...). Resolved kinds leave the map.
    current_errors: dict[str, str] = msgspec.field(default_factory=dict)


class ModelVersionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A registered, immutable model version as the registry describes it."""

    model_name: str
    version: int
    bundle_sha256: str
    bundle_size: int
    created_at: datetime
    run_id: str | None = None


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details, the body of every error response."""

    title: str
    status: int
    detail: str = ""
    type: str = "about:blank"


class AccuracyRow(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Live accuracy of one model version on one category and horizon bucket over a period.

    The sums (``n``, ``abs_err_sum``, ...) let the server pool rows across stores and periods exactly;
    the ratios are those of this row alone. ``backtest_wape`` is the bundle's recorded backtest WAPE of
    the category (model drift compares the two).
    """

    category: str
    horizon_bucket: str
    n: int
    abs_err_sum: float
    abs_y_sum: float
    err_sum: float
    scaled_abs_err_sum: float = 0.0
    scaled_n: int = 0
    covered: dict[str, int] = msgspec.field(default_factory=dict)
    wape: float | None = None
    mae: float | None = None
    mase: float | None = None
    bias: float | None = None
    coverage: dict[str, float] = msgspec.field(default_factory=dict)
    backtest_wape: float | None = None


class AccuracyReport(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A store's live accuracy per category x horizon bucket for one model version (``POST /v1/accuracy``)."""

    report_id: str
    store_id: str
    model_name: str
    version: int
    role: str = "served"
    period_start: date
    period_end: date
    created_at: datetime
    rows: list[AccuracyRow] = msgspec.field(default_factory=list)


class DriftTest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One named drift test: its statistic, the threshold it was held against and the verdict.

    ``verdict`` is ``ok``, ``drift`` or ``insufficient`` (too few observations to judge).
    """

    name: str
    statistic: float | None
    threshold: float
    verdict: str
    n_current: int = 0
    n_reference: int = 0


class CategoryDrift(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Drift of one category's recent sales against its reference (``seasonal`` or the bundle's)."""

    category: str
    comparison: str
    drifted: bool
    score: float | None = None
    tests: list[DriftTest] = msgspec.field(default_factory=list)


class DriftReport(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Data drift of a store's recent sales for one model version's reference (``POST /v1/drift``)."""

    report_id: str
    store_id: str
    model_name: str
    version: int
    role: str = "served"
    period_start: date
    period_end: date
    created_at: datetime
    unknown_item_share: float = 0.0
    missing_rate: float = 0.0
    categories: list[CategoryDrift] = msgspec.field(default_factory=list)


class ActualRow(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One observed sales value."""

    item_id: str
    category: str
    ds: date
    y: float


class ActualsBatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A batch of a store's actuals for central data collection (idempotent by ``batch_id``)."""

    batch_id: str
    store_id: str
    created_at: datetime
    rows: list[ActualRow] = msgspec.field(default_factory=list)
