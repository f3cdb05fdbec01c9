"""The admin dashboard on a real server: sign-in, every page for reader and admin, CSRF, actions, SVG charts.

The server is filled over HTTP the way agents and admins fill it: signed bundles and run records, stores
that enroll, heartbeat and post accuracy and drift reports and actuals, and a rollout the engine decides on.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.server.dashboard_fleet import (
    CHART_PAGES,
    MODEL,
    PAGES,
    Filled,
    hidden_field,
    replenishment_totals,
    shared_fleet,
    sign_in,
)


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Filled:
    """The session's filled dashboard server."""
    return shared_fleet(tmp_path_factory, request)


def test_sign_in_sets_a_strict_http_only_cookie_and_never_echoes_the_token(filled: Filled) -> None:
    """Signing in answers 303 with an HttpOnly, SameSite=Strict session cookie; the token appears nowhere."""
    client = httpx.Client(base_url=filled.server.url, timeout=30)
    form = client.get("/dashboard/sign-in")
    assert form.status_code == 200
    answer = client.post(
        "/dashboard/sign-in",
        data={"token": filled.reader_token, "csrf_token": hidden_field(form.text, "csrf_token")},
    )
    cookie = answer.headers["set-cookie"]
    assert answer.status_code == 303
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert filled.reader_token not in cookie
    page = client.get("/dashboard/fleet")
    assert page.status_code == 200
    assert filled.reader_token not in page.text
    client.close()


@pytest.mark.parametrize("token", ["scr_not-a-real-token", "", "sca_" + "y" * 40])
def test_sign_in_with_a_bad_token_is_refused(filled: Filled, token: str) -> None:
    """An unknown token gets the form again with 401 and no session cookie."""
    client = httpx.Client(base_url=filled.server.url, timeout=30)
    form = client.get("/dashboard/sign-in")
    answer = client.post(
        "/dashboard/sign-in", data={"token": token, "csrf_token": hidden_field(form.text, "csrf_token")}
    )
    assert answer.status_code == 401
    assert "shelfcast_session=" not in answer.headers.get("set-cookie", "")
    assert client.get("/dashboard/fleet").status_code == 401
    client.close()


def test_agent_token_cannot_sign_in(filled: Filled) -> None:
    """A store agent's credential is refused at sign-in (403)."""
    client = httpx.Client(base_url=filled.server.url, timeout=30)
    form = client.get("/dashboard/sign-in")
    token = next(iter(filled.agents.values()))
    answer = client.post(
        "/dashboard/sign-in", data={"token": token, "csrf_token": hidden_field(form.text, "csrf_token")}
    )
    assert answer.status_code == 403
    client.close()


def test_sign_in_without_its_csrf_cookie_is_refused(filled: Filled) -> None:
    """A sign-in form posted from elsewhere (no matching CSRF cookie) is refused with 403 and a fresh form."""
    answer = httpx.post(
        f"{filled.server.url}/dashboard/sign-in",
        data={"token": filled.reader_token, "csrf_token": "forged"},
        timeout=30,
    )
    assert answer.status_code == 403
    assert "shelfcast_session=" not in answer.headers.get("set-cookie", "")
    assert "sign in again" in answer.text and 'name="csrf_token"' in answer.text


def test_pages_without_a_session_show_the_sign_in_form(filled: Filled) -> None:
    """Every page answers 401 with the sign-in form when no session or token comes with the request."""
    for page in PAGES:
        answer = httpx.get(filled.server.url + filled.url(page), timeout=30)
        assert answer.status_code == 401, page
        assert 'action="/dashboard/sign-in"' in answer.text


@pytest.mark.parametrize("role", ["reader", "admin"])
def test_every_page_renders_for_reader_and_admin(filled: Filled, role: str) -> None:
    """Each page answers 200 HTML with its charts; only the admin sees action buttons."""
    token = filled.reader_token if role == "reader" else filled.server.admin_token
    client = sign_in(filled.server.url, token)
    timings = {}
    for page in PAGES:
        started = time.perf_counter()
        answer = client.get(filled.url(page))
        timings[page] = time.perf_counter() - started
        assert answer.status_code == 200, f"{page}: {answer.text[:500]}"
        assert answer.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert "<script" not in answer.text
        kind = CHART_PAGES.get(page)
        if kind:
            assert f'data-chart="{kind}"' in answer.text, page
    rollout = client.get(filled.url("/dashboard/rollouts/{rollout_id}")).text
    buttons = re.findall(r'class="action action-(\w+)"', rollout)
    if role == "admin":
        assert {"pause", "promote", "abort"} <= set(buttons)
    else:
        assert buttons == []
    assert max(timings.values()) < 5, timings
    client.close()


