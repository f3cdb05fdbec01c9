"""Credentials: bearer tokens stored as sha256 hashes, roles ``admin``/``reader``/``agent`` (store-scoped).

Every route declares its access policy in ``opt={"access": ...}``; one middleware enforces it for the whole
app and refuses any route that declares none (so a new route cannot be left open by mistake).

Policies:
- ``public``: no credential (health, metrics, OpenAPI, enrollment which carries its own one-time token).
- ``reader``: admin or reader.
- ``admin``: admin only.
- ``agent``: any agent credential, or admin (bundle downloads; heartbeats check the store in the body).
- ``store``: the agent of the store named by the ``store_id`` path parameter, or admin.

Dashboard routes (``opt={"dashboard": True}``) also accept a browser session: ``POST /dashboard/sign-in``
exchanges an admin or reader token for a random session id in an HttpOnly, SameSite=Strict cookie
(:class:`SessionStore` keeps only its hash, with the token's hash, never the token). Each request through
a session is checked against the token index again, so revoking the credential ends its sessions. Every
form a session posts carries that session's CSRF token (:func:`check_csrf`); bearer requests need none
(a browser never attaches an ``Authorization`` header on its own).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from server.errors import PermissionDeniedError, ServerError, UnauthorizedError

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler
    from litestar.types import ASGIApp, Receive, Scope, Send

Role = Literal["admin", "reader", "agent"]
Access = Literal["public", "reader", "admin", "agent", "store"]
ACCESS_POLICIES: tuple[Access, ...] = ("public", "reader", "admin", "agent", "store")
TOKEN_PREFIX: dict[str, str] = {"admin": "sca_", "reader": "scr_", "agent": "scs_", "enroll": "sce_"}


def new_token(kind: str) -> str:
    """A fresh random secret with a prefix telling what it is (``sca_``, ``scr_``, ``scs_``, ``sce_``)."""
    return TOKEN_PREFIX[kind] + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: role, the store an agent is scoped to, and a name for audit trails."""

    role: Role
    credential_id: str
    store_id: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.store_id}" if self.store_id else f"{self.role}:{self.credential_id}"


class TokenIndex:
    """In-memory map from token hash to principal, kept in step with the credentials table."""

    def __init__(self, config_admin_token: str = "") -> None:
        self._by_hash: dict[str, Principal] = {}
        self._lock = threading.Lock()
        self._config_admin_hash = hash_token(config_admin_token) if config_admin_token else ""

    def replace_all(self, entries: Iterable[tuple[str, Principal]]) -> None:
        with self._lock:
            self._by_hash = dict(entries)

    def add(self, token_sha256: str, principal: Principal) -> None:
        with self._lock:
            self._by_hash[token_sha256] = principal

    def remove_where(self, predicate: Callable[[Principal], bool]) -> None:
        with self._lock:
            self._by_hash = {h: p for h, p in self._by_hash.items() if not predicate(p)}

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise UnauthorizedError("this endpoint needs a credential: send `Authorization: Bearer <token>`")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError("the Authorization header must be `Bearer <token>`")
        return self.principal_for_hash(hash_token(token))

    def principal_for_hash(self, digest: str) -> Principal:
        """The principal of a token given by its sha256 (what sessions keep)."""
        if self._config_admin_hash and hmac.compare_digest(digest, self._config_admin_hash):
            return Principal(role="admin", credential_id="config")
        principal = self._by_hash.get(digest)
        if principal is None:
            raise UnauthorizedError("unknown or revoked credential")
        return principal


def check_access(access: str, principal: Principal, path_store_id: str | None) -> None:
    """Raise ``PermissionDeniedError`` unless ``principal`` may use a route with policy ``access``."""
    role = principal.role
    if role == "admin":
        return
    if access == "reader" and role == "reader":
        return
    if access == "agent" and role == "agent":
        return
    if access == "store" and role == "agent":
        if path_store_id is not None and principal.store_id == path_store_id:
            return
        raise PermissionDeniedError(
            f"this credential belongs to store {principal.store_id}; it cannot act for store {path_store_id}"
        )
    raise PermissionDeniedError(f"a {role} credential may not use this endpoint (needs {access})")


SESSION_COOKIE = "shelfcast_session"
SIGNIN_COOKIE = "shelfcast_signin"
SESSION_IDLE_SECONDS = 8 * 3600
SESSION_MAX_SECONDS = 24 * 3600
MAX_SESSIONS = 10_000


