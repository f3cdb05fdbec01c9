"""The retraining schedule: a thread that calls back at each time of a cron expression (UTC)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from forecasting.common.logs import get_logger

log = get_logger("server.retraining.scheduler")

MAX_SLEEP_SECONDS = 60.0  # re-check the clock at least this often (suspend, clock changes)


def next_time(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` (aware, UTC) that matches the cron ``expression``."""
    from croniter import croniter

    value = croniter(expression, after.astimezone(UTC)).get_next(datetime)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


class CronScheduler:
    """Calls ``fire(due_time)`` at every time of ``expression``; a missed time (server down) is skipped."""

    def __init__(self, expression: str, fire: Callable[[datetime], None]) -> None:
        self.expression = expression
        self.fire = fire
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.next_at: datetime | None = None

    def start(self, first_at: datetime | None = None) -> None:
        """Start the thread; the first call is at the next time of the expression (or at ``first_at``)."""
        if self._thread is not None:
            return
        self.next_at = first_at or next_time(self.expression, datetime.now(UTC))
        self._thread = threading.Thread(target=self._loop, name="retraining-scheduler", daemon=True)
        self._thread.start()
        log.info(
            "retraining_schedule_started", schedule=self.expression, next_run_at=self.next_at.isoformat()
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            assert self.next_at is not None
            now = datetime.now(UTC)
            if now >= self.next_at:
                due = self.next_at
                self.next_at = next_time(self.expression, now)
                try:
                    self.fire(due)
                except Exception as exc:  # a failed trigger is logged; the schedule goes on
                    log.exception("retraining_schedule_failed", due=due.isoformat(), reason=str(exc))
                continue
            self._stop.wait(min((self.next_at - now).total_seconds(), MAX_SLEEP_SECONDS))
