"""The dashboard in a real headless Chromium against real servers: one filled over HTTP, one by a simulation.

Chromium (Debian's ``chromium`` package) is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages ending in NUL on file descriptors 3 and 4), so no websocket
client is needed. The test signs in through the form, loads every page, fails on any console error,
uncaught exception or failed resource load, checks each chart is drawn with a non-zero size, presses an
admin action button, and saves a full-page screenshot of each page (under the test's tmp folder, and
under ``$SHELFCAST_ARTIFACTS_DIR/dashboard`` when that is set). Missing Chromium skips the test, except
under CI where it fails.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.server.dashboard_fleet import CHART_PAGES, PAGES, Filled, replenishment_totals, shared_fleet

COMMAND_TIMEOUT_SECONDS = 60.0  # a first page target on a loaded two-core machine can take tens of seconds
LOAD_TIMEOUT_SECONDS = 30.0


class Chromium:
    """A headless Chromium child process and one page of it, spoken to over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path, log_path: Path) -> None:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes answers on fd 4: bash puts the pipe ends there
        # and execs it (no Python code runs between fork and exec)
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        redirect = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        args = [
            "/bin/bash",  # dash takes only one-digit descriptors in redirections
            "-c",
            redirect,
            binary,
            "--headless=new",
            "--no-sandbox",  # tests run as root in containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--mute-audio",
            "--window-size=1280,900",
            "about:blank",
        ]
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(child_r, child_w),
        )
        os.close(child_r)
        os.close(child_w)
        self._write = to_browser_w
        self._read = from_browser_r
        self._next_id = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.session = ""

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._replies.get(message["id"])
                    if box is not None:
                        box.put(message)
                else:
                    self.events.put(message)

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> Any:
        """One DevTools command (to the page's session unless ``browser``); its result or an error."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            box: queue.Queue[dict[str, Any]] = queue.Queue()
            self._replies[ident] = box
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if self.session and not browser:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        try:
            reply = box.get(timeout=COMMAND_TIMEOUT_SECONDS)
        except queue.Empty:
            raise TimeoutError(f"chromium did not answer {method} in {COMMAND_TIMEOUT_SECONDS} s") from None
        finally:
            with self._lock:
                self._replies.pop(ident, None)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )

    def drain(self) -> list[dict[str, Any]]:
        found = []
        while True:
            try:
                found.append(self.events.get_nowait())
            except queue.Empty:
                return found

    def wait_load(self, seen: list[dict[str, Any]]) -> None:
        """Collect events into ``seen`` until the page's load event (bounded)."""
        deadline = time.monotonic() + LOAD_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(event)
            if event.get("method") == "Page.loadEventFired" and event.get("sessionId") == self.session:
                time.sleep(0.2)  # late console messages of the page
                seen.extend(self.drain())
                return
        raise TimeoutError(f"the page did not load in {LOAD_TIMEOUT_SECONDS} s")

    def navigate(self, url: str) -> list[dict[str, Any]]:
        self.drain()
        seen: list[dict[str, Any]] = []
        self.send("Page.navigate", {"url": url})
        self.wait_load(seen)
        return seen

    def run_and_wait(self, expression: str) -> list[dict[str, Any]]:
        """Evaluate ``expression`` (which starts a navigation, e.g. a form submit) and wait for the load."""
        self.drain()
        seen: list[dict[str, Any]] = []
        self.evaluate(expression)
        self.wait_load(seen)
        return seen

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluation failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": 1280, "height": min(float(size["height"]), 6000.0), "scale": 1}
        shot = self.send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        with contextlib.suppress(TimeoutError, RuntimeError, OSError):
            self.send("Browser.close", browser=True)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for fd in (self._write, self._read):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.log.close()


