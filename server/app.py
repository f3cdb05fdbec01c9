"""``create_app(config)``: the central server's Litestar app. Nothing happens at import time.

The app owns one :class:`ServerState` (DuckDB connection, blob store, services); it is opened at start
(or before, by ``shelfcast server run``, so a locked database fails with a clear message) and closed
at shutdown.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

from forecasting.common.contracts import Problem
from forecasting.common.logs import get_logger
from forecasting.common.private import private_dir
from server.auth import SessionStore, TokenIndex, make_auth_middleware
from server.blobs import BlobStore
from server.config import ServerConfig
from server.dashboard.controllers import TEMPLATES, dashboard_router, template_filters
from server.db import DB_FILE_NAME, Database
from server.errors import InvalidInputError, OverloadedError, ServerError
from server.fleet.contacts import ContactBook
from server.fleet.controllers import (
    CredentialController,
    EnrollController,
    GroupController,
    HeartbeatController,
    StoreController,
)
from server.fleet.repository import FleetRepository
from server.fleet.services import FleetService
from server.monitoring import Metrics
from server.quality.controllers import MONITORING_CONTROLLERS
from server.registry.controllers import (
    BundleController,
    DatasetController,
    KeyController,
    ModelController,
    RunController,
)
from server.registry.repository import RegistryRepository
from server.registry.services import RegistryService
from server.retraining.controllers import RETRAINING_CONTROLLERS, start_retraining, stop_retraining
from server.rollouts.controllers import RolloutController
from server.rollouts.engine import RolloutEngine
from server.rollouts.repository import RolloutRepository
from server.rollouts.services import RolloutService
from server.system import AdminController, SystemController
from server.writer import GroupWriter

log = get_logger("server.app")


class ServerState:
    """Everything the running server holds: the database, the blobs and the services over them."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.root = config.state_path
        self.tokens = TokenIndex(config.server.admin_token)
        self.sessions = SessionStore(self.tokens)  # dashboard sign-ins (in memory)
        self.db: Database | None = None
        self.writer: GroupWriter | None = None
        self._fleet: FleetService | None = None
        self._registry: RegistryService | None = None
        self._rollouts: RolloutService | None = None
        self.engine: RolloutEngine | None = None
        self.metrics = Metrics(self._fleet_gauges)

    def _fleet_gauges(self) -> dict[str, Any]:
        gauges = self.fleet.gauges()
        writer = self.writer
        if writer is not None:
            gauges["writes"] = {"batches": writer.batches, "jobs": writer.jobs, "queued": writer.queued}
        return gauges

    @property
    def fleet(self) -> FleetService:
        if self._fleet is None:
            raise ServerError("the server state is not open")
        return self._fleet

    @property
    def registry(self) -> RegistryService:
        if self._registry is None:
            raise ServerError("the server state is not open")
        return self._registry

    @property
    def rollouts(self) -> RolloutService:
        if self._rollouts is None:
            raise ServerError("the server state is not open")
        return self._rollouts

    def open(self) -> None:
        """Open the database (migrating it), the blob store and the services; idempotent."""
        if self.db is not None:
            return
        server = self.config.server
        private_dir(self.root)
        db = Database.open(self.root / DB_FILE_NAME)
        blobs = BlobStore(self.root / "blobs", self.root / "tmp")
        for stale in blobs.tmp_dir.glob("upload-*.part"):
            stale.unlink(missing_ok=True)
        registry_repo = RegistryRepository(db)
        fleet_repo = FleetRepository(db)
        contacts = ContactBook(fleet_repo)
        writes = self.config.writes
        writer = GroupWriter(
            db,
            max_batch=writes.max_batch,
            max_wait_seconds=writes.max_wait_ms / 1000,
            max_queue=writes.max_queue,
            retry_after_seconds=writes.retry_after_seconds,
            flush_every_seconds=writes.contact_flush_seconds,
            flush=contacts,
        )
        fleet = FleetService(
            fleet_repo,
            registry_repo,
            self.tokens,
            writer,
            contacts,
            enrollment_ttl_seconds=server.enrollment_ttl_seconds,
            stale_after_seconds=server.stale_after_seconds,
            page_default=server.default_page_size,
            page_cap=server.max_page_size,
        )
        self._registry = RegistryService(
            registry_repo,
            blobs,
            trusted_keys=server.trusted_keys,
            keys_dir=self.root / "keys",
            max_bundle_bytes=server.max_request_body_bytes,
            page_default=server.default_page_size,
            page_cap=server.max_page_size,
            on_change=fleet.invalidate_assignments,
        )
        rollout_repo = RolloutRepository(db)
        self._rollouts = RolloutService(
            rollout_repo,
            self._registry,
            on_change=fleet.invalidate_assignments,
            page_default=server.default_page_size,
            page_cap=server.max_page_size,
        )
        fleet.rollout_override = self._rollouts.override
        self.engine = RolloutEngine(
            self._rollouts,
            rollout_repo,
            interval_seconds=self.config.rollouts.engine_interval_seconds,
            lease_seconds=self.config.rollouts.lease_seconds,
        )
        self._fleet = fleet
        self.writer = writer
        self.db = db
        fleet.load_tokens()
        fleet.prune()
        writer.start()

    async def start_engine(self) -> None:
        """Start the rollout engine's task (the state is open by now)."""
        if self.engine is not None:
            self.engine.start()

    async def stop_engine(self) -> None:
        if self.engine is not None:
            await self.engine.stop()

    def close(self) -> None:
        """Commit what the writer holds, checkpoint and close the database."""
        if self.writer is not None:
            self.writer.stop()
            self.writer = None
        if self.db is not None:
            self.db.checkpoint()
            self.db.close()
            self.db = None
            self._fleet = None
            self._registry = None
            self._rollouts = None
            self.engine = None