def test_fleet_is_paginated_and_filtered(filled: Filled) -> None:
    """1,072 stores show 50 a page; filters by model, stale, version and id prefix narrow the list."""
    client = sign_in(filled.server.url, filled.reader_token)
    everyone = client.get("/dashboard/fleet").text
    assert "page 1 of 22 (1,072 in all)" in everyone
    assert everyone.count("<tr") - everyone.count("<tr><th") <= 50 + 20
    assert "page 1 of 2 (72 in all)" in client.get("/dashboard/fleet?model=demand").text
    last = client.get("/dashboard/fleet?model=demand&page=2").text
    assert "X-0059" in last and "X-0000" not in last
    prefix = client.get("/dashboard/fleet?q=S-su").text
    assert "(6 in all)" in prefix
    erring = client.get("/dashboard/fleet?q=S-di-n0").text
    # the heartbeats name no current error: the last one is history, marked resolved
    assert re.search(
        r"<td></td><td[^>]*>6</td><td>server unreachable <span class=\"badge\">resolved</span></td>", erring
    ), "S-di-n0 heartbeats 5 + 1 errors"
    never = client.get("/dashboard/fleet?version=none").text
    assert "(60 in all)" in never
    assert "(60 in all)" in client.get("/dashboard/fleet?stale=1&model=demand").text
    assert client.get("/dashboard/fleet?version=abc").status_code == 422
    client.close()


def test_reader_posts_are_refused(filled: Filled) -> None:
    """A reader's action form is refused with 403 even with a valid CSRF token; nothing changes."""
    client = sign_in(filled.server.url, filled.reader_token)
    page = client.get(filled.url("/dashboard/rollouts/{rollout_id}")).text
    csrf = hidden_field(page, "csrf_token")
    answer = client.post(filled.url("/dashboard/rollouts/{rollout_id}/pause"), data={"csrf_token": csrf})
    assert answer.status_code == 403
    with filled.server.admin() as admin:
        assert admin.get(f"/v1/rollouts/{filled.rollout_id}").json()["rollout"]["status"] != "paused"
    client.close()


def test_admin_actions_need_the_session_csrf_token(filled: Filled) -> None:
    """Missing or wrong CSRF tokens get 403; with the right one the admin pauses and resumes the rollout."""
    client = sign_in(filled.server.url, filled.server.admin_token)
    page = client.get(filled.url("/dashboard/rollouts/{rollout_id}")).text
    csrf = hidden_field(page, "csrf_token")
    action = filled.url("/dashboard/rollouts/{rollout_id}/pause")
    assert client.post(action, data={"reason": "x"}).status_code == 403
    assert client.post(action, data={"csrf_token": "wrong", "reason": "x"}).status_code == 403
    other = sign_in(filled.server.url, filled.server.admin_token)
    other_csrf = hidden_field(other.get("/dashboard/fleet").text, "csrf_token")
    assert other_csrf != csrf
    assert client.post(action, data={"csrf_token": other_csrf}).status_code == 403
    paused = client.post(action, data={"csrf_token": csrf, "reason": "look first"})
    assert paused.status_code == 303
    shown = client.get(paused.headers["location"]).text
    assert "look first" in shown and "paused" in shown
    resumed = client.post(filled.url("/dashboard/rollouts/{rollout_id}/resume"), data={"csrf_token": csrf})
    assert resumed.status_code == 303
    with filled.server.admin() as admin:
        body = admin.get(f"/v1/rollouts/{filled.rollout_id}").json()
    actions = [d["action"] for d in body["decisions"]]
    assert "pause" in actions and "resume" in actions
    assert any(d["actor"] == "admin:config" and d["reason"] == "look first" for d in body["decisions"])
    client.close()
    other.close()


def test_admin_acknowledges_an_alert(filled: Filled) -> None:
    """A reader's acknowledgement is refused (403); the admin's, with the CSRF token, is recorded."""
    page = filled.url("/dashboard/alerts/{alert_id}")
    reader = sign_in(filled.server.url, filled.reader_token)
    reader_csrf = hidden_field(reader.get(page).text, "csrf_token")
    assert "action-ack" not in reader.get(page).text
    assert reader.post(page + "/ack", data={"csrf_token": reader_csrf}).status_code == 403
    admin = sign_in(filled.server.url, filled.server.admin_token)
    shown = admin.get(page).text
    assert "action-ack" in shown
    assert admin.post(page + "/ack", data={}).status_code == 403
    acked = admin.post(page + "/ack", data={"csrf_token": hidden_field(shown, "csrf_token")})
    assert acked.status_code == 303
    after = admin.get(acked.headers["location"]).text
    assert "acked by admin:config" in after and "action-ack" not in after
    reader.close()
    admin.close()


