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


def claim_id(store_id: str, key: str) -> str:
    """The one-column key of a store's idempotency key (``report_keys.claim``, ``monitoring_reports.claim``
    after the kind): ``<UTF-8 bytes of store_id>:<store_id>:<key>``, unambiguous whatever either holds."""
    return f"{len(store_id.encode())}:{store_id}:{key}"


CLAIMS_PER_INSERT = 500  # rows of one claiming INSERT (a prepared statement of a few thousand values)


def insert_claims(db: SqlStore, target: str, rows: Sequence[Sequence[Any]]) -> set[str]:
    """Insert ``rows`` into ``target`` (``"table (claim, ...)"``, the one-column key first) except those whose
    claim is stored already; the claims that were new. One statement per ``CLAIMS_PER_INSERT`` rows."""
    claimed: set[str] = set()
    for start in range(0, len(rows), CLAIMS_PER_INSERT):
        chunk = rows[start : start + CLAIMS_PER_INSERT]
        values = ", ".join(["(" + ", ".join("?" * len(chunk[0])) + ")"] * len(chunk))
        found = db.fetch_all(
            f"INSERT INTO {target} VALUES {values} ON CONFLICT DO NOTHING RETURNING claim",  # noqa: S608 - fixed names
            [value for row in chunk for value in row],
        )
        claimed.update(row["claim"] for row in found)
    return claimed


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
