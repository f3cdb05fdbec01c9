"""Role and scope matrix over every route of the app (read from ``app.routes``, so none can escape it)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.auth import ACCESS_POLICIES
from server.config import ServerConfig
from tests.agent.support import AgentHandle, prepare_served_state, wait_until
from tests.conftest import free_port
from tests.server.conftest import RunningServer, create_store, enroll, launch, unique

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


# -- the agent's inventory API --------------------------------------------------------------------------

AGENT_PUBLIC = ("/livez", "/readyz", "/metrics", "/schema")
API_TOKEN = "store-inventory-token-0123456789"
OPERATOR_TOKEN = "store-operator-token-9876543210"
OPERATOR_ROUTES = {
    ("POST", "/v1/sales"),
    ("POST", "/v1/inventory"),
    ("POST", "/v1/score"),
    ("POST", "/v1/rollback"),
    ("POST", "/v1/retry"),
}


def _agent_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """(method, path template) of every handler of the agent's app, built over a real runtime."""
    from agent.api import create_app
    from agent.config import AgentConfig, AgentSection, ApiSection
    from agent.runtime import AgentRuntime

    config = AgentConfig(
        agent=AgentSection(state_dir=str(tmp_path / "routes-state")), api=ApiSection(token=API_TOKEN)
    )
    app = create_app(AgentRuntime(config))
    found = []
    for route in app.routes:
        for handler in route.route_handlers:
            for method in sorted(getattr(handler, "http_methods", set()) - {"OPTIONS", "HEAD"}):
                found.append((method, route.path))
    return found


@pytest.fixture
def running_agent(tmp_path: Path) -> Iterator[AgentHandle]:
    """A real agent process with an inventory API token, serving a prepared scoring run (no server)."""
    agent = AgentHandle(
        tmp_path,
        f"http://127.0.0.1:{free_port()}",
        tmp_path / "none.pub",
        api={
            "token": API_TOKEN,
            "operator_token": OPERATOR_TOKEN,
            "max_horizon": 10,
            "max_page_size": 5,
            "max_upload_bytes": 10_000,
        },
        agent={"poll_interval_seconds": 30.0},
    )
    prepare_served_state(agent.state_dir, items=8, horizon=10)
    agent.start()
    try:
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        wait_until(
            lambda: agent.client.get("/v1/status", headers=auth).json()["served_version"] == 1,
            30,
            what="the prepared forecasts served",
        )
        yield agent
    finally:
        agent.close()


def test_agent_api_matrix(running_agent: AgentHandle, tmp_path: Path) -> None:
    """Every route of the agent's API read from its app: probes, metrics and the schema are open; every
    other route answers 401 without a token, with a wrong one or with a server credential; the read token
    is served on reads and gets 403 on the operator routes (sales, inventory, score, rollback, retry),
    which only the operator token may call; the operator token is served everywhere."""
    routes = _agent_routes(tmp_path)
    assert {("GET", "/v1/forecasts"), ("POST", "/v1/sales"), ("GET", "/livez")} <= set(routes)
    callers = {
        "none": None,
        "wrong_token": "not-the-token",
        "server_credential": "scs_" + "x" * 43,
        "api_token": API_TOKEN,
        "operator_token": OPERATOR_TOKEN,
    }
    assert {(m, p) for m, p in routes if m != "GET" and p.startswith("/v1")} == OPERATOR_ROUTES
    failures = []
    for method, path in routes:
        url = re.sub(
            r"\{(\w+):\w+\}", lambda m: "I00001" if m.group(1) == "item_id" else "openapi.json", path
        )
        public = path.startswith(AGENT_PUBLIC)
        for who, token in callers.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = running_agent.client.request(method, url, headers=headers, content=b"{}", timeout=30)
            if public or who == "operator_token":
                expected_refusal = None
            elif who == "api_token":
                expected_refusal = 403 if (method, path) in OPERATOR_ROUTES else None
            else:
                expected_refusal = 401
            refusal = response.status_code if response.status_code in (401, 403) else None
            if refusal != expected_refusal:
                failures.append(f"{method} {path} as {who}: {response.status_code}")
            if response.status_code >= 500 and path not in ("/readyz", "/v1/score", "/v1/rollback"):
                failures.append(f"{method} {path} as {who}: {response.status_code} {response.text[:200]}")
    assert failures == []


