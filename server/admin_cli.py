"""Admin CLI over HTTP only: ``shelfcast models|runs|datasets|stores ...`` (never opens the database)."""

from __future__ import annotations

from typing import Any

from server.errors import ServerError


class RemoteError(ServerError):
    """The server answered with a problem (its message is passed on as is)."""


def check_response(response: Any) -> Any:
    """The decoded JSON body of a successful response, or ``RemoteError`` with the server's reason."""
    if response.status_code < 400:
        return response.json() if response.content else None
    try:
        body = response.json()
        detail = body.get("detail") or body.get("title")
    except ValueError:
        detail = response.text[:200]
    raise RemoteError(f"server refused ({response.status_code}): {detail}")
