"""Alert webhook delivery against a real receiver on loopback: what is retried, and how long it waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from server.quality.alerts import WebhookConfig
from server.quality.webhooks import WebhookSender, verify
from tests.conftest import free_port


class _Receiver(BaseHTTPRequestHandler):
    """Answers the queued statuses (with their headers) first, then 204; records arrival times."""

    script: ClassVar[list[tuple[int, dict[str, str]]]] = []
    seen: ClassVar[list[tuple[float, bool]]] = []

    def log_message(self, *_: object) -> None:
        return

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        kind = type(self)
        signed = verify("s3cret", body, self.headers.get("X-Shelfcast-Signature"))
        kind.seen.append((time.monotonic(), signed))
        status, headers = kind.script.pop(0) if kind.script else (204, {})
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.script, _Receiver.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _send(url: str, **hook: Any) -> list[dict[str, Any]]:
    """Deliver one alert event and return the delivery log's rows."""
    rows: list[dict[str, Any]] = []
    sender = WebhookSender([WebhookConfig(url=url, secret="s3cret", **hook)], rows.append)
    sender.send("a1", "firing", "critical", b'{"alert": {}}')
    sender.join(30)
    return rows


def test_a_429_with_retry_after_is_honoured_then_delivered(receiver: str) -> None:
    """``429 Retry-After: 1``: the next try comes 1 s later (plus jitter), every attempt is logged."""
    _Receiver.script = [(429, {"Retry-After": "1"})]
    rows = _send(receiver, backoff_seconds=0.1, max_backoff_seconds=5.0)
    assert [(r["attempt"], r["status_code"], r["ok"]) for r in rows] == [(1, 429, False), (2, 204, True)]
    waited = _Receiver.seen[1][0] - _Receiver.seen[0][0]
    assert 1.0 <= waited <= 1.6, waited
    assert all(valid for _, valid in _Receiver.seen)


def test_retry_after_is_capped_by_max_backoff(receiver: str) -> None:
    """A receiver asking for an hour is given ``max_backoff_seconds`` at most."""
    _Receiver.script = [(503, {"Retry-After": "3600"})]
    rows = _send(receiver, backoff_seconds=0.1, max_backoff_seconds=0.5)
    assert [r["ok"] for r in rows] == [False, True]
    assert _Receiver.seen[1][0] - _Receiver.seen[0][0] <= 1.0


def test_attempts_are_bounded_and_a_refusal_is_not_retried(receiver: str) -> None:
    """5xx answers are retried up to ``max_attempts``; a 400 ends the delivery at once."""
    _Receiver.script = [(502, {}), (500, {}), (504, {}), (204, {})]
    rows = _send(receiver, backoff_seconds=0.01, max_attempts=3)
    assert [r["status_code"] for r in rows] == [502, 500, 504]
    _Receiver.script = [(400, {})]
    rows = _send(receiver, backoff_seconds=0.01, max_attempts=3)
    assert [(r["status_code"], r["error"]) for r in rows] == [(400, "answered 400")]


def test_an_unreachable_receiver_is_retried_and_every_attempt_logged() -> None:
    """Nothing listens: ``max_attempts`` attempts, each in the log with the transport error."""
    rows = _send(f"http://127.0.0.1:{free_port()}/hook", backoff_seconds=0.01, max_attempts=2)
    assert [(r["attempt"], r["status_code"], r["ok"]) for r in rows] == [(1, None, False), (2, None, False)]
    assert all("ConnectError" in r["error"] for r in rows)