def test_sign_out_ends_the_session(filled: Filled) -> None:
    """After sign-out (with CSRF) the old cookie no longer opens pages."""
    client = sign_in(filled.server.url, filled.reader_token)
    cookie = client.cookies.get("shelfcast_session")
    csrf = hidden_field(client.get("/dashboard/fleet").text, "csrf_token")
    assert client.post("/dashboard/sign-out", data={}).status_code == 403
    out = client.post("/dashboard/sign-out", data={"csrf_token": csrf})
    assert out.status_code == 303
    replay = httpx.get(
        f"{filled.server.url}/dashboard/fleet", cookies={"shelfcast_session": cookie or ""}, timeout=30
    )
    assert replay.status_code == 401
    client.close()


def test_revoking_the_credential_ends_its_sessions(filled: Filled) -> None:
    """A session of a revoked reader credential is refused at its next page."""
    with filled.server.admin() as admin:
        created = admin.post("/v1/credentials", json={"role": "reader"}).json()
    client = sign_in(filled.server.url, created["token"])
    assert client.get("/dashboard/models").status_code == 200
    with filled.server.admin() as admin:
        assert admin.delete(f"/v1/credentials/{created['credential_id']}").status_code in (200, 204)
    assert client.get("/dashboard/models").status_code == 401
    client.close()


def test_bearer_api_is_unchanged_and_cookies_do_not_open_it(filled: Filled) -> None:
    """The JSON API still wants a bearer token: a dashboard session cookie alone gets 401 there."""
    client = sign_in(filled.server.url, filled.server.admin_token)
    assert client.get("/v1/stores").status_code == 401
    with filled.server.client(filled.reader_token) as reader:
        assert reader.get("/v1/stores").status_code == 200
        assert reader.get("/dashboard/fleet").status_code == 200
    client.close()


def test_pages_show_the_data(filled: Filled) -> None:
    """Lineage, alias history, selection, runs side by side, decisions, alerts and distributions show."""
    client = sign_in(filled.server.url, filled.reader_token)
    version = client.get(f"/dashboard/models/{MODEL}/versions/2").text
    assert "run-dash-2" in version and "d" * 64 in version and "AutoETS" in version
    assert "Every candidate in the backtest" in client.get("/dashboard/runs/run-dash-2").text
    model = client.get(f"/dashboard/models/{MODEL}").text
    assert "challenger" in model and "champion" in model
    assert "older versions" not in model
    assert client.get(f"/dashboard/models/{MODEL}?cursor=bogus").status_code == 422
    compare = client.get("/dashboard/runs/compare?a=run-dash-1&b=run-dash-2&diff=1").text
    assert "metrics.selected.wape" in compare
    rollout = client.get(filled.url("/dashboard/rollouts/{rollout_id}")).text
    assert "Decision log" in rollout and "start" in rollout and "max WAPE ratio" in rollout
    alert = client.get(filled.url("/dashboard/alerts/{alert_id}")).text
    assert "same weeks a year earlier" in alert or "the 8 weeks before" in alert
    judged = alert.split("Reports the rule judged (2 newest): dairy", 1)[1].split("Newest drift report", 1)[0]
    assert judged.count("both beyond their thresholds") == 2  # the two reports the store alert fired on
    newest = alert.split("Newest drift report", 1)[1]
    assert "level beyond" not in newest and newest.count("level within its threshold") == 2  # dairy's peers
    accuracy = client.get("/dashboard/accuracy?model=demand").text
    assert "v1 champion (served)" in accuracy
    dairy = client.get("/dashboard/accuracy?model=demand&category=dairy").text
    assert "Weekly WAPE by version, demand, dairy" in dairy
    client.close()


SERVICE_CELL = re.compile(
    r'<td class="sl( below)?" data-store="([^"]*)" data-category="([^"]*)"\s+title="(\d+) of (\d+) review '
    r"cycles met; (\d+) items with a proposal, (\d+) to order, ([\d.,]+) units proposed, order-up-to "
    r'([\d.,]+)">\s*<span class="achieved">([^<]*)</span>\s*/ <span class="target">([^<]*)</span>'
)


