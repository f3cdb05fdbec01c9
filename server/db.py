"""The server's one DuckDB connection: opened once by the server process, migrated at start, serialised.

The server process is the sole writer of its file; DuckDB's own file lock makes a second process fail,
and that failure becomes a ``StorageLockedError`` with a message saying what to do.

A write-ahead log (``registry.duckdb.wal``) found at start means the last process did not stop cleanly
(a clean stop checkpoints it away). DuckDB replays it; this module makes sure no part of it is lost
silently: the log's framing is checked first, and

* a log whose tail is incomplete (a torn last write, or a log cut short) starts from the last complete
  entry, with an error-level ``db_wal_incomplete_tail`` line and a copy of the whole log kept in
  ``wal-recovery/`` next to the database;
* a log DuckDB refuses to replay (a checksum mismatch) or that is not a write-ahead log at all is refused
  with a ``DamagedWalError`` saying what to do; ``discard_damaged_wal`` moves it into ``wal-recovery/``
  and starts from the last checkpoint, with an error-level ``db_wal_discarded`` line.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forecasting.common.logs import get_logger
from server.errors import ServerError, StorageLockedError
from server.migrations import MIGRATIONS, Migration

if TYPE_CHECKING:
    import duckdb

log = get_logger("server.db")

DB_FILE_NAME = "registry.duckdb"
WAL_RECOVERY_DIR = "wal-recovery"
_WAL_ENTRY_HEAD = 16  # each entry: uint64 size, uint64 checksum, then ``size`` bytes
_WAL_VERSION_TYPE = 98  # the first, unchecksummed entry of a DuckDB write-ahead log
_KNOWN_WAL_VERSIONS = frozenset({2})
CHECKPOINT_ATTEMPTS = 10
CHECKPOINT_RETRY_SECONDS = 0.02


class DamagedWalError(ServerError):
    """The database's write-ahead log cannot be replayed; starting would silently lose what it holds."""

    title = "Database write-ahead log damaged"


@dataclass(frozen=True)
class WalCheck:
    """What the framing of a write-ahead log says before DuckDB replays it."""

    size: int
    verdict: str  # "complete", "incomplete_tail", "not_a_wal", "unknown_version"
    complete_bytes: int  # bytes up to the end of the last whole entry

    @property
    def tail_bytes(self) -> int:
        return self.size - self.complete_bytes


