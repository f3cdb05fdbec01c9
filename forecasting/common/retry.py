"""The retry policy of calls over HTTP: which failures are tried again, how long to wait, when to stop.

A try is repeated only when a later one may succeed: a connection refused, reset or dropped, a timeout,
or an answer whose status says so (429, 502, 503, 504 unless the caller names others). The wait before
try ``n + 1`` is drawn uniformly from ``[0, min(max_backoff_seconds, backoff_seconds * 2**(n-1))]``
(exponential backoff with full jitter: callers that failed together do not come back together). A 429 or
503 answer carrying ``Retry-After`` (delta-seconds or an HTTP date) waits what the server asked plus that
jittered backoff, the whole capped by ``max_retry_after_seconds``. Tries stop after ``max_attempts``, or
when the next wait would end more than ``max_elapsed_seconds`` after the first try began; the caller then
gets the last answer, or the last error is raised.

The mechanics are tenacity's, set up here once; each side defines its policy with a ``RetryPolicy``
(the agent's sync client, the server's alert webhooks).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar, cast

import tenacity

from forecasting.common.logs import get_logger

log = get_logger("forecasting.common.retry")

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})


class Answer(Protocol):
    """What the policy reads of an HTTP answer (an ``httpx.Response`` or a client's own answer type)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


AnswerT = TypeVar("AnswerT", bound=Answer)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, delta-seconds or an HTTP date (a date in the past is
    0); None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are in GMT
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def transient_error(exc: BaseException) -> bool:
    """A transport failure a later try may not meet: a connection refused, reset or dropped, a timeout.
    A server certificate that is not trusted stays untrusted, so it is not one."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return True
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return "CERTIFICATE_VERIFY_FAILED" not in str(exc)
    return False


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounds, backoff and retryable statuses of one side's calls; ``call`` runs a call under them."""

    max_attempts: int = 3
    max_elapsed_seconds: float = 30.0
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0
    max_retry_after_seconds: float = 30.0
    statuses: frozenset[int] = RETRYABLE_STATUSES

    def asked_wait(self, answer: Answer) -> float | None:
        """The wait a 429 or 503 answer asks for with ``Retry-After``, capped; None when it asks none."""
        if answer.status_code not in RETRY_AFTER_STATUSES:
            return None
        asked = retry_after_seconds(answer.headers.get("retry-after"))
        return None if asked is None else min(asked, self.max_retry_after_seconds)

    def call(
        self, attempt: Callable[[], AnswerT], *, what: str, sleep: Callable[[float], None] = time.sleep
    ) -> AnswerT:
        """Run ``attempt`` until it answers a status not retried, raises an error not transient, or the
        bounds are spent; returns the last answer or raises the last error."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_before_delay(self.max_elapsed_seconds),
            wait=_WaitAsked(self),
            retry=tenacity.retry_if_exception(transient_error)
            | tenacity.retry_if_result(lambda answer: answer.status_code in self.statuses),
            sleep=sleep,
            before_sleep=lambda state: _log_retry(what, state),
            retry_error_callback=_last_outcome,
        )
        return retrying(attempt)


def backoff_seconds(failures: int, base: float, cap: float) -> float:
    """The wait after ``failures`` failures in a row of a repeated task (the agent's polls and report
    flushes between ticks): jittered exponential backoff, uniform in
    ``[min(base/2, cap), min(cap, base * 2**failures)]`` (tenacity's ``wait_random_exponential``; the
    floor keeps a failing task from coming straight back)."""
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(0, failures) + 1
    wait = tenacity.wait_random_exponential(multiplier=base, max=cap, min=min(base / 2, cap))
    return float(wait(state))


class _WaitAsked(tenacity.wait.wait_base):
    """Full-jitter exponential backoff, after what a 429 or 503 asked with ``Retry-After`` (capped)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.backoff = tenacity.wait_random_exponential(
            multiplier=policy.backoff_seconds, max=policy.max_backoff_seconds
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        backoff = self.backoff(retry_state)
        outcome = retry_state.outcome
        if outcome is None or outcome.failed:
            return backoff
        asked = self.policy.asked_wait(cast(Answer, outcome.result()))
        return backoff if asked is None else min(asked + backoff, self.policy.max_retry_after_seconds)


def _last_outcome(retry_state: tenacity.RetryCallState) -> object:
    """The bounds are spent: the last answer is the caller's, the last error is raised."""
    assert retry_state.outcome is not None
    return retry_state.outcome.result()


def _log_retry(what: str, retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    assert outcome is not None and retry_state.next_action is not None
    if outcome.failed:
        exc = outcome.exception()
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = f"answered {cast(Answer, outcome.result()).status_code}"
    log.warning(
        "request_retrying",
        what=what,
        attempt=retry_state.attempt_number,
        reason=reason,
        retry_in_seconds=round(retry_state.next_action.sleep, 2),
    )
