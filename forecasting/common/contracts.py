"""What crosses the wire between the server and the agents, defined once and used by both sides."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

import msgspec

# Bounded integers: every integer that crosses the wire is checked at decoding, so a value the
# database cannot hold is a 4xx naming the field, never a failed write. Version numbers and error
# counters are stored as 32-bit INTEGER columns; counts and byte sizes stay within JSON's exact
# integer range (2**53 - 1), so sums over many reports still fit a 64-bit column.
INT32_MAX = 2**31 - 1
JSON_INT_MAX = 2**53 - 1
Version = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX, description="a model version number")]
Count = Annotated[int, msgspec.Meta(ge=0, le=JSON_INT_MAX)]
ByteSize = Annotated[int, msgspec.Meta(ge=0, le=JSON_INT_MAX, description="a size in bytes")]
ErrorCount = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Units = Annotated[float, msgspec.Meta(ge=0.0, le=1e15)]
ScoringId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Assignment(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Which model version a store must run (``GET /v1/stores/{store_id}/assignment``)."""

    store_id: str
    model_name: str
    version: Version
    bundle_sha256: str
    bundle_size: ByteSize
    shadow_version: Version | None = None
    shadow_bundle_sha256: str | None = None
    shadow_bundle_size: ByteSize | None = None
    rollout_id: str | None = None


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An agent's periodic report of where it stands."""

    store_id: str
    state: str
    model_name: str | None = None
    active_version: Version | None = None
    last_scored_at: datetime | None = None
    agent_version: str = ""
    sent_at: datetime
    # Errors counted by the agent since its state folder was created, by kind (``sync``, ``download``,
    # ``verify``, ``health_check``, ``activation``, ``scoring``, ``shadow``, ``report``, ``ingest``,
    # ``monitoring``, ``state``): cumulative, so a lost heartbeat loses nothing. ``last_error`` is
    # ``"<kind>: <reason>"`` of the newest one (a refused update names what was wrong with it).
    errors: dict[str, ErrorCount] = msgspec.field(default_factory=dict)
    last_error: str | None = None
    last_error_at: datetime | None = None
    shadow_version: Version | None = None
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
    n: Count
    abs_err_sum: float
    abs_y_sum: float
    err_sum: float
    scaled_abs_err_sum: float = 0.0
    scaled_n: Count = 0
    covered: dict[str, Count] = msgspec.field(default_factory=dict)
    wape: float | None = None
    mae: float | None = None
    mase: float | None = None
    bias: float | None = None
    coverage: dict[str, float] = msgspec.field(default_factory=dict)
    backtest_wape: float | None = None


class ReplenishmentTotals(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A store's order proposals of one category, and the cycle service level it achieved.

    ``items``: items with a proposal (a posted position and a forecast); ``items_to_order`` those whose
    proposed quantity is above 0; ``proposed_units`` and ``order_up_to_units`` the sums over the items.
    ``cycles`` are the completed review cycles of items under a cycle-service-level target (the span
    between two successive positions posted for an item), ``cycles_met`` those that ended with stock on
    hand and no more backorders than they began with; ``achieved_service_level`` is their ratio (None
    without a completed cycle) and ``target_service_level`` the mean target in force at the start of those
    cycles (without one: the mean target of the category's proposals). See docs/replenishment.md.
    """

    category: str
    items: Count = 0
    items_to_order: Count = 0
    proposed_units: Units = 0.0
    order_up_to_units: Units = 0.0
    target_service_level: Share | None = None
    cycles: Count = 0
    cycles_met: Count = 0
    achieved_service_level: Share | None = None


class AccuracyReport(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A store's live accuracy per category x horizon bucket for one model version (``POST /v1/accuracy``).

    ``scoring_id`` is shared by the reports of the runs one scoring made (the served version and the shadow
    scored on the very same history): the server pairs the two versions' errors on it, series for series.
    """

    report_id: str
    store_id: str
    model_name: str
    version: Version
    role: str = "served"
    scoring_id: ScoringId | None = None
    period_start: date
    period_end: date
    created_at: datetime
    rows: list[AccuracyRow] = msgspec.field(default_factory=list)
    # per category, the store's proposals and achieved service level when the report was made (served
    # reports only; absent from agents older than replenishment, and then empty)
    replenishment: list[ReplenishmentTotals] = msgspec.field(default_factory=list)


class DriftTest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One named drift test: its statistic, the threshold it was held against and the verdict.

    ``verdict`` is ``ok``, ``drift`` or ``insufficient`` (too few observations to judge).
    """

    name: str
    statistic: float | None
    threshold: float
    verdict: str
    n_current: Count = 0
    n_reference: Count = 0


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
    version: Version
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
