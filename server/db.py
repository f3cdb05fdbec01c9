"""The server's one DuckDB connection: opened once by the server process, migrated at start, serialised.

The server process is the sole writer of its file; DuckDB's own file lock makes a second process fail,
and that failure becomes a ``StorageLockedError`` with a message saying what to do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forecasting.logs import get_logger
from server.errors import ServerError, StorageLockedError
from server.migrations import MIGRATIONS, Migration

if TYPE_CHECKING:
    import duckdb

log = get_logger("server.db")

DB_FILE_NAME = "registry.duckdb"


def utcnow() -> datetime:
    """Now, as the naive UTC timestamp the schema stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored naive UTC timestamp as an aware datetime (for the wire)."""
    return None if value is None else value.replace(tzinfo=UTC)


def to_naive_utc(value: datetime | None) -> datetime | None:
    """An incoming datetime (aware or naive UTC) as the naive UTC value the schema stores."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


class Database:
    """One connection, one lock: every statement runs under the lock, transactions hold it throughout."""

    def __init__(self, path: Path, connection: duckdb.DuckDBPyConnection) -> None:
        self.path = path
        self._con = connection
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, *, migrate: bool = True) -> Database:
        """Open (creating if needed) the file at ``path`` and apply pending migrations."""
        import duckdb

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StorageLockedError(
                    f"the server database {path} is in use by another process (a running "
                    "`shelfcast server run`?); stop it first, or use the admin CLI which talks HTTP"
                ) from None
            raise ServerError(f"cannot open the server database {path}: {exc}") from None
        db = cls(path, con)
        if migrate:
            db.migrate()
        return db

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # --- statements -------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self._lock:
            self._con.execute(sql, params)

    def fetch_all(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""
        with self._lock:
            cur = self._con.execute(sql, params)
            names = [d[0] for d in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def fetch_one(self, sql: str, params: Sequence[Any] | None = None) -> dict[str, Any] | None:
        rows = self.fetch_all(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        with self._lock:
            row = self._con.execute(sql, params).fetchone()
            return None if row is None else row[0]

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """``BEGIN`` ... ``COMMIT`` (``ROLLBACK`` on error) holding the lock throughout."""
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                yield self
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def checkpoint(self) -> None:
        """Flush the write-ahead log into the file (after writes that must survive a crash intact)."""
        with self._lock:
            self._con.execute("CHECKPOINT")

    def copy_to(self, dest: Path) -> None:
        """Write a consistent copy of the whole database to a new file ``dest``, through DuckDB.

        The file itself is never opened by Python: closing any descriptor of a file drops the process's
        POSIX locks on it, and with them the single-writer guarantee.
        """
        if dest.exists():
            raise ServerError(f"{dest} already exists")
        quoted = str(dest).replace("'", "''")
        with self._lock:
            self._con.execute("CHECKPOINT")
            name = self._con.execute("SELECT current_database()").fetchone()
            assert name is not None
            self._con.execute(f"ATTACH '{quoted}' AS shelfcast_backup")
            try:
                self._con.execute(f'COPY FROM DATABASE "{name[0]}" TO shelfcast_backup')
            finally:
                self._con.execute("DETACH shelfcast_backup")

    # --- migrations -------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            exists = self._con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
            ).fetchone()
            if not exists or not exists[0]:
                return 0
            row = self._con.execute("SELECT coalesce(max(number), 0) FROM schema_migrations").fetchone()
            return int(row[0]) if row else 0

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        """Apply migrations newer than the recorded version, each in its own transaction."""
        applied: list[int] = []
        with self._lock:
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "number INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
            )
            current = self.schema_version()
            for migration in sorted(migrations, key=lambda m: m.number):
                if migration.number <= current:
                    continue
                with self.transaction():
                    self._con.execute(migration.sql)
                    self._con.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        [migration.number, migration.name, utcnow()],
                    )
                applied.append(migration.number)
            if applied:
                self._con.execute("CHECKPOINT")
                log.info("db_migrated", path=str(self.path), applied=applied)
        return applied
