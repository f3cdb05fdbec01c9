"""Alert delivery to webhooks: JSON body signed with HMAC-SHA256, retries with backoff, every attempt logged.

Headers: ``X-Shelfcast-Event`` (``alert.firing`` / ``alert.resolved``), ``X-Shelfcast-Delivery`` (the
alert id and event: receivers de-duplicate on it) and ``X-Shelfcast-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body bytes with the webhook's secret. Delivery runs on a background thread,
never in the request that triggered the alert.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from forecasting.common.logs import get_logger
from server.db import utcnow
from server.quality.alerts import SEVERITY_RANK, WebhookConfig

log = get_logger("server.quality.webhooks")

SIGNATURE_HEADER = "X-Shelfcast-Signature"


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
        delay = hook.backoff_seconds
        for attempt in range(1, hook.max_attempts + 1):
            status: int | None = None
            error = ""
            try:
                response = httpx.post(hook.url, content=body, headers=headers, timeout=hook.timeout_seconds)
                status = response.status_code
                ok = 200 <= status < 300
                if not ok:
                    error = f"answered {status}"
            except httpx.HTTPError as exc:
                ok = False
                error = f"{type(exc).__name__}: {exc}"
            self.record(
                {"alert_id": alert_id, "event": event, "target": hook.url, "attempt": attempt,
                 "status_code": status, "ok": ok, "error": error[:500], "attempted_at": utcnow()}
            )  # fmt: skip
            if ok:
                log.info(
                    "webhook_delivered", alert_id=alert_id, alert_event=event, url=hook.url, attempt=attempt
                )
                return
            retry = attempt < hook.max_attempts and (status is None or status >= 500 or status == 429)
            log.warning(
                "webhook_failed", alert_id=alert_id, alert_event=event, url=hook.url, attempt=attempt,
                reason=error, retry_in_seconds=round(delay, 2) if retry else None,
            )  # fmt: skip
            if not retry:
                return
            self.sleep(delay)
            delay = min(delay * 2, hook.max_backoff_seconds)
