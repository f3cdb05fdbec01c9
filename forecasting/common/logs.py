"""structlog set-up: JSON lines when stderr is not a terminal, readable console output when it is.

Logs go to stderr (journald reads it like stdout), so every command's stdout holds its data alone: a
token, a table, ``-o json``.

Context such as ``store_id`` or ``model_version`` is bound with ``structlog.contextvars`` and appears on
every line logged in that context. Each unit of work logs one canonical line (``forecast_scored ...``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import msgspec
import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog and the stdlib root logger once, in an entry point."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    use_console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the stdlib (uvicorn, distributed) go to stderr at warning level and up.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A named structlog logger (the name becomes the ``logger_name`` field); lazy, usable before set-up."""
    # ``logger=`` cannot be used: it collides with the first parameter of structlog.wrap_logger.
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[logging]`` section shared by every component's config."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: LogFormat = "auto"


@contextlib.contextmanager
def progress(event: str, *, interval_seconds: float = 30.0, **context: Any) -> Iterator[None]:
    """Log ``event`` with ``elapsed_seconds`` every ``interval_seconds`` while the block runs.

    Long steps (a backtest, a model fit) then show they are alive in a log that is not a terminal, where
    statsforecast's progress bar is off.
    """
    log = get_logger("forecasting.progress")
    began = time.perf_counter()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval_seconds):
            log.info(event, elapsed_seconds=round(time.perf_counter() - began, 1), **context)

    thread = threading.Thread(target=beat, name=f"progress-{event}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