def test_agent_api_limits(running_agent: AgentHandle) -> None:
    """Horizon and page size over [api] max_horizon / max_page_size are 400, an upload over
    max_upload_bytes is 413, all as problem details; within the limits the answer is served."""
    client = running_agent.client
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    for path in ("/v1/forecasts", "/v1/forecasts/I00001"):
        ok = client.get(path, params={"horizon": 10}, headers=auth)
        assert ok.status_code == 200, ok.text
        for horizon in (0, 11, 100_000):
            bad = client.get(path, params={"horizon": horizon}, headers=auth)
            assert bad.status_code == 400, (path, horizon, bad.text)
            assert bad.headers["content-type"].startswith("application/problem+json")
    page = client.get("/v1/forecasts", params={"limit": 5}, headers=auth)
    assert page.status_code == 200 and len(page.json()["rows"]) == 5, page.text
    for limit in (0, 6):
        assert client.get("/v1/forecasts", params={"limit": limit}, headers=auth).status_code == 400
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "text/csv"}
    big = client.post("/v1/sales", content=b"x" * 10_001, headers=operator)
    assert big.status_code == 413, big.text


# -- credentials at rest and request limits of the server ---------------------------------------------------


def test_credentials_are_stored_hashed(tmp_path: Path, signing_key: Path) -> None:
    """Reader, enrollment and store tokens never reach the database file, its WAL or the log in clear;
    their sha256 is what the database keeps."""
    import duckdb

    from server.auth import hash_token

    running = launch(tmp_path, signing_key.with_name(signing_key.name + ".pub"))
    try:
        with running.admin() as admin:
            reader = admin.post("/v1/credentials", json={"role": "reader"}).json()["token"]
            enrollment = create_store(admin, "HASHED-1", "matrix-model")
            store = enroll(running.url, "HASHED-1", enrollment)
            unused = create_store(admin, "HASHED-2", "matrix-model")
    finally:
        running.process.stop()
    secrets_given = {"reader": reader, "enrollment": enrollment, "store": store, "unused": unused}
    files = [p for p in running.state_dir.rglob("*") if p.is_file()]
    files += list(tmp_path.glob("*.log"))
    assert any(p.suffix == ".duckdb" for p in files)
    for path in files:
        data = path.read_bytes()
        for name, token in secrets_given.items():
            assert token.encode() not in data, f"{name} token in clear in {path.name}"
    database = next(p for p in running.state_dir.rglob("*.duckdb"))
    con = duckdb.connect(str(database), read_only=True)
    try:
        texts: list[str] = []
        for schema, table in con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        ).fetchall():
            columns = [
                c
                for (c,) in con.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = ? AND table_name = ?",
                    [schema, table],
                ).fetchall()
            ]
            for column in columns:
                rows = con.execute(f'SELECT CAST("{column}" AS VARCHAR) FROM "{schema}"."{table}"').fetchall()
                texts += [r[0] for r in rows if r[0]]
    finally:
        con.close()
    everything = "\n".join(texts)
    for name, token in secrets_given.items():
        assert token not in everything, f"{name} token in clear in the database"
    for name in ("reader", "store", "unused"):
        assert hash_token(secrets_given[name]) in everything, f"no sha256 of the {name} token"


def _takes_body(handler: Any) -> bool:
    return bool({"data", "body"} & set(handler.parsed_fn_signature.parameters))


