"""HTTP routes of monitoring: accuracy and drift reports (agents), grouped queries and alerts (readers)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import Provide
from litestar.params import Parameter

from forecasting.common.contracts import AccuracyReport, ActualsBatch, DriftReport
from server.auth import principal_of
from server.errors import ServerError
from server.quality import schemas
from server.quality.actuals import ActualsService
from server.quality.alerts import AlertsConfig
from server.quality.repository import QualityRepository
from server.quality.services import QualityService, parse_filters

READER = {"access": "reader"}
ADMIN = {"access": "admin"}
AGENT = {"access": "agent"}

_services: weakref.WeakKeyDictionary[Any, QualityService] = weakref.WeakKeyDictionary()
_actuals: weakref.WeakKeyDictionary[Any, ActualsService] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class AlertCollector:
    """``shelfcast_alerts_firing``: 1 per firing alert (labels rule, severity, metric, store, category)."""

    def __init__(self, state: Any) -> None:
        self._state = weakref.ref(state)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "shelfcast_alerts_firing",
            "Monitoring alerts currently firing",
            labels=["rule", "severity", "metric", "model_name", "store_id", "category"],
        )
        state = self._state()
        if state is not None and state.db is not None:
            for row in service_of(state).gauges():
                labels = [row["rule"], row["severity"], row["metric"], row["model_name"] or "",
                          row["store_id"] or "", row["category"] or ""]  # fmt: skip
                gauge.add_metric(labels, 1.0)
        yield gauge


def service_of(state: Any) -> QualityService:
    """The monitoring service over the server state's open database (built on first use)."""
    db = state.db
    if db is None:
        raise ServerError("the server state is not open")
    with _lock:
        service = _services.get(state)
        if service is None or service.repo.db is not db:
            alerts = getattr(state.config, "alerts", None) or AlertsConfig()
            registered = service is not None
            service = QualityService(QualityRepository(db), alerts, state.writer)
            _services[state] = service
            if not registered:
                state.metrics.registry.register(AlertCollector(state))
        return service


def actuals_of(state: Any) -> ActualsService:
    """The central actuals collection over the server state's database and folder."""
    db = state.db
    if db is None:
        raise ServerError("the server state is not open")
    with _lock:
        service = _actuals.get(state)
        if service is None or service.db is not db:
            service = ActualsService(db, state.root / "datasets" / "actuals", state.registry.register_dataset)
            _actuals[state] = service
        return service


def _service(request: Request[Any, Any, Any]) -> QualityService:
    return service_of(request.app.state.server)


Str = Annotated[str | None, Parameter(required=False)]
GroupBy = Annotated[
    list[str] | None,
    Parameter(query="group_by", required=False, description="repeatable: model_name, version, store_id, ..."),
]


@dataclass(frozen=True)
class PooledQuery:
    """What a grouped accuracy or drift query asks for: filters, grouping columns and period."""

    filters: Any
    groups: list[str]
    period: str


def pooled_query(
    group_by: GroupBy = None,
    period: Annotated[str, Parameter(query="period", required=False)] = "week",
    model_name: Annotated[str | None, Parameter(query="model", required=False)] = None,
    version: Annotated[int | None, Parameter(query="version", required=False)] = None,
    role: Annotated[str | None, Parameter(query="role", required=False)] = None,
    store_id: Annotated[str | None, Parameter(query="store", required=False)] = None,
    category: Annotated[str | None, Parameter(query="category", required=False)] = None,
    since: Annotated[date | None, Parameter(query="since", required=False)] = None,
    until: Annotated[date | None, Parameter(query="until", required=False)] = None,
) -> PooledQuery:
    """The query parameters shared by ``GET /v1/accuracy`` and ``GET /v1/drift``."""
    filters = parse_filters(model_name=model_name, version=version, role=role, store_id=store_id,
                            category=category, since=since, until=until)  # fmt: skip
    groups = group_by if group_by is not None else ["model_name", "version", "store_id", "category"]
    return PooledQuery(filters=filters, groups=groups, period=period)


