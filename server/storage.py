"""The storage seam: what the server's domains need of their SQL database and of their blob store.

The repositories (``server/<domain>/repository.py``), the quality domain's actuals and the group writer
(``server/writer.py``) reach the database only through ``SqlStore``; the registry's services and the
bundle download reach the bundle archives only through ``BlobStorage``. ``server.db.Database`` (one DuckDB
file) and ``server.blobs.BlobStore`` (a content-addressed folder) are today's implementations; another
database or an object store is a new module implementing the same protocol, chosen in ``server/app.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable


@runtime_checkable
class SqlStore(Protocol):
    """A SQL database every thread of the server may use at once.

    Reads (``fetch_all``, ``fetch_one``, ``scalar``) never wait for writes and see what was committed when
    they began. Writes (``execute`` and everything inside ``transaction``) are serialised; a statement
    outside a transaction commits by itself. ``transaction`` commits on exit and rolls back on an error; a
    transaction opened inside another on the same thread joins it (the group writer wraps many requests'
    transactions in one commit). ``checkpoint`` makes committed writes durable beyond the write-ahead log
    (a database without that notion does nothing). Parameters are positional (``?``).
    """

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None: ...

    def fetch_all(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]: ...

    def fetch_one(self, sql: str, params: Sequence[Any] | None = None) -> dict[str, Any] | None: ...

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any: ...

    def transaction(self) -> AbstractContextManager[SqlStore]: ...

    def checkpoint(self) -> None: ...


@runtime_checkable
class BlobStorage(Protocol):
    """Immutable blobs named by their sha256: a blob is either absent or complete.

    Uploads are staged in ``tmp_dir`` (a local folder: ``new_temp`` opens a file there) and handed over
    complete with ``adopt``; ``path_for`` is a local file holding the blob, which the bundle download
    serves with ``Range`` support (a remote store keeps a local copy of the blobs it serves).
    """

    tmp_dir: Path

    def path_for(self, sha256: str) -> Path: ...

    def exists(self, sha256: str) -> bool: ...

    def new_temp(self) -> tuple[BinaryIO, Path]: ...

    def adopt(self, temp_path: Path, sha256: str) -> Path: ...
