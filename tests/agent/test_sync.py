"""Pieces of the sync client (against hostile loopback servers) and the notify protocol."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest

from agent.errors import ResponseTooLargeError, SyncError
from agent.sync import SYNC_RETRY, SyncClient
from forecasting.common.retry import RetryPolicy, backoff_seconds
from forecasting.common.systemd_notify import notify, watchdog_interval_seconds


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    """Delays stay within [base/2, min(cap, base*2^n)], spread out, and never exceed the cap."""
    first = [backoff_seconds(0, 2.0, 60.0) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in first)
    later = [backoff_seconds(4, 2.0, 60.0) for _ in range(200)]
    assert all(1.0 <= d <= 32.0 for d in later) and max(later) > 16.0
    assert len({round(d, 3) for d in later}) > 50  # jittered, not in lockstep
    capped = [backoff_seconds(50, 2.0, 60.0) for _ in range(200)]
    assert max(capped) <= 60.0


def test_notify_sends_one_datagram_and_is_silent_without_a_socket(tmp_path: Path) -> None:
    """notify() writes one datagram to $NOTIFY_SOCKET and returns False when there is none."""
    address = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(5)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": address})
        assert listener.recv(100) == b"READY=1"
    assert not notify("READY=1", environ={})
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_seconds({}) is None


class _Hostile(BaseHTTPRequestHandler):
    """Answers every request with 64 MB: announced, chunked without a length, or as a gzip bomb."""

    mode = "announced"
    sent = 0
    bomb = b""

    def log_message(self, *_: object) -> None:
        return

    def _answer(self) -> None:
        block = b" " * (1 << 20)
        kind = type(self)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if kind.mode == "gzip":
            bomb = kind.bomb
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)
            kind.sent = len(bomb)
            return
        if kind.mode == "announced":
            self.send_header("Content-Length", str(64 << 20))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            for _ in range(64):
                self.wfile.write(block)
                kind.sent += len(block)
        except OSError:
            return

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()


@pytest.mark.parametrize("mode", ["announced", "unannounced", "gzip"])
def test_every_answer_is_read_within_the_response_cap(mode: str) -> None:
    """Assignment, enrollment and report answers over ``max_response_bytes`` raise ResponseTooLargeError
    naming the cap, a compressed answer is refused undecoded; the 64 MB are never held in memory."""
    _Hostile.mode, _Hostile.sent = mode, 0
    if mode == "gzip" and not _Hostile.bomb:
        _Hostile.bomb = gzip.compress(b"{" + b" " * (64 << 20) + b"}", compresslevel=9)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client = SyncClient(
        f"http://127.0.0.1:{httpd.server_address[1]}", timeout_seconds=10, max_response_bytes=65536
    )
    try:
        tracemalloc.start()
        for call in (
            lambda: client.poll_assignment("S1", None),
            lambda: client.enroll("S1", "sce_x"),
            lambda: client.post_report("/v1/heartbeats", b"{}", "k1"),
        ):
            expected = (
                (SyncError, "gzip-encoded") if mode == "gzip" else (ResponseTooLargeError, "65536-byte cap")
            )
            with pytest.raises(expected[0], match=expected[1]):
                call()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        client.close()
        httpd.shutdown()
        httpd.server_close()
    assert peak < 8 << 20, peak  # the 64 MB answers were never held whole


def test_an_assignment_out_of_range_is_a_sync_error() -> None:
    """An assignment whose version is beyond the bounds is an unusable answer (SyncError), not a crash."""

    class Answer(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            return

        def do_GET(self) -> None:
            body = msgspec.json.encode(
                {
                    "store_id": "S1",
                    "model_name": "m",
                    "version": 2**63,
                    "bundle_sha256": "0" * 64,
                    "bundle_size": 1,
                }
            )
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = SyncClient(f"http://127.0.0.1:{httpd.server_address[1]}", timeout_seconds=10)
    try:
        with pytest.raises(SyncError, match="version"):
            client.poll_assignment("S1", None)
    finally:
        client.close()
        httpd.shutdown()
        httpd.server_close()


class _Central(BaseHTTPRequestHandler):
    """Stands in for the central server's report routes: answers the queued statuses (with their headers)
    first, then 200; records every request as (monotonic time, idempotency key)."""

    script: ClassVar[list[tuple[int, dict[str, str]]]] = []
    seen: ClassVar[list[tuple[float, str]]] = []

    def log_message(self, *_: object) -> None:
        return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = type(self)
        kind.seen.append((time.monotonic(), self.headers.get("Idempotency-Key", "")))
        status, headers = kind.script.pop(0) if kind.script else (200, {})
        if status == 0:  # the connection is dropped without an answer
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def central() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 playing ``_Central``; yields its URL."""
    _Central.script, _Central.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Central)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _deliver(client: SyncClient, keys: list[str]) -> list[int]:
    """Deliver reports oldest first, stopping at the first one not accepted (as the outbox flush does)."""
    statuses = []
    for key in keys:
        statuses.append(client.post_report("/v1/heartbeats", b"{}", key))
        if statuses[-1] != 200:
            break
    return statuses


