"""The inventory API on the agent's own port (Litestar): forecasts, status, probes, metrics, sales upload.

Controllers stay thin: they read the runtime's current :class:`ForecastView` or hand work to the
runtime; problem details (RFC 9457) for every error.
"""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import Parameter

from agent.errors import AgentError, IngestError, NoActiveModelError
from agent.forecasts import MEDIA_TYPES, CursorError, ForecastView, OutputFormat, negotiate, render
from agent.ingest import SalesFormat
from agent.replenishment import ProposalView
from forecasting.common.logs import get_logger
from forecasting.common.version import shelfcast_version

if TYPE_CHECKING:
    from agent.runtime import AgentRuntime

log = get_logger("agent.api")
JSON = "application/json"
# Handlers answer with ready-encoded bytes; these tell the OpenAPI schema what the bytes are.
JSON_OBJECT = ResponseSpec(
    data_container=dict[str, Any], description="A JSON object", generate_examples=False
)
AS_JSON_OBJECT = {200: JSON_OBJECT}
PROBLEM = "application/problem+json"
# Routes that change the agent (sales, scoring, rollback) declare this scope: only the operator token
# may call them. Every other /v1 route reads.
OPERATOR = {"scope": "operator"}


def problem(status: int, title: str, detail: str = "") -> Response[bytes]:
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return Response(msgspec.json.encode(body), status_code=status, media_type=PROBLEM)


def _runtime(request: Request[Any, Any, Any]) -> AgentRuntime:
    runtime: AgentRuntime = request.app.state.runtime
    return runtime


def _view_or_problem(runtime: AgentRuntime) -> ForecastView | Response[bytes]:
    view = runtime.view
    if view is None:
        return problem(
            503, "No forecasts yet", "no model version has been activated and scored on this agent"
        )
    return view


