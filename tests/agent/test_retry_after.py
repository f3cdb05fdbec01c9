"""A real agent told to slow down: ``429 Retry-After`` holds its outbox back that long, order kept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.sync import SYNC_RETRY
from tests.agent.support import AgentHandle, make_keys, wait_until

pytestmark = pytest.mark.slow

RETRY_AFTER_SECONDS = 2


@dataclass
class Throttling:
    """What a busy central server saw: every report POST as (monotonic time, key, sent_at, status)."""

    url: str = ""
    throttle: int = 0  # the next this many report POSTs are answered 429 Retry-After
    posts: list[tuple[float, str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[tuple[float, str, str, int]]:
        with self.lock:
            return [post for post in self.posts if post[3] == 200]


@pytest.fixture
def central() -> Iterator[Throttling]:
    """A real HTTP server on 127.0.0.1: no assignment for the store, heartbeats stored or throttled."""
    state = Throttling()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            return

        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                status = 429 if state.throttle > 0 else 200
                state.throttle -= status == 429
                key = self.headers.get("Idempotency-Key", "")
                state.posts.append((time.monotonic(), key, body["sent_at"], status))
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", str(RETRY_AFTER_SECONDS))
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_429_with_retry_after_holds_the_outbox_back_then_it_drains_in_order(
    tmp_path: Path, central: Throttling
) -> None:
    """The oldest report answered ``429 Retry-After: 2`` is sent again about 2 s later, before any newer
    one; then every report queued arrives once, oldest first, and the outbox empties."""
    _, public = make_keys(tmp_path)
    agent = AgentHandle(tmp_path, central.url, public, agent={"token": "sct_store"})
    agent.start()
    try:
        wait_until(lambda: len(central.accepted()) >= 1, 30, what="a first heartbeat stored")
        with central.lock:
            central.throttle = 1
            first_throttled = len(central.posts)
        wait_until(lambda: len(central.posts) >= first_throttled + 4, 30, what="three deliveries after it")
        wait_until(lambda: agent.status()["outbox_size"] == 0, 30, what="outbox drained")
        with central.lock:
            posts = list(central.posts)
    finally:
        agent.close()
    throttled = posts[first_throttled]
    assert throttled[3] == 429
    again = posts[first_throttled + 1]
    assert again[1] == throttled[1] and again[3] == 200, "the throttled report goes first when sent again"
    waited = again[0] - throttled[0]
    assert RETRY_AFTER_SECONDS <= waited <= RETRY_AFTER_SECONDS + SYNC_RETRY.backoff_seconds + 1.0, waited
    accepted = [post for post in posts if post[3] == 200]
    keys = [post[1] for post in accepted]
    assert len(keys) == len(set(keys)), "each report stored once"
    sent_at = [post[2] for post in accepted]
    assert sent_at == sorted(sent_at), "delivered oldest first"