def test_request_body_and_page_size_limits(tmp_path: Path, signing_key: Path) -> None:
    """Every route taking a body refuses one over its limit (413: JSON bodies max_json_body_bytes, bundle
    uploads max_request_body_bytes); every route taking ``limit`` caps pages at max_page_size."""
    from server.app import create_app

    running = launch(
        tmp_path,
        signing_key.with_name(signing_key.name + ".pub"),
        {
            "SHELFCAST_SERVER__MAX_JSON_BODY_BYTES": "20000",
            "SHELFCAST_SERVER__MAX_REQUEST_BODY_BYTES": "60000",
            "SHELFCAST_SERVER__MAX_PAGE_SIZE": "2",
        },
    )
    failures = []
    try:
        with running.admin() as admin:
            for i in range(3):
                create_store(admin, f"LIMIT-{i}", "matrix-model")
                admin.post("/v1/credentials", json={"role": "reader"}).raise_for_status()
            bodies = listed = 0
            for route in create_app(ServerConfig()).routes:
                for handler in route.route_handlers:
                    methods = getattr(handler, "http_methods", set()) - {"OPTIONS", "HEAD"}
                    params = set(handler.parsed_fn_signature.parameters)
                    for method in methods:
                        url = _fill(route.path, "LIMIT-0")
                        if _takes_body(handler):
                            bodies += 1
                            upload = handler.request_max_body_size is None
                            size = 60_001 if upload else 20_001
                            answer = admin.request(
                                method,
                                url,
                                content=b'{"x": "' + b"y" * size + b'"}',
                                headers={"Content-Type": "application/json"},
                            )
                            if answer.status_code != 413:
                                failures.append(f"{method} {route.path} body of {size}: {answer.status_code}")
                        if method == "GET" and "limit" in params:
                            listed += 1
                            answer = admin.get(url, params={"limit": 1000})
                            body = answer.json() if answer.status_code == 200 else None
                            items = body.get("items") if isinstance(body, dict) else body
                            if answer.status_code == 200 and (items is None or len(items) > 2):
                                failures.append(f"GET {route.path} limit=1000: {len(items or [])} items")
                            elif answer.status_code not in (200, 400, 404, 422):
                                failures.append(f"GET {route.path} limit=1000: {answer.status_code}")
            stores = admin.get("/v1/stores", params={"limit": 1000}).json()
            assert len(stores["items"]) == 2 and stores["next_cursor"]
    finally:
        running.process.stop()
    assert failures == []
    assert bodies >= 10 and listed >= 5


def _dashboard_session(url: str, token: str) -> httpx.Client:
    """A browser-like client signed in to the dashboard with ``token`` (session cookie + CSRF value)."""
    client = httpx.Client(base_url=url, timeout=30)
    form = client.get("/dashboard/sign-in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert form.status_code == 200 and csrf, form.text[:300]
    signed = client.post("/dashboard/sign-in", data={"token": token, "csrf_token": csrf.group(1)})
    assert signed.status_code == 303, signed.text[:300]
    assert "shelfcast_session" in client.cookies
    page = client.get("/dashboard/")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    client.headers["X-Test-Csrf"] = found.group(1) if found else ""
    return client


def test_dashboard_session_matrix(server: RunningServer) -> None:
    """Through a signed-in browser session: a reader gets every dashboard page and no admin form (403,
    even with the session's CSRF value); without a session every non-public route shows the sign-in (401)."""
    dashboard = [(m, p, a) for m, p, a in _routes() if p.startswith("/dashboard") and a != "public"]
    if not dashboard:
        pytest.skip("this server has no dashboard routes")
    with server.admin() as admin:
        reader = admin.post("/v1/credentials", json={"role": "reader"}).json()["token"]
    session = _dashboard_session(server.url, reader)
    anonymous = httpx.Client(base_url=server.url, timeout=30)
    failures = []
    for method, path, access in dashboard:
        if path.endswith("/sign-out"):
            continue
        url = _fill(path, "MZ-nobody")
        csrf = session.headers["X-Test-Csrf"]
        answer = session.request(method, url, data={"csrf_token": csrf} if method == "POST" else None)
        if access == "reader" and answer.status_code in DENIED:
            failures.append(f"{method} {path} as reader session: {answer.status_code}")
        if access == "admin" and answer.status_code != 403:
            failures.append(f"{method} {path} as reader session: {answer.status_code} (want 403)")
        nobody = anonymous.request(method, url, data={} if method == "POST" else None)
        if nobody.status_code != 401 or "sign-in" not in nobody.text:
            failures.append(f"{method} {path} without a session: {nobody.status_code}")
    session.close()
    anonymous.close()
    assert failures == []
