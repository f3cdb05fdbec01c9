"""Alert delivery to webhooks: JSON body signed with HMAC-SHA256, retries with backoff, every attempt logged.

Headers: ``X-Shelfcast-Event`` (``alert.firing`` / ``alert.resolved``), ``X-Shelfcast-Delivery`` (the
alert id and event: receivers de-duplicate on it) and ``X-Shelfcast-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body bytes with the webhook's secret. Delivery runs on a background thread,
never in the request that triggered the alert.

Retries follow ``webhook_retry``: a dropped connection, a timeout or a 500/502/503/504/429 answer is
tried again, up to the webhook's ``max_attempts``, with full-jitter exponential backoff from its
``backoff_seconds`` up to ``max_backoff_seconds``; a 429 or 503 with ``Retry-After`` waits what the
receiver asked (plus jitter), never longer than ``max_backoff_seconds``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from forecasting.common.logs import get_logger
from forecasting.common.retry import RETRYABLE_STATUSES, RetryPolicy
from server.db import utcnow
from server.quality.alerts import SEVERITY_RANK, WebhookConfig

log = get_logger("server.quality.webhooks")

SIGNATURE_HEADER = "X-Shelfcast-Signature"
# A receiver's 500 is tried again too: it is most often a passing fault of its own, and a repeated
# delivery is harmless (receivers de-duplicate on X-Shelfcast-Delivery).
WEBHOOK_RETRY_STATUSES = RETRYABLE_STATUSES | {500}
MAX_DELIVERY_SECONDS = 600.0


def webhook_retry(hook: WebhookConfig) -> RetryPolicy:
    """The one retry policy of alert webhooks, bounded by the webhook's own settings."""
    return RetryPolicy(
        max_attempts=hook.max_attempts,
        max_elapsed_seconds=MAX_DELIVERY_SECONDS,
        backoff_seconds=hook.backoff_seconds,
        max_backoff_seconds=hook.max_backoff_seconds,
        max_retry_after_seconds=hook.max_backoff_seconds,
        statuses=WEBHOOK_RETRY_STATUSES,
    )


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``body`` under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` under ``secret`` (constant-time compare)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


class WebhookSender:
    """Delivers alert events to the configured webhooks on daemon threads; records each attempt."""

    def __init__(
        self,
        hooks: list[WebhookConfig],
        record: Callable[[dict[str, Any]], None],
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.hooks = hooks
        self.record = record
        self.sleep = sleep
        self._threads: list[threading.Thread] = []

    def send(self, alert_id: str, event: str, severity: str, body: bytes) -> None:
        for hook in self.hooks:
            if SEVERITY_RANK[severity] < SEVERITY_RANK[hook.min_severity]:
                continue
            thread = threading.Thread(
                target=self._deliver, args=(hook, alert_id, event, body), name="webhook", daemon=True
            )
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def join(self, timeout: float) -> None:
        """Wait (bounded) for deliveries in flight (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _deliver(self, hook: WebhookConfig, alert_id: str, event: str, body: bytes) -> None:
        import httpx

        headers = {
            "Content-Type": "application/json",
            "X-Shelfcast-Event": f"alert.{event}",
            "X-Shelfcast-Delivery": f"{alert_id}:{event}",
        }
        if hook.secret:
            headers[SIGNATURE_HEADER] = sign(hook.secret, body)
        tries = itertools.count(1)

        def attempt() -> httpx.Response:
            number = next(tries)
            try:
                response = httpx.post(hook.url, content=body, headers=headers, timeout=hook.timeout_seconds)
            except httpx.HTTPError as exc:
                self._attempted(hook, alert_id, event, number, None, f"{type(exc).__name__}: {exc}")
                raise
            error = "" if response.is_success else f"answered {response.status_code}"
            self._attempted(hook, alert_id, event, number, response.status_code, error)
            return response

        with contextlib.suppress(httpx.HTTPError):  # every attempt is recorded and logged already
            webhook_retry(hook).call(attempt, what=f"webhook {hook.url}", sleep=self.sleep)

    def _attempted(
        self, hook: WebhookConfig, alert_id: str, event: str, attempt: int, status: int | None, error: str
    ) -> None:
        """Record one attempt in the delivery log and log it (``error`` empty when it was delivered)."""
        self.record(
            {"alert_id": alert_id, "event": event, "target": hook.url, "attempt": attempt,
             "status_code": status, "ok": not error, "error": error[:500], "attempted_at": utcnow()}
        )  # fmt: skip
        if error:
            log.warning(
                "webhook_failed",
                alert_id=alert_id,
                alert_event=event,
                url=hook.url,
                attempt=attempt,
                reason=error,
            )
        else:
            log.info("webhook_delivered", alert_id=alert_id, alert_event=event, url=hook.url, attempt=attempt)