class Session(msgspec.Struct, kw_only=True):
    token_sha256: str
    csrf_token: str
    created: float
    last_seen: float


class SessionStore:
    """Server-side dashboard sessions, keyed by the sha256 of the random id in the browser's cookie.

    Sessions live in the server's memory: a restart signs everyone out. A session ends on sign-out,
    after ``SESSION_IDLE_SECONDS`` without a request, after ``SESSION_MAX_SECONDS`` in all, or when its
    credential is revoked (checked on every request).
    """

    def __init__(self, index: TokenIndex, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.index = index
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, token: str) -> tuple[str, Principal, Session]:
        """Sign in with an admin or reader ``token``: the new session id (for the cookie) and who it is."""
        principal = self.index.authenticate(f"Bearer {token.strip()}")
        if principal.role not in ("admin", "reader"):
            raise PermissionDeniedError("only admin and reader credentials can sign in to the dashboard")
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(
            token_sha256=hash_token(token.strip()),
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
        )
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].last_seen)
                del self._sessions[oldest]
            self._sessions[hash_token(session_id)] = session
        return session_id, principal, session

    def lookup(self, session_id: str | None) -> tuple[Principal, Session]:
        """The principal and session of a cookie's session id, or ``UnauthorizedError``."""
        if not session_id:
            raise UnauthorizedError("sign in to see the dashboard")
        key = hash_token(session_id)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and (
                now - session.last_seen > SESSION_IDLE_SECONDS or now - session.created > SESSION_MAX_SECONDS
            ):
                del self._sessions[key]
                session = None
            if session is None:
                raise UnauthorizedError("the dashboard session has ended; sign in again")
            session.last_seen = now
        try:
            principal = self.index.principal_for_hash(session.token_sha256)
        except UnauthorizedError:
            self.end(session_id)
            raise UnauthorizedError("the credential of this session was revoked; sign in again") from None
        return principal, session

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(hash_token(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)


def check_csrf(expected: str | None, sent: str | None) -> None:
    """Refuse (403) a dashboard form whose CSRF token is missing or not the one issued to this browser."""
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise PermissionDeniedError("the form's CSRF token is missing or wrong; reload the page and retry")


def cookie_value(scope: Scope, name: str) -> str | None:
    """One cookie of the request, read from its ``Cookie`` header(s)."""
    for key, value in scope["headers"]:
        if key != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
    return None


def make_auth_middleware(
    index: TokenIndex, sessions: SessionStore | None = None
) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware enforcing each route's declared ``access`` policy (one place for the whole app).

    A middleware rather than a Litestar guard: it runs after routing (``scope["route_handler"]`` is set)
    and inside the exception handling, without the per-request copy of the handler guards cost.
    Dashboard routes take the bearer header or, without one, the session cookie (``sessions``).
    """

    def middleware(app: ASGIApp) -> ASGIApp:
        async def authorize(scope: Scope, receive: Receive, send: Send) -> None:
            handler = scope["route_handler"]
            access = handler.opt.get("access")
            if access is None and _is_auto_options(handler):
                await app(scope, receive, send)  # Litestar's own OPTIONS answer (the Allow header), no data
                return
            if access not in ACCESS_POLICIES:
                raise ServerError(f"route {handler.handler_name} declares no valid access policy; refusing")
            if access != "public":
                authorization = _header(scope, b"authorization")
                state = scope.setdefault("state", {})
                if authorization is None and sessions is not None and handler.opt.get("dashboard"):
                    principal, session = sessions.lookup(cookie_value(scope, SESSION_COOKIE))
                    state["session"] = session
                else:
                    principal = index.authenticate(authorization)
                check_access(access, principal, scope["path_params"].get("store_id"))
                state["principal"] = principal
            await app(scope, receive, send)

        return authorize

    return middleware


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _is_auto_options(handler: BaseRouteHandler) -> bool:
    methods = getattr(handler, "http_methods", None)
    return methods == {"OPTIONS"}


def principal_of(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The principal the auth middleware attached to the request's scope state."""
    principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        raise UnauthorizedError("no authenticated principal on this request")
    return principal


def session_of(request: ASGIConnection[Any, Any, Any, Any]) -> Session | None:
    """The dashboard session the request came through (None for bearer requests)."""
    session = request.scope.get("state", {}).get("session")
    return session if isinstance(session, Session) else None
