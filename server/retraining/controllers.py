"""HTTP routes of retraining (``/v1/retraining``) and the hooks that start and stop it with the server."""

from __future__ import annotations

import threading
import weakref
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import Parameter

from forecasting.common.logs import get_logger
from server.auth import principal_of
from server.errors import ServerError
from server.retraining import schemas
from server.retraining.repository import RetrainingRepository
from server.retraining.services import RetrainingService

log = get_logger("server.retraining")

READER = {"access": "reader"}
ADMIN = {"access": "admin"}

_services: weakref.WeakKeyDictionary[Any, RetrainingService] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def retraining_of(state: Any) -> RetrainingService:
    """The retraining service over the server state's open database (built on first use)."""
    db = state.db
    if db is None:
        raise ServerError("the server state is not open")
    with _lock:
        service = _services.get(state)
        if service is None or service.repo.db is not db:
            config = getattr(state.config, "retraining", None) or schemas.RetrainingConfig()

            def rollouts() -> Any:
                try:
                    return getattr(state, "rollouts", None)
                except ServerError:
                    return None

            service = RetrainingService(
                RetrainingRepository(db), state.registry, config, state_root=state.root,
                page_default=state.config.server.default_page_size,
                page_cap=state.config.server.max_page_size, rollouts=rollouts,
            )  # fmt: skip
            _services[state] = service
        return service


def start_retraining(state: Any) -> None:
    """Server start-up: the runner thread, the schedule, and the alert hook of the monitoring domain."""
    from server.quality.controllers import service_of

    service = retraining_of(state)
    service.start()
    hooks = service_of(state).on_firing
    if service.on_alert not in hooks:
        hooks.append(service.on_alert)


def stop_retraining(state: Any) -> None:
    """Server shutdown: stop the schedule and the runner (a running training is killed, recorded failed)."""
    service = _services.get(state)
    if service is not None:
        service.stop()


def _service(request: Request[Any, Any, Any]) -> RetrainingService:
    return retraining_of(request.app.state.server)


class RetrainingController(Controller):
    path = "/v1/retraining"
    tags = ["retraining"]  # noqa: RUF012 - Litestar reads class attributes

    @post("/runs", opt=ADMIN, sync_to_thread=True, status_code=202, summary="Start a retraining run now")
    def start(
        self, request: Request[Any, Any, Any], data: schemas.RetrainRequest | None = None
    ) -> schemas.RetrainingRun:
        return _service(request).request_now(data or schemas.RetrainRequest(), principal_of(request))

    @get("/runs", opt=READER, sync_to_thread=True)
    def list_runs(
        self,
        request: Request[Any, Any, Any],
        model_name: Annotated[str | None, Parameter(query="model", required=False)] = None,
        status: Annotated[str | None, Parameter(query="status", required=False)] = None,
        limit: Annotated[int | None, Parameter(query="limit", ge=1, required=False)] = None,
        cursor: Annotated[str | None, Parameter(query="cursor", required=False)] = None,
    ) -> schemas.RetrainingRunPage:
        return _service(request).list_runs(model_name, status, limit, cursor)

    @get("/runs/{retraining_id:str}", opt=READER, sync_to_thread=True)
    def get_run(self, request: Request[Any, Any, Any], retraining_id: str) -> schemas.RetrainingRun:
        return _service(request).get(retraining_id)

    @get("/status", opt=READER, sync_to_thread=True, summary="Schedule, alert triggers and policy")
    def status(self, request: Request[Any, Any, Any]) -> schemas.SchedulerStatus:
        return _service(request).status()


RETRAINING_CONTROLLERS = [RetrainingController]