def test_service_levels_show_the_figures_the_stores_posted(filled: Filled) -> None:
    """Each store x category cell shows the newest report's achieved and target service level, cycles and
    proposals, and is flagged exactly when achieved is below target; the fleet row pools the cycles."""
    client = sign_in(filled.server.url, filled.reader_token)
    page = client.get("/dashboard/service-levels")
    client.close()
    assert page.status_code == 200, page.text[:300]
    cells = {(m[2], m[3]): m for m in SERVICE_CELL.finditer(page.text)}
    stores = sorted(filled.agents)
    expected = {(s, t.category): t for i, s in enumerate(stores) for t in replenishment_totals(i, week=2)}
    assert set(cells) - {k for k in cells if k[0] == ""} == set(expected)
    below = 0
    for key, t in expected.items():
        m = cells[key]
        assert t.achieved_service_level is not None and t.target_service_level is not None
        shown = (int(m[4]), int(m[5]), int(m[6]), int(m[7]), float(m[8]), float(m[9].replace(",", "")))
        posted = (t.cycles_met, t.cycles, t.items, t.items_to_order, round(t.proposed_units, 1),
                  round(t.order_up_to_units, 1))  # fmt: skip
        assert shown == posted, key
        assert m[10] == f"{100 * t.achieved_service_level:.1f} %"
        assert m[11] == f"{100 * t.target_service_level:.1f} %"
        assert (m[1] is not None) == (t.achieved_service_level < t.target_service_level), key
        below += t.achieved_service_level < t.target_service_level
    assert 0 < below < len(expected)
    assert f"{below} of {len(expected)} measured store x category cells are below target" in page.text
    for category in {c for _, c in expected}:
        mine = [t for (_, c), t in expected.items() if c == category]
        met, cycles = sum(t.cycles_met for t in mine), sum(t.cycles for t in mine)
        assert cells[("", category)][10] == f"{100 * met / cycles:.1f} %"


def test_pages_stay_fast_with_a_thousand_stores(filled: Filled) -> None:
    """1,072 stores and 320,000 accuracy rows: each fleet and accuracy page answers within 3 s."""
    client = sign_in(filled.server.url, filled.server.admin_token)
    timings = {}
    pages = ["/dashboard/fleet", "/dashboard/fleet?page=20", "/dashboard/fleet?stale=1&region=west",
             "/dashboard/accuracy?model=big", "/dashboard/accuracy?model=big&page=25"]  # fmt: skip
    for page in pages:
        client.get(page)  # warm
        started = time.perf_counter()
        answer = client.get(page)
        timings[page] = round(time.perf_counter() - started, 3)
        assert answer.status_code == 200, answer.text[:300]
    assert "(1,000 in all)" in client.get("/dashboard/fleet?model=big").text
    assert "30 of 40 categories" in client.get("/dashboard/accuracy?model=big").text
    client.close()
    print("dashboard page seconds with 1,072 stores:", timings)
    assert max(timings.values()) < 3, timings


def test_sessions_end_when_idle_or_too_old() -> None:
    """A session ends after its idle time and after its maximum age, whatever the activity."""
    from server.auth import SESSION_IDLE_SECONDS, SESSION_MAX_SECONDS, SessionStore, TokenIndex
    from server.errors import UnauthorizedError

    now = [1000.0]
    store = SessionStore(TokenIndex("sca_" + "k" * 30), clock=lambda: now[0])
    idle_id, principal, _ = store.create("sca_" + "k" * 30)
    assert principal.role == "admin"
    now[0] += SESSION_IDLE_SECONDS + 1
    with pytest.raises(UnauthorizedError):
        store.lookup(idle_id)
    busy_id, _, _ = store.create("sca_" + "k" * 30)
    for _ in range(int(SESSION_MAX_SECONDS / (SESSION_IDLE_SECONDS / 2)) + 1):
        now[0] += SESSION_IDLE_SECONDS / 2
        try:
            store.lookup(busy_id)
        except UnauthorizedError:
            break
    else:
        pytest.fail("a busy session outlived its maximum age")
    with pytest.raises(UnauthorizedError):
        store.lookup("not-a-session")
    assert len(store) == 0


def test_chart_labels_are_escaped() -> None:
    """Labels that look like markup reach the SVG escaped; empty data draws a 'no data' chart."""
    from server.dashboard import svg

    hostile = '<script>alert("x")</script>'
    for chart in (
        svg.bar_chart([(hostile, 3.0)], label=hostile),
        svg.line_chart(
            [hostile], [svg.Series(hostile, [1.0])], label=hostile, thresholds=[svg.Threshold(hostile, 1)]
        ),
        svg.heatmap([hostile], [hostile], {(hostile, hostile): 0.2}, label=hostile),
        svg.histogram_pair([0.0, 1.0], [1.0], [2.0], label=hostile, names=(hostile, hostile)),
    ):
        assert "<script>" not in str(chart)
        assert "&lt;script&gt;" in str(chart)
    assert "no data yet" in str(svg.line_chart([], [], label="empty"))


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/dashboard/rollouts", "/dashboard/rollouts"),
        ("https://evil.example/dashboard/", "/dashboard/"),
        ("//evil.example/dashboard/", "/dashboard/"),
        ("/dashboard/sign-out", "/dashboard/"),
        ("/v1/stores", "/dashboard/"),
    ],
)
def test_sign_in_only_returns_to_dashboard_paths(target: str, safe: str) -> None:
    """The page to return to after sign-in is a dashboard path of this server, never another site."""
    from server.dashboard.controllers import _safe_next

    assert _safe_next(target) == safe
