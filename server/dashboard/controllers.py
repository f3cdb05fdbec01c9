"""Routes of the admin dashboard (``/dashboard/``): server-rendered pages, sign-in, and admin action forms.

Every page is a reader route, every action an admin route (``opt`` declares both, and ``dashboard``, which
lets the auth middleware accept the session cookie). Forms posted through a session carry its CSRF token.
Pages render their Jinja template (Litestar's ``TemplateConfig`` engine) in the worker thread.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from litestar import Controller, MediaType, Request, Response, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body, Parameter, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect

from forecasting.common.logs import get_logger
from server.auth import (
    SESSION_COOKIE,
    SESSION_MAX_SECONDS,
    SIGNIN_COOKIE,
    Principal,
    SessionStore,
    check_csrf,
    cookie_value,
    principal_of,
    session_of,
)
from server.dashboard.repository import FleetFilter
from server.dashboard.services import DashboardService
from server.errors import InvalidInputError, PermissionDeniedError, ServerError, UnauthorizedError
from server.rollouts.schemas import RolloutAction

log = get_logger("server.dashboard")

STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"
READER = {"access": "reader", "dashboard": True}
ADMIN = {"access": "admin", "dashboard": True}
PUBLIC = {"access": "public", "dashboard": True}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
PageNumber = Annotated[int, QueryParameter(name="page", ge=1, le=1_000_000, required=False)]
Opt = Annotated[str | None, Parameter(required=False)]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 129600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def _when(value: datetime | date | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.isoformat()


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def _query(request_args: dict[str, Any], **changes: Any) -> str:
    """The page's query string with some parameters changed (pagination links keep the filters)."""
    merged = {k: v for k, v in {**request_args, **changes}.items() if v not in (None, "", False)}
    return "?" + urlencode({k: str(v) for k, v in merged.items()}) if merged else "?"


def template_filters(engine: JinjaTemplateEngine) -> None:
    """Formatting filters the dashboard's templates use (registered on Litestar's Jinja engine)."""
    engine.engine.filters.update(age=_age, when=_when, num=_num, pct=_pct)
    engine.engine.globals.update(query=_query)


def _state(request: Request[Any, Any, Any]) -> Any:
    return request.app.state.server


def _sessions(request: Request[Any, Any, Any]) -> SessionStore:
    sessions = _state(request).sessions
    assert isinstance(sessions, SessionStore)
    return sessions


def _service(request: Request[Any, Any, Any]) -> DashboardService:
    return DashboardService(_state(request))


def render(
    request: Request[Any, Any, Any],
    template: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    principal: Principal | None = None,
) -> Response[str]:
    """Render a page (with the signed-in principal, its CSRF token and the navigation) to an HTML response."""
    started = time.perf_counter()
    session = session_of(request)
    who = principal or request.scope.get("state", {}).get("principal")
    engine = request.app.template_engine
    assert engine is not None
    html = engine.get_template(template).render(
        principal=who,
        is_admin=isinstance(who, Principal) and who.role == "admin",
        csrf_token=session.csrf_token if session else "",
        path=request.url.path,
        args=dict(request.query_params.items()),
        **context,
    )
    log.debug(
        "dashboard_rendered", template=template, duration_seconds=round(time.perf_counter() - started, 4)
    )
    return Response(html, status_code=status_code, media_type=MediaType.HTML, headers=SECURITY_HEADERS)


def _cookie_flags(request: Request[Any, Any, Any], max_age: int | None) -> str:
    flags = "; Path=/dashboard; HttpOnly; SameSite=Strict"
    if request.url.scheme == "https":
        flags += "; Secure"
    if max_age is not None:
        flags += f"; Max-Age={max_age}"
    return flags


def sign_in_page(
    request: Request[Any, Any, Any], *, status_code: int = 200, message: str = "", next_path: str = ""
) -> Response[str]:
    """The sign-in form, with a fresh CSRF value in a short-lived cookie (double submit)."""
    import secrets

    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "sign_in.html",
        {"signin_csrf": token, "message": message, "next": _safe_next(next_path or request.url.path)},
        status_code=status_code,
        principal=None,
    )
    response.headers["Set-Cookie"] = f"{SIGNIN_COOKIE}={token}{_cookie_flags(request, 1800)}"
    return response