def _not_modified(request: Request[Any, Any, Any], etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    return header.strip() == "*" or etag in (tag.strip() for tag in header.split(","))


def _horizon(runtime: AgentRuntime, view: ForecastView, horizon: int | None) -> int | Response[bytes]:
    cap = runtime.config.api.max_horizon
    if horizon is None:
        return min(cap, max(1, view.pointer.n_rows // max(view.pointer.n_series, 1)))
    if horizon < 1 or horizon > cap:
        return problem(400, "Bad horizon", f"horizon must be between 1 and {cap}")
    return horizon


@get("/livez", include_in_schema=True, sync_to_thread=False, responses=AS_JSON_OBJECT)
def livez() -> Response[bytes]:
    """The process is up and answering."""
    return Response(b'{"status":"ok"}', media_type=JSON)


@get("/readyz", sync_to_thread=False, responses={200: JSON_OBJECT, 503: JSON_OBJECT})
def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Ready when a model version is active and its forecasts are scored (503 otherwise)."""
    runtime = _runtime(request)
    ready = runtime.is_ready()
    body = {"ready": ready, "state": runtime.record.state.value}
    return Response(msgspec.json.encode(body), status_code=200 if ready else 503, media_type=JSON)


@get(
    "/metrics",
    sync_to_thread=False,
    responses={
        200: ResponseSpec(
            data_container=str,
            media_type="text/plain",
            description="Prometheus text",
            generate_examples=False,
        )
    },
)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text format."""
    body = _runtime(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4")  # + charset by Litestar


@get("/status", sync_to_thread=False, responses=AS_JSON_OBJECT)
def status(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Active version, last sync, last scoring, staleness and lifecycle state."""
    runtime = _runtime(request)
    runtime.metrics.hit("status")
    return Response(msgspec.json.encode(runtime.status()), media_type=JSON)


def _prepare(
    runtime: AgentRuntime, counter: str, request: Request[Any, Any, Any], horizon: int | None, fmt: str | None
) -> tuple[ForecastView, int, OutputFormat] | Response[bytes]:
    """What both forecast routes check first: a served view, a valid horizon and an acceptable format."""
    runtime.metrics.hit(counter)
    view = _view_or_problem(runtime)
    if isinstance(view, Response):
        return view
    steps = _horizon(runtime, view, horizon)
    if isinstance(steps, Response):
        return steps
    chosen = negotiate(request.headers.get("accept"), fmt)
    if chosen is None:
        return problem(406, "Not acceptable", "formats: json, csv, parquet, arrow")
    return view, steps, chosen


@get("/forecasts/{item_id:str}", responses=AS_JSON_OBJECT)
async def forecast_item(
    request: Request[Any, Any, Any],
    item_id: str,
    horizon: int | None = None,
    fmt: Annotated[str | None, Parameter(query="format")] = None,
) -> Response[bytes]:
    """Forecasts of one item, with prediction intervals (JSON, CSV, Parquet or Arrow by ``Accept``)."""
    runtime = _runtime(request)
    prepared = _prepare(runtime, "forecast_item", request, horizon, fmt)
    if isinstance(prepared, Response):
        return prepared
    view, steps, chosen = prepared
    etag = view.etag("item", item_id, steps, chosen)
    if _not_modified(request, etag):
        return Response(b"", status_code=304, headers=view.headers(etag))
    if chosen == "json":
        body = view.item_json(item_id, steps)
    else:
        frame = view.item_frame(item_id, steps)
        body = None if frame is None else render(frame, chosen, view.meta(), None)
    if body is None:
        return problem(404, "Unknown item", f"no forecasts for item {item_id!r} in this store")
    headers = view.headers(etag)
    return Response(body, media_type=MEDIA_TYPES[chosen], headers=headers)


@get("/forecasts", sync_to_thread=True, responses=AS_JSON_OBJECT)
def forecast_list(
    request: Request[Any, Any, Any],
    item_id: Annotated[list[str] | None, Parameter(query="item_id")] = None,
    category: str | None = None,
    horizon: int | None = None,
    cursor: str | None = None,
    limit: int | None = None,
    fmt: Annotated[str | None, Parameter(query="format")] = None,
) -> Response[bytes]:
    """Forecasts filtered by item (repeatable), category and horizon; cursor pagination; any format.

    JSON and CSV pages hold at most ``[api] max_page_size`` rows (default ``default_page_size``);
    Parquet and Arrow return every matching row unless ``limit`` is given (whole-store export).
    """
    runtime = _runtime(request)
    prepared = _prepare(runtime, "forecast_list", request, horizon, fmt)
    if isinstance(prepared, Response):
        return prepared
    view, steps, chosen = prepared
    api = runtime.config.api
    if limit is not None and not 1 <= limit <= api.max_page_size:
        return problem(400, "Bad limit", f"limit must be between 1 and {api.max_page_size}")
    if limit is None and chosen in ("json", "csv"):
        limit = api.default_page_size
    items = sorted(set(item_id or []))
    query_key = msgspec.json.encode([items, category, steps, limit]).decode()
    etag = view.etag("list", query_key, cursor, chosen)
    if _not_modified(request, etag):
        return Response(b"", status_code=304, headers=view.headers(etag))
    try:
        page, next_cursor = view.select(
            item_ids=items, category=category, horizon=steps, cursor=cursor, limit=limit, query_key=query_key
        )
    except CursorError as exc:
        return problem(400, "Bad cursor", str(exc))
    body = render(page, chosen, view.meta(), next_cursor)
    headers = view.headers(etag)
    if next_cursor:
        headers["X-Next-Cursor"] = next_cursor
        headers["Link"] = f'<{_next_url(request, next_cursor)}>; rel="next"'
    return Response(body, media_type=MEDIA_TYPES[chosen], headers=headers)


def _next_url(request: Request[Any, Any, Any], cursor: str) -> str:
    """This request's path and every query parameter, with ``cursor`` set to the next page's."""
    from urllib.parse import urlencode

    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    return f"{request.url.path}?{urlencode([*params, ('cursor', cursor)])}"


SALES_TYPES: dict[str, SalesFormat] = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "application/octet-stream": "parquet",
    "application/json": "json",
}


@post("/sales", sync_to_thread=True, status_code=200, responses=AS_JSON_OBJECT, opt=OPERATOR)
def post_sales(request: Request[Any, Any, Any], body: bytes) -> Response[bytes]:
    """Append sales rows (CSV, Parquet or JSON by ``Content-Type``); bad rows are quarantined with reasons."""
    from agent.ingest import ingest_bytes

    runtime = _runtime(request)
    runtime.metrics.hit("sales")
    fmt = _upload_format(runtime, request, body, "sales")
    if isinstance(fmt, Response):
        return fmt
    assert runtime.store is not None
    source = f"api:{datetime.now(UTC):%Y%m%dT%H%M%S.%f}"
    try:
        result = ingest_bytes(
            runtime.store,
            body,
            fmt,
            source=source,
            store_id=runtime.config.agent.store_id,
            today=datetime.now().astimezone().date(),
        )
    except IngestError as exc:
        return problem(422, "Unreadable sales extract", str(exc))
    runtime.metrics.rows_ingested.inc(result.rows_ok)
    runtime.metrics.rows_quarantined.inc(result.rows_quarantined)
    if result.rows_ok:
        runtime.sales_arrived.set()  # accuracy and drift are measured by the work loop, not this request
        runtime.wake.set()
    answer = {
        "source": result.source,
        "rows_accepted": result.rows_ok,
        "rows_quarantined": result.rows_quarantined,
        "reasons": result.reasons,
    }
    return Response(msgspec.json.encode(answer), media_type=JSON)


def _upload_format(
    runtime: AgentRuntime, request: Request[Any, Any, Any], body: bytes, what: str
) -> SalesFormat | Response[bytes]:
    """The format of an upload by its ``Content-Type``, or the problem with it (type, size, store)."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    fmt = SALES_TYPES.get(ctype)
    if fmt is None:
        return problem(
            415, f"Unsupported {what} format", "send text/csv, application/vnd.apache.parquet or JSON"
        )
    if len(body) > runtime.config.api.max_upload_bytes:
        return problem(413, "Too large", f"at most {runtime.config.api.max_upload_bytes} bytes per upload")
    if runtime.store is None:
        return problem(503, "Starting", "the local store is not open yet")
    return fmt


@post("/inventory", sync_to_thread=True, status_code=200, responses=AS_JSON_OBJECT, opt=OPERATOR)
def post_inventory(request: Request[Any, Any, Any], body: bytes) -> Response[bytes]:
    """Post on-hand stock, open orders and replenishment policy per item or category (CSV, Parquet or
    JSON); bad rows are quarantined with reasons and get no proposal. Proposals follow shortly."""
    from agent.inventory import ingest_inventory

    runtime = _runtime(request)
    runtime.metrics.hit("inventory")
    fmt = _upload_format(runtime, request, body, "inventory")
    if isinstance(fmt, Response):
        return fmt
    assert runtime.store is not None
    source = f"inventory:api:{datetime.now(UTC):%Y%m%dT%H%M%S.%f}"
    try:
        result = ingest_inventory(
            runtime.store, body, fmt, source=source, max_periods=runtime.config.scoring.horizon
        )
    except IngestError as exc:
        return problem(422, "Unreadable inventory", str(exc))
    runtime.inventory_arrived.set()  # proposals are recomputed by the work loop, not this request
    runtime.wake.set()
    answer = {
        "source": result.source,
        "items_accepted": result.items,
        "categories_accepted": result.categories,
        "rows_quarantined": result.rows_quarantined,
        "reasons": result.reasons,
    }
    return Response(msgspec.json.encode(answer), media_type=JSON)


def _proposals_or_problem(
    runtime: AgentRuntime, counter: str, request: Request[Any, Any, Any], fmt: str | None
) -> tuple[ProposalView, OutputFormat] | Response[bytes]:
    runtime.metrics.hit(counter)
    view = _view_or_problem(runtime)
    if isinstance(view, Response):
        return view
    proposals = runtime.proposals or ProposalView.empty(view)
    chosen = negotiate(request.headers.get("accept"), fmt)
    if chosen is None:
        return problem(406, "Not acceptable", "formats: json, csv, parquet, arrow")
    return proposals, chosen


@get("/replenishment/{item_id:str}", responses=AS_JSON_OBJECT)
async def replenishment_item(
    request: Request[Any, Any, Any],
    item_id: str,
    fmt: Annotated[str | None, Parameter(query="format")] = None,
) -> Response[bytes]:
    """The order proposal of one item (JSON, CSV, Parquet or Arrow by ``Accept``)."""
    prepared = _proposals_or_problem(_runtime(request), "replenishment_item", request, fmt)
    if isinstance(prepared, Response):
        return prepared
    proposals, chosen = prepared
    etag = proposals.etag("item", item_id, chosen)
    if _not_modified(request, etag):
        return Response(b"", status_code=304, headers=proposals.headers(etag))
    if chosen == "json":
        body = proposals.item_json(item_id)
    else:
        row = proposals.item(item_id)
        body = None if row is None else render(row, chosen, proposals.meta(), None)
    if body is None:
        return problem(404, "No proposal", f"no proposal for item {item_id!r}: post its inventory first")
    return Response(body, media_type=MEDIA_TYPES[chosen], headers=proposals.headers(etag))


@get("/replenishment", sync_to_thread=True, responses=AS_JSON_OBJECT)
def replenishment_list(
    request: Request[Any, Any, Any],
    item_id: Annotated[list[str] | None, Parameter(query="item_id")] = None,
    category: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
    fmt: Annotated[str | None, Parameter(query="format")] = None,
) -> Response[bytes]:
    """Order proposals per item: order-up-to level, inventory position, proposed quantity, expected
    service level and stock at the end of the lead time, model version. Filters, cursor pages and
    formats as ``/v1/forecasts``."""
    runtime = _runtime(request)
    prepared = _proposals_or_problem(runtime, "replenishment_list", request, fmt)
    if isinstance(prepared, Response):
        return prepared
    proposals, chosen = prepared
    api = runtime.config.api
    if limit is not None and not 1 <= limit <= api.max_page_size:
        return problem(400, "Bad limit", f"limit must be between 1 and {api.max_page_size}")
    if limit is None and chosen in ("json", "csv"):
        limit = api.default_page_size
    items = sorted(set(item_id or []))
    query_key = msgspec.json.encode([items, category, limit]).decode()
    etag = proposals.etag("list", query_key, cursor, chosen)
    if _not_modified(request, etag):
        return Response(b"", status_code=304, headers=proposals.headers(etag))
    try:
        rows, next_cursor = proposals.select(
            item_ids=items, category=category, cursor=cursor, limit=limit, query_key=query_key
        )
    except CursorError as exc:
        return problem(400, "Bad cursor", str(exc))
    headers = proposals.headers(etag)
    if next_cursor:
        headers["X-Next-Cursor"] = next_cursor
        headers["Link"] = f'<{_next_url(request, next_cursor)}>; rel="next"'
    return Response(
        render(rows, chosen, proposals.meta(), next_cursor), media_type=MEDIA_TYPES[chosen], headers=headers
    )


@post("/score", sync_to_thread=True, status_code=200, responses=AS_JSON_OBJECT, opt=OPERATOR)
def post_score(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Score the active version now (what ``shelfcast agent score`` calls)."""
    runtime = _runtime(request)
    try:
        result = runtime.submit(runtime.score_now, timeout=runtime.config.scoring.timeout_seconds + 120)
    except NoActiveModelError as exc:
        return problem(409, "No active model", str(exc))
    except AgentError as exc:
        return problem(500, "Scoring failed", str(exc))
    return Response(msgspec.json.encode(result), media_type=JSON)


@post("/rollback", sync_to_thread=True, status_code=200, responses=AS_JSON_OBJECT, opt=OPERATOR)
def post_rollback(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Switch back to the newest kept version older than the active one (``shelfcast agent rollback``)."""
    runtime = _runtime(request)
    try:
        result = runtime.submit(runtime.rollback_now, timeout=runtime.config.scoring.timeout_seconds + 120)
    except AgentError as exc:
        return problem(409, "Rollback impossible", str(exc))
    return Response(msgspec.json.encode(result), media_type=JSON)


@post("/retry", sync_to_thread=True, status_code=200, responses=AS_JSON_OBJECT, opt=OPERATOR)
def post_retry(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Try refused bundles again at once (``shelfcast agent retry``); answers the bundles cleared."""
    runtime = _runtime(request)
    result = runtime.submit(runtime.retry_now, timeout=30)
    return Response(msgspec.json.encode(result), media_type=JSON)


def _token_guard(read_token: str, operator_token: str) -> Any:
    """``[api] token`` reads; ``[api] operator_token`` reads and calls the routes of the operator scope.

    No token or an unknown one: 401. The read token on an operator route: 403. With only a read token
    configured, operator routes are refused to everyone (set ``operator_token`` to use them over HTTP).
    """

    def matches(given: bytes, token: str) -> bool:
        return bool(token) and hmac.compare_digest(given, f"Bearer {token}".encode())

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        given = (connection.headers.get("authorization") or "").encode()
        operator = matches(given, operator_token)
        if not operator and not matches(given, read_token):
            raise NotAuthorizedException("a valid API token is required (Authorization: Bearer <token>)")
        if handler.opt.get("scope") == "operator" and not operator:
            raise PermissionDeniedException("this route needs the operator token ([api] operator_token)")

    return guard


def _problem_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, HTTPException):
        response = problem(exc.status_code, exc.detail or "Error", str(getattr(exc, "extra", "") or ""))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response
    log.error("request_failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return problem(500, "Internal error", type(exc).__name__)


def create_app(runtime: AgentRuntime) -> Litestar:
    """The agent's Litestar app over a runtime (tests and the benchmark build their own)."""
    api = runtime.config.api
    guards = [_token_guard(api.token, api.operator_token)] if api.token or api.operator_token else []
    v1 = Router(
        path="/v1",
        route_handlers=[
            status,
            forecast_item,
            forecast_list,
            post_sales,
            post_inventory,
            replenishment_item,
            replenishment_list,
            post_score,
            post_rollback,
            post_retry,
        ],
        guards=guards,
    )
    app = Litestar(
        route_handlers=[livez, readyz, metrics, v1],
        openapi_config=OpenAPIConfig(
            title="shelfcast store agent",
            version=shelfcast_version(),
            description="Forecasts for the store's inventory system, status and sales upload.",
            path="/schema",
        ),
        exception_handlers={Exception: _problem_handler},
        middleware=[runtime.metrics.middleware],
        logging_config=None,
        debug=False,
    )
    app.state.runtime = runtime
    app.state.started = time.time()
    _document_media_types(app)
    return app


def _document_media_types(app: Litestar) -> None:
    """What the handlers' ready-made bytes are, in the OpenAPI document: every format of the forecast
    routes, and the RFC 9457 problem body of every error."""
    from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema
    from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

    binary = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))
    text = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
    problem_body = OpenAPIMediaType(
        schema=Schema(
            type=OpenAPIType.OBJECT,
            required=["type", "title", "status"],
            properties={
                "type": Schema(type=OpenAPIType.STRING),
                "title": Schema(type=OpenAPIType.STRING),
                "status": Schema(type=OpenAPIType.INTEGER),
                "detail": Schema(type=OpenAPIType.STRING),
            },
        )
    )
    schema = app.openapi_schema
    for path, item in (schema.paths or {}).items():
        for operation in (item.get, item.post):
            if operation is None or operation.responses is None:
                continue
            operation.responses["default"] = OpenAPIResponse(
                description="An error, as RFC 9457 problem details", content={PROBLEM: problem_body}
            )
            ok = operation.responses.get("200")
            if (
                path.startswith(("/v1/forecasts", "/v1/replenishment"))
                and isinstance(ok, OpenAPIResponse)
                and ok.content is not None
            ):
                for fmt, media_type in MEDIA_TYPES.items():
                    if fmt != "json":
                        ok.content[media_type] = text if media_type.startswith("text/") else binary