def problem(status: int, title: str, detail: str) -> Response[bytes]:
    body = msgspec.json.encode(Problem(title=title, status=status, detail=detail))
    return Response(body, status_code=status, media_type="application/problem+json")


def server_error_handler(_: Request[Any, Any, Any], exc: ServerError) -> Response[bytes]:
    if exc.status_code >= 500:
        log.error("request_failed", error=str(exc), error_type=type(exc).__name__)
    response = problem(exc.status_code, exc.title, str(exc))
    if isinstance(exc, OverloadedError):
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
    return response


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Problem details for Litestar's own refusals.

    A body that is not JSON at all stays 400; JSON (or a query or path value) that does not fit the
    route's schema (a wrong type, an unknown field, an integer out of range) is 422, naming the field.
    """
    detail = exc.detail
    status = exc.status_code
    if isinstance(exc, ValidationException):
        status = InvalidInputError.status_code
        if isinstance(exc.extra, list):
            reasons = "; ".join(
                f"{e.get('key') or e.get('source', 'body')}: {e.get('message')}"
                if isinstance(e, dict)
                else str(e)
                for e in exc.extra
            )
            detail = f"{detail}: {reasons}" if reasons else detail
    title = {
        400: "Bad request",
        404: "Not found",
        405: "Method not allowed",
        413: "Payload too large",
        422: InvalidInputError.title,
    }.get(status, "HTTP error")
    response = problem(status, title, detail)
    response.headers.update(exc.headers or {})  # e.g. Allow on a 405
    return response


def unexpected_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("request_crashed", path=request.url.path, error_type=type(exc).__name__)
    return problem(500, "Internal server error", "the server failed to handle this request; see its log")


def create_app(config: ServerConfig, state: ServerState | None = None) -> Litestar:
    """Build the server's app for ``config`` (opening its state at start-up if not opened already)."""
    state = state or ServerState(config)

    def registry_provider() -> RegistryService:
        return state.registry

    def fleet_provider() -> FleetService:
        return state.fleet

    def rollouts_provider() -> RolloutService:
        return state.rollouts

    api = Router(
        path="/",
        route_handlers=[
            ModelController,
            BundleController,
            RunController,
            DatasetController,
            KeyController,
            StoreController,
            GroupController,
            EnrollController,
            HeartbeatController,
            CredentialController,
            AdminController,
            RolloutController,
            *MONITORING_CONTROLLERS,
            *RETRAINING_CONTROLLERS,
        ],
        request_max_body_size=config.server.max_json_body_bytes,
    )
    openapi = OpenAPIConfig(
        title="shelfcast server",
        version="1",
        description="Central registry, fleet and assignments for shelfcast store agents.",
        path="/schema",
        render_plugins=[SwaggerRenderPlugin()],
        openapi_router=Router(path="/schema", route_handlers=[], opt={"access": "public"}),
        components=Components(
            security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")},
        ),
        security=[{"bearer": []}],
    )
    app = Litestar(
        route_handlers=[api, SystemController, dashboard_router()],
        dependencies={
            "registry": Provide(registry_provider, sync_to_thread=False),
            "fleet": Provide(fleet_provider, sync_to_thread=False),
            "rollouts": Provide(rollouts_provider, sync_to_thread=False),
        },
        exception_handlers={
            ServerError: server_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        middleware=[state.metrics.middleware, make_auth_middleware(state.tokens, state.sessions)],
        openapi_config=openapi,
        template_config=TemplateConfig(
            directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=template_filters
        ),
        on_startup=[state.open, state.start_engine],
        on_shutdown=[state.stop_engine, state.close],
        request_max_body_size=config.server.max_json_body_bytes,
        debug=False,
    )
    app.state.server = state
    app.on_startup.append(lambda: start_retraining(state))  # after the state is open
    app.on_shutdown.insert(0, lambda: stop_retraining(state))  # before it closes
    return app


def state_of(app: Litestar) -> ServerState:
    state = app.state.server
    assert isinstance(state, ServerState)
    return state