def test_a_429_with_retry_after_waits_that_long_then_delivers_in_order(central: str) -> None:
    """``429 Retry-After: 2`` on the oldest report: it is sent again 2 s later (plus at most the first
    backoff's jitter), then every report is delivered once, oldest first."""
    _Central.script = [(429, {"Retry-After": "2"})]
    client = SyncClient(central, timeout_seconds=10)
    try:
        assert _deliver(client, ["r1", "r2", "r3"]) == [200, 200, 200]
    finally:
        client.close()
    assert [key for _, key in _Central.seen] == ["r1", "r1", "r2", "r3"]
    waited = _Central.seen[1][0] - _Central.seen[0][0]
    assert 2.0 <= waited <= 2.0 + SYNC_RETRY.backoff_seconds + 0.5, waited


def test_retry_after_as_an_http_date_holds_the_next_request_back(central: str) -> None:
    """With the tries spent on a 503 whose Retry-After is an HTTP date, the answer goes back to the caller
    and the client sends nothing more until that date."""
    until = datetime.now(UTC) + timedelta(seconds=3)
    _Central.script = [(503, {"Retry-After": format_datetime(until, usegmt=True)})]
    client = SyncClient(central, timeout_seconds=10, retry=RetryPolicy(max_attempts=1))
    try:
        assert _deliver(client, ["r1"]) == [503]
        assert _deliver(client, ["r1", "r2"]) == [200, 200]
    finally:
        client.close()
    assert [key for _, key in _Central.seen] == ["r1", "r1", "r2"]
    waited = _Central.seen[1][0] - _Central.seen[0][0]
    assert 1.5 <= waited <= 3.5, waited  # the date has whole seconds: 2 to 3 s away when it was sent


def test_only_what_a_later_try_can_fix_is_tried_again(central: str) -> None:
    """A dropped connection and 502/503/504 are tried again (bounded), a 500 or 400 is answered at once."""
    policy = RetryPolicy(max_attempts=3, backoff_seconds=0.05, max_backoff_seconds=0.1)
    client = SyncClient(central, timeout_seconds=10, retry=policy)
    try:
        _Central.script = [(0, {}), (502, {}), (200, {})]
        assert _deliver(client, ["dropped"]) == [200]
        _Central.script = [(503, {}), (504, {}), (503, {}), (200, {})]
        assert _deliver(client, ["spent"]) == [503]
        _Central.script = [(500, {})]
        assert _deliver(client, ["server-error"]) == [500]
        _Central.script = [(400, {})]
        assert _deliver(client, ["refused"]) == [400]
    finally:
        client.close()
    keys = [key for _, key in _Central.seen]
    assert keys == ["dropped"] * 3 + ["spent"] * 3 + ["server-error", "refused"]


def test_a_refused_connection_is_tried_within_the_bounds_then_a_sync_error() -> None:
    """Nothing listens: three tries, then ``SyncError`` naming the transport error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = SyncClient(f"http://127.0.0.1:{port}", timeout_seconds=2)
    started = time.monotonic()
    try:
        with pytest.raises(SyncError, match="ConnectError"):
            client.post_report("/v1/heartbeats", b"{}", "k")
    finally:
        client.close()
    assert time.monotonic() - started < SYNC_RETRY.max_elapsed_seconds