class AccuracyController(Controller):
    path = "/v1/accuracy"
    dependencies = {"pooled": Provide(pooled_query, sync_to_thread=False)}  # noqa: RUF012
    tags = ["monitoring"]  # noqa: RUF012 - Litestar reads class attributes

    @post("/", opt=AGENT, status_code=202, summary="Store a live-accuracy report (idempotent)")
    async def report(self, request: Request[Any, Any, Any], data: AccuracyReport) -> schemas.ReportAccepted:
        return await _service(request).accept_accuracy(data, principal_of(request))

    @get("/", opt=READER, sync_to_thread=True, summary="Live accuracy pooled by the chosen groups")
    def query(self, request: Request[Any, Any, Any], pooled: PooledQuery) -> list[schemas.AccuracyGroup]:
        return _service(request).accuracy(pooled.filters, pooled.groups, pooled.period)


class DriftController(Controller):
    path = "/v1/drift"
    dependencies = {"pooled": Provide(pooled_query, sync_to_thread=False)}  # noqa: RUF012
    tags = ["monitoring"]  # noqa: RUF012

    @post("/", opt=AGENT, status_code=202, summary="Store a data-drift report (idempotent)")
    async def report(self, request: Request[Any, Any, Any], data: DriftReport) -> schemas.ReportAccepted:
        return await _service(request).accept_drift(data, principal_of(request))

    @get("/", opt=READER, sync_to_thread=True, summary="Drift pooled by the chosen groups")
    def query(self, request: Request[Any, Any, Any], pooled: PooledQuery) -> list[schemas.DriftGroup]:
        return _service(request).drift(pooled.filters, pooled.groups, pooled.period)


class ReplenishmentController(Controller):
    path = "/v1/replenishment"
    tags = ["monitoring"]  # noqa: RUF012

    @get(
        "/", opt=READER, sync_to_thread=True,
        summary="Order proposals and achieved vs target cycle service level per store x category",
    )  # fmt: skip
    def query(
        self,
        request: Request[Any, Any, Any],
        group_by: GroupBy = None,
        store_id: Annotated[str | None, Parameter(query="store", required=False)] = None,
        category: Annotated[str | None, Parameter(query="category", required=False)] = None,
    ) -> list[schemas.ReplenishmentGroup]:
        groups = group_by if group_by is not None else ["store_id", "category"]
        return _service(request).replenishment(store_id, category, groups)


class AlertController(Controller):
    path = "/v1/alerts"
    tags = ["monitoring"]  # noqa: RUF012

    @get("/", opt=READER, sync_to_thread=True)
    def list_alerts(
        self,
        request: Request[Any, Any, Any],
        status: Annotated[str | None, Parameter(query="status", required=False)] = None,
        store_id: Annotated[str | None, Parameter(query="store", required=False)] = None,
        severity: Annotated[str | None, Parameter(query="severity", required=False)] = None,
        limit: Annotated[int | None, Parameter(query="limit", ge=1, required=False)] = None,
    ) -> list[schemas.Alert]:
        return _service(request).list_alerts(status=status, store_id=store_id, severity=severity, limit=limit)

    @get("/{alert_id:str}", opt=READER, sync_to_thread=True)
    def show(self, request: Request[Any, Any, Any], alert_id: str) -> schemas.AlertDetail:
        return _service(request).get_alert(alert_id)

    @post("/{alert_id:str}/ack", opt=ADMIN, sync_to_thread=True, status_code=200)
    def ack(self, request: Request[Any, Any, Any], alert_id: str) -> schemas.Alert:
        return _service(request).ack(alert_id, principal_of(request))


class ActualsController(Controller):
    path = "/v1/actuals"
    tags = ["monitoring"]  # noqa: RUF012

    @post(
        "/", opt=AGENT, sync_to_thread=True, status_code=202,
        summary="Append a store's actuals to the central dataset (idempotent by batch_id)",
    )  # fmt: skip
    def append(self, request: Request[Any, Any, Any], data: ActualsBatch) -> schemas.ActualsAccepted:
        return actuals_of(request.app.state.server).accept(data, principal_of(request))


MONITORING_CONTROLLERS = [
    AccuracyController,
    DriftController,
    ReplenishmentController,
    AlertController,
    ActualsController,
]