def _safe_next(path: str) -> str:
    """Only a path of the dashboard itself (no scheme, host or ``//``) may be the target after sign-in."""
    if not path.startswith("/dashboard/") or path.startswith("//") or "\\" in path or "://" in path:
        return "/dashboard/"
    if path.startswith(("/dashboard/sign-in", "/dashboard/sign-out", "/dashboard/static")):
        return "/dashboard/"
    return path


def dashboard_error(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    """Errors of dashboard routes as HTML: 401 shows the sign-in form, the rest an error page."""
    if isinstance(exc, ServerError):
        status, title, detail = exc.status_code, exc.title, str(exc)
    elif isinstance(exc, HTTPException):
        status, title, detail = exc.status_code, "Request refused", str(exc.detail)
    else:
        log.exception("dashboard_crashed", path=request.url.path, error_type=type(exc).__name__)
        status, title, detail = 500, "Internal server error", "the page failed to render; see the server log"
    if status == 401:
        return sign_in_page(request, status_code=401, message=detail, next_path=request.url.path)
    return render(
        request, "error.html", {"title": title, "detail": detail, "status": status}, status_code=status
    )


class SignInController(Controller):
    path = "/"
    include_in_schema = False

    @get("/sign-in", opt=PUBLIC, sync_to_thread=False)
    def sign_in_form(self, request: Request[Any, Any, Any], next_path: Opt = None) -> Response[str]:
        return sign_in_page(request, next_path=_safe_next(next_path or "/dashboard/"))

    @post("/sign-in", opt=PUBLIC, sync_to_thread=False, status_code=303)
    def sign_in(self, request: Request[Any, Any, Any], data: Form) -> Response[Any]:
        token, sent = data.get("token"), data.get("csrf_token")
        if token is None or sent is None:
            raise InvalidInputError("the sign-in form needs a token and its csrf_token")
        target = _safe_next(data.get("next", "/dashboard/"))
        try:
            check_csrf(cookie_value(request.scope, SIGNIN_COOKIE), sent)
        except PermissionDeniedError:
            message = "the sign-in form expired or did not come from this site; sign in again"
            return sign_in_page(request, status_code=403, message=message, next_path=target)
        try:
            session_id, principal, _ = _sessions(request).create(token)
        except (UnauthorizedError, PermissionDeniedError) as exc:
            log.info("dashboard_sign_in_refused", reason=str(exc))
            return sign_in_page(request, status_code=exc.status_code, message=str(exc), next_path=target)
        log.info("dashboard_signed_in", actor=principal.actor)
        response = Redirect(target, status_code=303)
        response.headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}={session_id}{_cookie_flags(request, SESSION_MAX_SECONDS)}"
        )
        return response

    @post("/sign-out", opt=READER, sync_to_thread=False, status_code=303)
    def sign_out(self, request: Request[Any, Any, Any], data: Form) -> Response[Any]:
        if session_of(request) is not None:
            check_csrf(session_of(request).csrf_token, data.get("csrf_token"))  # type: ignore[union-attr]
            _sessions(request).end(cookie_value(request.scope, SESSION_COOKIE))
        response = Redirect("/dashboard/sign-in", status_code=303)
        response.headers["Set-Cookie"] = f"{SESSION_COOKIE}={_cookie_flags(request, 0)}"
        return response

    @get("/static/dashboard.css", opt=PUBLIC, sync_to_thread=False, media_type="text/css")
    def stylesheet(self) -> Response[bytes]:
        body = (STATIC / "dashboard.css").read_bytes()
        return Response(body, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


class PagesController(Controller):
    path = "/"
    include_in_schema = False

    @get("/", opt=READER, sync_to_thread=False)
    def index(self) -> Redirect:
        return Redirect("/dashboard/fleet")

    @get("/fleet", opt=READER, sync_to_thread=True)
    def fleet(
        self,
        request: Request[Any, Any, Any],
        page: PageNumber = 1,
        model: Opt = None,
        region: Opt = None,
        version: Opt = None,
        lifecycle: Annotated[str | None, QueryParameter(name="state", required=False)] = None,
        stale: Opt = None,
        q: Opt = None,
    ) -> Response[str]:
        f = FleetFilter(
            model_name=model or None,
            region=region or None,
            version=_version(version),
            state=lifecycle or None,
            stale=stale == "1",
            search=(q or "").strip() or None,
        )
        return render(request, "fleet.html", _service(request).fleet(f, page))

    @get("/models", opt=READER, sync_to_thread=True)
    def models(self, request: Request[Any, Any, Any]) -> Response[str]:
        return render(request, "models.html", _service(request).models())

    @get("/models/{name:str}", opt=READER, sync_to_thread=True)
    def model(self, request: Request[Any, Any, Any], name: str, cursor: Opt = None) -> Response[str]:
        return render(request, "model.html", _service(request).model(name, cursor or None))

    @get("/models/{name:str}/versions/{version:int}", opt=READER, sync_to_thread=True)
    def version(self, request: Request[Any, Any, Any], name: str, version: int) -> Response[str]:
        return render(request, "version.html", _service(request).version(name, version))

    @get("/runs/compare", opt=READER, sync_to_thread=True)
    def compare(
        self, request: Request[Any, Any, Any], a: Opt = None, b: Opt = None, diff: Opt = None
    ) -> Response[str]:
        return render(request, "compare.html", _service(request).compare(a or "", b or "", diff == "1"))

    @get("/runs/{run_id:str}", opt=READER, sync_to_thread=True)
    def run(self, request: Request[Any, Any, Any], run_id: str) -> Response[str]:
        return render(request, "run.html", _service(request).run(run_id))

    @get("/rollouts", opt=READER, sync_to_thread=True)
    def rollouts(self, request: Request[Any, Any, Any], model: Opt = None) -> Response[str]:
        return render(request, "rollouts.html", _service(request).rollouts(model or None))

    @get("/rollouts/{rollout_id:str}", opt=READER, sync_to_thread=True)
    def rollout(self, request: Request[Any, Any, Any], rollout_id: str) -> Response[str]:
        return render(request, "rollout.html", _service(request).rollout(rollout_id))

    @post("/rollouts/{rollout_id:str}/{action:str}", opt=ADMIN, sync_to_thread=True, status_code=303)
    def act(self, request: Request[Any, Any, Any], rollout_id: str, action: str, data: Form) -> Redirect:
        session = session_of(request)
        if session is not None:
            check_csrf(session.csrf_token, data.get("csrf_token"))
        body = RolloutAction(reason=(data.get("reason") or "").strip()[:500])
        _state(request).rollouts.act(rollout_id, action, body, principal_of(request))
        return Redirect(f"/dashboard/rollouts/{quote(rollout_id)}", status_code=303)

    @get("/accuracy", opt=READER, sync_to_thread=True)
    def accuracy(
        self,
        request: Request[Any, Any, Any],
        model: Opt = None,
        since: Opt = None,
        category: Opt = None,
        page: PageNumber = 1,
    ) -> Response[str]:
        context = _service(request).accuracy(model or None, _date(since), page, category or None)
        return render(request, "accuracy.html", context)

    @get("/service-levels", opt=READER, sync_to_thread=True)
    def service_levels(
        self, request: Request[Any, Any, Any], store: Opt = None, page: PageNumber = 1
    ) -> Response[str]:
        context = _service(request).service_levels(page, (store or "").strip() or None)
        return render(request, "service_levels.html", context)

    @get("/alerts", opt=READER, sync_to_thread=True)
    def alerts(self, request: Request[Any, Any, Any], status: Opt = "firing") -> Response[str]:
        return render(request, "alerts.html", _service(request).alerts(status))

    @post("/alerts/{alert_id:str}/ack", opt=ADMIN, sync_to_thread=True, status_code=303)
    def ack(self, request: Request[Any, Any, Any], alert_id: str, data: Form) -> Redirect:
        session = session_of(request)
        if session is not None:
            check_csrf(session.csrf_token, data.get("csrf_token"))
        _service(request).quality.ack(alert_id, principal_of(request))
        return Redirect(f"/dashboard/alerts/{quote(alert_id)}", status_code=303)

    @get("/alerts/{alert_id:str}", opt=READER, sync_to_thread=True)
    def alert(self, request: Request[Any, Any, Any], alert_id: str, category: Opt = None) -> Response[str]:
        return render(request, "alert.html", _service(request).alert(alert_id, category or None))


def _version(value: str | None) -> str | None:
    if not value:
        return None
    if value != "none" and not value.isdigit():
        raise InvalidInputError("version must be a number or 'none'")
    return value


def _date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"since must be a date (YYYY-MM-DD), not {value!r}") from None


def dashboard_router() -> Router:
    """The ``/dashboard`` router: pages, sign-in, stylesheet; errors rendered as HTML pages."""
    return Router(
        path="/dashboard",
        route_handlers=[SignInController, PagesController],
        exception_handlers={
            ServerError: dashboard_error,
            HTTPException: dashboard_error,
            Exception: dashboard_error,
        },
        include_in_schema=False,
    )
