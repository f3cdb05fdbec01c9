"""structlog set-up: JSON lines when stdout is not a terminal, readable console output when it is.

Context such as ``store_id`` or ``model_version`` is bound with ``structlog.contextvars`` and appears on
every line logged in that context. Each unit of work logs one canonical line (``forecast_scored ...``).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import msgspec
import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog and the stdlib root logger once, in an entry point."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    use_console = sys.stdout.isatty() if fmt == "auto" else fmt == "console"
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
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
