"""Role and scope matrix over every route of the app (read from ``app.routes``, so none can escape it)."""

from __future__ import annotations

import functools
import re
from typing import Any

import httpx
import pytest

from server.auth import ACCESS_POLICIES
from server.config import ServerConfig
from tests.server.conftest import RunningServer, create_store, enroll, unique

DENIED = {401, 403}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@functools.cache
def _routes() -> list[tuple[str, str, str]]:
    """(method, path template, access policy) for every handler except Litestar's automatic OPTIONS."""
    from server.app import create_app

    app = create_app(ServerConfig())
    found = []
    for route in app.routes:
        for handler in route.route_handlers:
            methods = getattr(handler, "http_methods", set())
            access = handler.opt.get("access")
            if methods == {"OPTIONS"} and access is None:
                continue
            for method in sorted(methods):
                found.append((method, route.path, access))
    return found


def _fill(path: str, store_id: str) -> str:
    values = {
        "store_id": store_id,
        "name": "matrix-model",
        "alias": "champion",
        "version": "1",
        "sha256": "0" * 64,
        "path": "openapi.json",
    }
    return re.sub(r"\{(\w+):\w+\}", lambda m: values.get(m.group(1), "nothing"), path)


def test_every_route_declares_an_access_policy() -> None:
    """Each route handler names one of the known policies; the matrix below covers them all."""
    routes = _routes()
    assert len(routes) > 30
    undeclared = [(m, p) for m, p, a in routes if a not in ACCESS_POLICIES]
    assert undeclared == []


WHO = ("none", "reader", "other_agent", "own_agent", "revoked_agent", "admin")
ALLOWED = {
    "public": set(WHO),
    "reader": {"reader", "admin"},
    "admin": {"admin"},
    "agent": {"other_agent", "own_agent", "admin"},
    "store": {"own_agent", "admin"},
}


def test_role_and_scope_matrix(server: RunningServer) -> None:
    """No credential, reader, other store's agent, own agent, a revoked agent (on its own store) and admin
    get exactly what each policy allows; unauthenticated callers get 401."""
    store_a, store_b, store_c = unique("MA"), unique("MB"), unique("MC")
    with server.admin() as admin:
        agent_a = enroll(server.url, store_a, create_store(admin, store_a, "matrix-model"))
        agent_b = enroll(server.url, store_b, create_store(admin, store_b, "matrix-model"))
        agent_c = enroll(server.url, store_c, create_store(admin, store_c, "matrix-model"))
        admin.post(f"/v1/stores/{store_c}/revoke").raise_for_status()
        reader = admin.post("/v1/credentials", json={"role": "reader"}).json()["token"]
    tokens: dict[str, Any] = {
        "none": None,
        "reader": reader,
        "other_agent": agent_b,
        "own_agent": agent_a,
        "revoked_agent": agent_c,
        "admin": server.admin_token,
    }
    # admin calls go to a store that does not exist, so mutating routes cannot disturb the matrix;
    # the revoked agent calls its own store's routes
    store_of = {"admin": "MZ-nobody", "revoked_agent": store_c}
    failures = []
    checked = 0
    client = httpx.Client(base_url=server.url, timeout=30)
    for method, path, access in _routes():
        for who in WHO:
            url = _fill(path, store_of.get(who, store_a))
            token = tokens[who]
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = client.request(method, url, headers=headers, json={})
            checked += 1
            if path.endswith("/credentials/rotate") and response.status_code == 200:
                tokens["own_agent"] = response.json()["token"]
            may = who in ALLOWED[access]
            if may == (response.status_code in DENIED):
                failures.append(f"{method} {path} [{access}] as {who}: {response.status_code}")
            if not may and who in ("none", "revoked_agent") and response.status_code != 401:
                failures.append(f"{method} {path} as {who}: {response.status_code} (want 401)")
    client.close()
    assert failures == []
    assert checked >= 180


def test_dashboard_routes_are_in_the_matrix() -> None:
    """The dashboard's pages are reader routes and its forms admin routes (sign-in/out aside), so the
    matrix above refuses them to anonymous callers (401, the sign-in page) and readers cannot POST."""
    dashboard = [(m, p, a) for m, p, a in _routes() if p.startswith("/dashboard")]
    if not dashboard:
        pytest.skip("this server has no dashboard routes")
    posts = [(p, a) for m, p, a in dashboard if m == "POST" and not p.endswith(("/sign-in", "/sign-out"))]
    assert posts and all(a == "admin" for _, a in posts), posts
    pages = [(p, a) for m, p, a in dashboard if m == "GET" and a == "public"]
    assert all(p.endswith(("/sign-in", ".css", ".js", ".svg")) for p, _ in pages), pages


@pytest.mark.parametrize("path", ["/v1/stores", "/livez"])
def test_automatic_options_reveal_no_data(server: RunningServer, path: str) -> None:
    """Litestar's automatic OPTIONS answers only list the allowed methods."""
    response = httpx.options(server.url + path, timeout=10)
    assert response.status_code == 204
    assert "allow" in response.headers
    assert response.content == b""