def wal_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".wal")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise IndexError("varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _u16(data: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(data):
        raise IndexError("runs past the end")
    return int.from_bytes(data[pos : pos + 2], "little"), pos + 2


def _header_field(head: bytes, field: int, pos: int) -> tuple[str, int]:
    """One field of DuckDB's version entry: ("", next position) or a verdict that stops the parse."""
    if field in (100, 101, 103):  # entry type, format version, checkpoint iteration
        value, pos = _varint(head, pos)
        if field == 100 and value != _WAL_VERSION_TYPE:
            return "not_a_wal", pos
        if field == 101 and value not in _KNOWN_WAL_VERSIONS:
            return "unknown_version", pos
        return "", pos
    if field == 102:  # database identifier: a list of bytes
        count, pos = _varint(head, pos)
        for _ in range(count):
            _, pos = _varint(head, pos)
        return "", pos
    return "unknown_version", pos


def _wal_header_end(head: bytes) -> tuple[str, int]:
    """Parse DuckDB's version entry: ("ok", end), ("not_a_wal"|"unknown_version"|"incomplete_tail", 0)."""
    try:
        field, pos = _u16(head, 0)
        if field != 100:
            return "not_a_wal", 0
        while field != 0xFFFF:
            verdict, pos = _header_field(head, field, pos)
            if verdict:
                return verdict, 0
            field, pos = _u16(head, pos)
    except IndexError:
        return "incomplete_tail", 0
    return "ok", pos


def inspect_wal(path: Path) -> WalCheck:
    """Walk the entry framing of the write-ahead log at ``path`` (checksums are DuckDB's to check)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        verdict, pos = _wal_header_end(fh.read(4096))
        if verdict != "ok":
            return WalCheck(size, verdict, 0)
        while size - pos >= _WAL_ENTRY_HEAD:
            fh.seek(pos)
            length = int.from_bytes(fh.read(8), "little")
            if length > size - pos - _WAL_ENTRY_HEAD:
                break
            pos += _WAL_ENTRY_HEAD + length
    return WalCheck(size, "complete" if pos == size else "incomplete_tail", pos)


def _set_aside(wal: Path, suffix: str, *, move: bool) -> Path:
    """Keep the log (moved or copied) in ``wal-recovery/`` beside the database; return where."""
    folder = wal.parent / WAL_RECOVERY_DIR
    folder.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    dest = folder / f"{wal.name}.{stamp}.{suffix}"
    if move:
        wal.replace(dest)
    else:
        shutil.copyfile(wal, dest)
    return dest


def _drop(copy: Path) -> None:
    """Remove a kept copy that turned out not to be needed (and ``wal-recovery/`` if that leaves it empty)."""
    copy.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        copy.parent.rmdir()


def _damaged_message(path: Path, wal: Path, reason: str) -> str:
    return (
        f"the write-ahead log {wal} of the server database cannot be replayed ({reason}); nothing was "
        f"changed. {path.name} holds the state of its last checkpoint: start from it with `shelfcast server "
        "run --discard-damaged-wal` (the log is moved into wal-recovery/, what it held since that "
        "checkpoint is lost), or restore a backup with `shelfcast server restore`"
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


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
    """One database, one connection per thread: reads run side by side, writes one at a time.

    Every thread gets its own cursor on the file (DuckDB connections are not shared between threads), so
    a read never waits for a write: it sees what was committed when it began. Writes (``execute`` and
    ``transaction``) hold one write lock, so two of them never race for the same rows; a transaction
    opened inside another on the same thread joins it (the outer one commits or rolls back both), which
    lets the group writer wrap many services' transactions in one commit.
    """

    def __init__(self, path: Path, connection: duckdb.DuckDBPyConnection) -> None:
        self.path = path
        self._con = connection
        self._write_lock = threading.RLock()
        self._local = threading.local()
        # the live threads' connections (a thread's goes when the thread ends), closed by ``close``
        self._cursors: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()
        self._cursors_lock = threading.Lock()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's connection to the database (made on its first statement)."""
        cursor: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cursor is None:
            with self._cursors_lock:
                cursor = self._con.cursor()
                self._cursors.add(cursor)
            self._local.cursor = cursor
            self._local.depth = 0
        return cursor

    @classmethod
    def open(cls, path: Path, *, migrate: bool = True, discard_damaged_wal: bool = False) -> Database:
        """Open (creating if needed) the file at ``path`` and apply pending migrations.

        A write-ahead log left by a crash is checked and replayed (see the module docstring); a damaged
        one raises ``DamagedWalError`` unless ``discard_damaged_wal`` says to start from the last checkpoint.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        wal = wal_path(path)
        check = inspect_wal(wal) if wal.is_file() and wal.stat().st_size > 0 else None
        discarded: tuple[Path, str] | None = None
        if check is not None and check.verdict == "not_a_wal":
            reason = "it does not start with a DuckDB log header, so DuckDB would skip all of it"
            if not discard_damaged_wal:
                raise DamagedWalError(_damaged_message(path, wal, reason))
            discarded = (_set_aside(wal, "damaged", move=True), reason)
        evidence = _set_aside(wal, "crash", move=False) if check is not None and discarded is None else None
        try:
            con = cls._connect(path)
        except DamagedWalError as exc:
            if evidence is not None:
                _drop(evidence)
            if not discard_damaged_wal:
                raise
            discarded = (_set_aside(wal, "damaged", move=True), str(exc.__cause__ or exc))
            evidence = None
            con = cls._connect(path)
        except BaseException:
            if evidence is not None:
                _drop(evidence)
            raise
        db = cls(path, con)
        if discarded is not None:
            log.error(
                "db_wal_discarded",
                path=str(path),
                kept_at=str(discarded[0]),
                reason=discarded[1],
                detail="started from the last checkpoint; what the log held after it is not in the database",
            )
        elif check is not None:
            db._report_replay(check, evidence)
        if check is not None:
            db.checkpoint()  # the replayed state goes into the file; the log is gone
        if migrate:
            db.migrate()
        return db

    @staticmethod
    def _connect(path: Path) -> duckdb.DuckDBPyConnection:
        import duckdb

        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StorageLockedError(
                    f"the server database {path} is in use by another process (a running "
                    "`shelfcast server run`?); stop it first, or use the admin CLI which talks HTTP"
                ) from None
            if "wal" in str(exc).lower():
                raise DamagedWalError(_damaged_message(path, wal_path(path), _first_line(exc))) from exc
            raise ServerError(f"cannot open the server database {path}: {exc}") from None
        except duckdb.Error as exc:
            if "wal" in str(exc).lower():
                raise DamagedWalError(_damaged_message(path, wal_path(path), _first_line(exc))) from exc
            raise ServerError(f"cannot open the server database {path}: {exc}") from None

    def _report_replay(self, check: WalCheck, evidence: Path | None) -> None:
        if check.verdict == "incomplete_tail":
            log.error(
                "db_wal_incomplete_tail",
                path=str(self.path),
                wal_bytes=check.size,
                bytes_replayed=check.complete_bytes,
                bytes_not_replayed=check.tail_bytes,
                kept_at=str(evidence),
                detail="the log ends inside an entry (a torn last write, or a log cut short): the server "
                "starts from the last complete entry; the whole log is kept for inspection",
            )
            return
        if evidence is not None:
            _drop(evidence)
        log.warning(
            "db_wal_replayed",
            path=str(self.path),
            wal_bytes=check.size,
            framing=check.verdict,
            detail="the last process did not stop cleanly; its write-ahead log was replayed",
        )

    @property
    def open_connections(self) -> int:
        """How many threads hold a connection to the database now."""
        return len(self._cursors)

    def close(self) -> None:
        with self._write_lock, self._cursors_lock:
            for cursor in list(self._cursors):
                cursor.close()
            self._con.close()

    # --- statements -------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """A writing statement, under the write lock (on its own, it commits by itself)."""
        with self._write_lock:
            self._cursor().execute(sql, params)

    def fetch_all(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name (without waiting for writes of other threads)."""
        cur = self._cursor().execute(sql, params)
        names = [d[0] for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def fetch_one(self, sql: str, params: Sequence[Any] | None = None) -> dict[str, Any] | None:
        rows = self.fetch_all(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        row = self._cursor().execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """``BEGIN`` ... ``COMMIT`` (``ROLLBACK`` on error) holding the write lock throughout.

        Inside another transaction of the same thread it joins that one: an error rolls back the outer
        transaction, and nothing is committed before the outer one commits.
        """
        with self._write_lock:
            cursor = self._cursor()
            if self._local.depth:
                self._local.depth += 1
                try:
                    yield self
                finally:
                    self._local.depth -= 1
                return
            cursor.execute("BEGIN TRANSACTION")
            self._local.depth = 1
            try:
                yield self
            except BaseException:
                self._local.depth = 0
                cursor.execute("ROLLBACK")
                raise
            self._local.depth = 0
            cursor.execute("COMMIT")

    def checkpoint(self) -> None:
        """Flush the write-ahead log into the file (after writes that must survive a crash intact).

        DuckDB refuses while a transaction of another connection holds changes; the checkpoint is then
        tried again for a moment (0.2 s), and otherwise left to the next one (what was committed is in the
        write-ahead log, which a restart replays), with a warning.
        """
        import duckdb

        with self._write_lock:
            for attempt in range(CHECKPOINT_ATTEMPTS):
                try:
                    self._cursor().execute("CHECKPOINT")
                except duckdb.TransactionException as exc:
                    if attempt == CHECKPOINT_ATTEMPTS - 1:
                        log.warning("db_checkpoint_deferred", path=str(self.path), reason=_first_line(exc))
                        return
                    time.sleep(CHECKPOINT_RETRY_SECONDS)
                else:
                    return

    def copy_to(self, dest: Path) -> None:
        """Write a consistent copy of the whole database to a new file ``dest``, through DuckDB.

        The file itself is never opened by Python: closing any descriptor of a file drops the process's
        POSIX locks on it, and with them the single-writer guarantee.
        """
        if dest.exists():
            raise ServerError(f"{dest} already exists")
        quoted = str(dest).replace("'", "''")
        with self._write_lock:
            cursor = self._cursor()
            cursor.execute("CHECKPOINT")
            name = cursor.execute("SELECT current_database()").fetchone()
            assert name is not None
            cursor.execute(f"ATTACH '{quoted}' AS shelfcast_backup")
            try:
                cursor.execute(f'COPY FROM DATABASE "{name[0]}" TO shelfcast_backup')
            finally:
                cursor.execute("DETACH shelfcast_backup")

    # --- migrations -------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._write_lock:
            exists = (
                self._cursor()
                .execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
                )
                .fetchone()
            )
            if not exists or not exists[0]:
                return 0
            row = self._cursor().execute("SELECT coalesce(max(number), 0) FROM schema_migrations").fetchone()
            return int(row[0]) if row else 0

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        """Apply migrations newer than the recorded version, each in its own transaction."""
        applied: list[int] = []
        with self._write_lock:
            cursor = self._cursor()
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "number INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
            )
            current = self.schema_version()
            for migration in sorted(migrations, key=lambda m: m.number):
                if migration.number <= current:
                    continue
                with self.transaction():
                    cursor.execute(migration.sql)
                    cursor.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        [migration.number, migration.name, utcnow()],
                    )
                applied.append(migration.number)
            if applied:
                cursor.execute("CHECKPOINT")
                log.info("db_migrated", path=str(self.path), applied=applied)
        return applied