def problems_in(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, failed loads and HTTP errors of documents and resources."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            found.append(f"load failed: {params.get('errorText')} {params.get('type')}")
        elif method == "Network.responseReceived" and params.get("response", {}).get("status", 200) >= 400:
            found.append(f"HTTP {params['response']['status']} for {params['response'].get('url')}")
    return found


CHARTS_JS = """JSON.stringify({
  path: location.pathname,
  h1: (document.querySelector('h1') || {}).textContent || '',
  actions: [...document.querySelectorAll('button.action')].map(b => b.textContent),
  charts: [...document.querySelectorAll('svg.chart')].map(s => {
    const r = s.getBoundingClientRect();
    return {kind: s.dataset.chart, width: r.width, height: r.height,
            marks: s.querySelectorAll('rect, circle, polyline').length};
  }),
})"""


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    """The Chromium executable; its absence skips the test locally and fails it under CI."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (Debian package `chromium`; `./run test` installs it)")
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    return binary


@pytest.fixture(scope="session")
def browser_fleet(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Filled:
    """The filled server the dashboard's page tests use too (one per test session)."""
    return shared_fleet(tmp_path_factory, request)


def _artifacts(tmp_path: Path) -> list[Path]:
    folders = [tmp_path / "screenshots"]
    extra = os.environ.get("SHELFCAST_ARTIFACTS_DIR")
    if extra:
        folders.append(Path(extra) / "dashboard")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def _sign_in(browser: Chromium, base: str, token: str) -> None:
    events = browser.navigate(f"{base}/dashboard/sign-in")
    assert problems_in(events) == []
    events = browser.run_and_wait(
        f"document.getElementById('token').value = {json.dumps(token)};"
        "document.querySelector('form[action=\"/dashboard/sign-in\"]').submit()"
    )
    assert problems_in(events) == []
    assert browser.evaluate("location.pathname") == "/dashboard/fleet"


def _visit(browser: Chromium, base: str, url: str, chart: str | None) -> tuple[dict[str, Any], list[str]]:
    """Load one page: what it shows (charts, action buttons) and every problem the browser reported."""
    events = browser.navigate(base + url)
    state: dict[str, Any] = json.loads(browser.evaluate(CHARTS_JS))
    problems = problems_in(events)
    if chart:
        drawn = [c for c in state["charts"] if c["kind"] == chart]
        if not drawn or not all(c["width"] > 0 and c["height"] > 0 and c["marks"] > 0 for c in drawn):
            problems.append(f"chart {chart} not drawn: {state['charts']}")
    return state, problems


def _shot(browser: Chromium, folders: list[Path], name: str) -> None:
    for ch in "/?{}&=":
        name = name.replace(ch, "_")
    for folder in folders:
        browser.screenshot(folder / f"{name.strip('_')}.png")


SERVICE_CELLS_JS = """JSON.stringify([...document.querySelectorAll('td.sl')].map(td => ({
  store: td.dataset.store, category: td.dataset.category, below: td.classList.contains('below'),
  red: getComputedStyle(td).backgroundColor,
  achieved: td.querySelector('.achieved').textContent, target: td.querySelector('.target').textContent})))"""


def _check_service_levels(browser: Chromium, base: str, fleet: Filled) -> None:
    """The Service levels page, as the browser renders it, shows each store's posted achieved and target
    service level per category, and paints exactly the below-target cells red."""
    browser.navigate(f"{base}/dashboard/service-levels")
    shown = {(c["store"], c["category"]): c for c in json.loads(browser.evaluate(SERVICE_CELLS_JS))}
    stores = sorted(fleet.agents)
    posted = {(store, t.category): t for i, store in enumerate(stores) for t in replenishment_totals(i, 2)}
    assert {k for k in shown if k[0]} == set(posted)
    plain = {c["red"] for c in shown.values() if not c["below"]}
    red = {c["red"] for c in shown.values() if c["below"]}
    assert red and plain and not red & plain, (red, plain)
    for key, t in posted.items():
        assert t.achieved_service_level is not None and t.target_service_level is not None
        cell = shown[key]
        assert cell["achieved"] == f"{100 * t.achieved_service_level:.1f} %", key
        assert cell["target"] == f"{100 * t.target_service_level:.1f} %", key
        assert cell["below"] == (t.achieved_service_level < t.target_service_level), key


def test_every_page_in_chromium(chromium_binary: str, browser_fleet: Filled, tmp_path: Path) -> None:
    """Admin then reader sign in through the form; every page loads clean and draws its charts."""
    folders = _artifacts(tmp_path)
    base = browser_fleet.server.url
    browser = Chromium(chromium_binary, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        browser.open_page()
        browser.navigate(f"{base}/dashboard/fleet")  # 401: the sign-in form (an expected HTTP error)
        assert browser.evaluate("!!document.querySelector('form[action=\"/dashboard/sign-in\"]')")
        _sign_in(browser, base, browser_fleet.server.admin_token)
        failures: dict[str, list[str]] = {}
        timings: dict[str, float] = {}
        for page in PAGES:
            started = time.monotonic()
            _, problems = _visit(browser, base, browser_fleet.url(page), CHART_PAGES.get(page))
            timings[page] = round(time.monotonic() - started, 3)
            if problems:
                failures[page] = problems
            _shot(browser, folders, f"admin{page}")
        assert failures == {}
        assert max(timings.values()) < 10, timings
        _check_service_levels(browser, base, browser_fleet)

        rollout = browser_fleet.url("/dashboard/rollouts/{rollout_id}")
        state, _ = _visit(browser, base, rollout, "lines")
        assert {"Pause", "Promote", "Abort"} <= set(state["actions"])
        events = browser.run_and_wait(
            "document.querySelector('form[action$=\"/pause\"] input[name=reason]').value = 'by chromium';"
            "document.querySelector('button.action-pause').click()"
        )
        assert problems_in(events) == []
        assert browser.evaluate("location.pathname") == rollout
        text = browser.evaluate("document.body.innerText")
        assert "paused" in text and "by chromium" in text
        _shot(browser, folders, "admin-rollout-paused")
        browser.run_and_wait("document.querySelector('button.action-resume').click()")

        events = browser.run_and_wait(
            "document.querySelector('form[action=\"/dashboard/sign-out\"] button').click()"
        )
        assert problems_in(events) == []
        assert browser.evaluate("location.pathname") == "/dashboard/sign-in"
        _sign_in(browser, base, browser_fleet.reader_token)
        for page in ("/dashboard/fleet", rollout, browser_fleet.url("/dashboard/alerts/{alert_id}")):
            state, problems = _visit(browser, base, page, None)
            assert problems == [], page
            assert state["actions"] == [], f"a reader sees action buttons on {page}"
            _shot(browser, folders, f"reader{page}")
    finally:
        browser.close()
    assert len(list(folders[0].glob("*.png"))) >= len(PAGES) + 4


def test_pages_of_a_simulated_fleet_in_chromium(chromium_binary: str, tmp_path: Path) -> None:
    """A short fleet simulation (real agents, a rollout promoted) fills a server; its pages load clean."""
    from shelfcast.simulate import Candidate, SimulationOptions, simulation

    options = SimulationOptions(
        state_dir=tmp_path / "simulation",
        stores=4,
        items=6,
        history_periods=60,
        periods=4,
        candidates=[Candidate(multiply=1.0, label="good")],
        plan={
            "waves": [
                {"name": "canary", "share": 0.5, "bake_periods": 1},
                {"name": "everyone", "share": 1.0},
            ],
            "health": {"activation_timeout_seconds": 120.0, "stale_after_seconds": 600.0},
            "accuracy": {"max_wape_ratio": 3.0, "min_observations": 4, "min_stores": 1, "min_periods": 1},
        },
    )
    folders = _artifacts(tmp_path)
    with simulation(options) as sim:
        report = sim.run()
        assert report.rollouts and report.rollouts[0].rollout_id
        rollout_id = report.rollouts[0].rollout_id
        pages = {
            "/dashboard/fleet": "bars",
            f"/dashboard/models/{report.model_name}": None,
            "/dashboard/rollouts": None,
            f"/dashboard/rollouts/{rollout_id}": "lines",
            f"/dashboard/accuracy?model={report.model_name}": "heatmap",
            "/dashboard/alerts": None,
        }
        browser = Chromium(chromium_binary, tmp_path / "profile", tmp_path / "chromium.log")
        try:
            browser.open_page()
            _sign_in(browser, sim.server_url, sim.admin_token)
            failures = {}
            for page, chart in pages.items():
                state, problems = _visit(browser, sim.server_url, page, None)
                # a gate without values yet (no paired evidence in a step) shows "no data yet"
                if chart and not any(c["kind"] == chart and c["marks"] > 0 for c in state["charts"]):
                    problems.append(f"no {chart} chart drawn: {state['charts']}")
                if problems:
                    failures[page] = problems
                _shot(browser, folders, f"simulated{page}")
            assert failures == {}
            _visit(browser, sim.server_url, "/dashboard/fleet", None)
            fleet_text = browser.evaluate("document.body.innerText")
            assert all(store["store_id"] in fleet_text for store in report.stores), fleet_text
        finally:
            browser.close()
