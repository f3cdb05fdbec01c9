"""The admin CLI's side of the HTTP API: the client (``Remote``), where it connects, shared options, output.

Server URL and token come from ``--server``/``--token``, else ``SHELFCAST_SERVER_URL``/``SHELFCAST_TOKEN``,
else a client config file (``--client-config``, ``[client] server_url, token``), else loopback defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from forecasting.common.tables import render
from server.errors import ServerError

F = TypeVar("F", bound=Callable[..., Any])
MAX_LIST_ITEMS = 10_000


class RemoteError(ServerError):
    """The server answered with a problem (its message is passed on as is), or could not be reached."""


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


class Remote:
    """A small JSON client for the server's /v1 API."""

    def __init__(self, url: str, token: str, timeout_seconds: float) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_seconds)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the server at {self.url}: {exc}") from None
        return check_response(response)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def paginate(self, path: str, *, limit: int | None, **params: Any) -> list[Any]:
        """Follow ``next_cursor`` until ``limit`` items (all when None, capped) are collected."""
        wanted = MAX_LIST_ITEMS if limit is None else limit
        items: list[Any] = []
        cursor = None
        while len(items) < wanted:
            page = self.get(path, cursor=cursor, limit=min(wanted - len(items), 500), **params)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items[:wanted]

    def close(self) -> None:
        self._client.close()


def remote_options(func: F) -> F:
    """``--server``, ``--token``, ``--client-config`` on every admin command."""
    func = click.option(
        "--client-config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="TOML file with [client] server_url and token.",
    )(func)
    func = click.option(
        "--token", envvar="SHELFCAST_TOKEN", default=None, help="Bearer token (env SHELFCAST_TOKEN)."
    )(func)
    return click.option(
        "--server",
        "server_url",
        envvar="SHELFCAST_SERVER_URL",
        default=None,
        help="Server base URL (env SHELFCAST_SERVER_URL; default http://127.0.0.1:8470).",
    )(func)


@contextmanager
def connect(server_url: str | None, token: str | None, client_config: Path | None) -> Iterator[Remote]:
    from server.config import load_client_config

    config = load_client_config([client_config] if client_config else []).client
    remote = Remote(server_url or config.server_url, token or config.token, config.timeout_seconds)
    try:
        yield remote
    finally:
        remote.close()


def emit(data: Any, fmt: str, columns: list[str] | None = None) -> None:
    click.echo(render(data, fmt, columns))  # type: ignore[arg-type]


limit_option = click.option("--limit", type=int, default=None, help="At most this many rows (default: all).")
