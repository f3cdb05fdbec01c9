"""Cursor pagination: an opaque cursor holding the sort key of the last item, a capped page size."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from server.errors import InvalidInputError

T = TypeVar("T")


class PageRequest(msgspec.Struct, frozen=True):
    limit: int
    after: list[Any] | None


def encode_cursor(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = msgspec.json.decode(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, msgspec.DecodeError):
        raise InvalidInputError("the cursor is not one this server handed out") from None
    if not isinstance(value, list):
        raise InvalidInputError("the cursor is not one this server handed out")
    return value


def page_request(limit: int | None, cursor: str | None, *, default: int, cap: int) -> PageRequest:
    """Validate ``limit`` (1..cap, default ``default``) and decode ``cursor``."""
    size = default if limit is None else limit
    if size < 1:
        raise InvalidInputError("limit must be at least 1")
    return PageRequest(limit=min(size, cap), after=decode_cursor(cursor) if cursor else None)


def next_cursor(rows: list[T], limit: int, key: Callable[[T], Sequence[Any]]) -> tuple[list[T], str | None]:
    """Given up to ``limit + 1`` rows, the page and the cursor of the next one (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, encode_cursor(key(page[-1]))
