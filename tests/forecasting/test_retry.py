"""The shared retry policy's reading of ``Retry-After`` and of which transport errors are transient."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from forecasting.common.retry import RetryPolicy, retry_after_seconds, transient_error

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),
        ("Sun, 01 Mar 2026 11:59:00 GMT", 0.0),  # a date already past: no wait
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str | None, seconds: float | None) -> None:
    """Delta-seconds or an HTTP date become seconds to wait; anything else asks for no particular wait."""
    assert retry_after_seconds(value, now=NOW) == seconds


def test_asked_wait_is_read_on_429_and_503_only_and_capped() -> None:
    """Only 429 and 503 carry a wait; one longer than ``max_retry_after_seconds`` is cut to it."""
    policy = RetryPolicy(max_retry_after_seconds=30.0)
    ask = httpx.Headers({"Retry-After": "3600"})
    assert policy.asked_wait(httpx.Response(429, headers=ask)) == 30.0
    assert policy.asked_wait(httpx.Response(503, headers={"Retry-After": "2"})) == 2.0
    assert policy.asked_wait(httpx.Response(502, headers=ask)) is None
    assert policy.asked_wait(httpx.Response(429)) is None


def test_transient_errors_are_connection_failures_and_timeouts() -> None:
    """Refused, dropped and timed-out connections are transient; an untrusted certificate is not."""
    assert transient_error(httpx.ConnectError("connection refused"))
    assert transient_error(httpx.ReadTimeout("timed out"))
    assert transient_error(httpx.RemoteProtocolError("server disconnected without sending a response"))
    untrusted = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert not transient_error(untrusted)
    assert not transient_error(httpx.UnsupportedProtocol("ftp://"))
    assert not transient_error(ValueError("not a transport error"))
