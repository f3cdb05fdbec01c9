"""Credentials: bearer tokens stored as sha256 hashes, roles ``admin``/``reader``/``agent`` (store-scoped).

Every route declares its access policy in ``opt={"access": ...}``; one middleware enforces it for the whole
app and refuses any route that declares none (so a new route cannot be left open by mistake).

Policies:
- ``public``: no credential (health, metrics, OpenAPI, enrollment which carries its own one-time token).
- ``reader``: admin or reader.
- ``admin``: admin only.
- ``agent``: any agent credential, or admin (bundle downloads; heartbeats check the store in the body).
- ``store``: the agent of the store named by the ``store_id`` path parameter, or admin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
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
        digest = hash_token(token)
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


def make_auth_middleware(index: TokenIndex) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware enforcing each route's declared ``access`` policy (one place for the whole app).

    A middleware rather than a Litestar guard: it runs after routing (``scope["route_handler"]`` is set)
    and inside the exception handling, without the per-request copy of the handler guards cost.
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
                principal = index.authenticate(_header(scope, b"authorization"))
                check_access(access, principal, scope["path_params"].get("store_id"))
                scope.setdefault("state", {})["principal"] = principal
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
