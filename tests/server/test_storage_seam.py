"""The storage seam's contract, checked against today's implementations (DuckDB file, blob folder).

Another database or blob store is a new module implementing ``server.storage.SqlStore`` or
``BlobStorage``; these tests are what it must pass too.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from server.blobs import BlobStore
from server.db import Database
from server.storage import BlobStorage, SqlStore


@pytest.fixture
def sql(tmp_path: Path) -> SqlStore:
    database = Database.open(tmp_path / "seam.duckdb", migrate=False)
    database.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
    return database


def test_implementations_satisfy_the_protocols(sql: SqlStore, tmp_path: Path) -> None:
    assert isinstance(sql, SqlStore)
    assert isinstance(BlobStore(tmp_path / "blobs", tmp_path / "tmp"), BlobStorage)


def test_sql_reads_rows_as_dicts_with_positional_parameters(sql: SqlStore) -> None:
    sql.execute("INSERT INTO t VALUES (?, ?), (?, ?)", [1, "a", 2, "b"])
    assert sql.fetch_all("SELECT k, v FROM t ORDER BY k") == [{"k": 1, "v": "a"}, {"k": 2, "v": "b"}]
    assert sql.fetch_one("SELECT v FROM t WHERE k = ?", [2]) == {"v": "b"}
    assert sql.fetch_one("SELECT v FROM t WHERE k = ?", [3]) is None
    assert sql.scalar("SELECT count(*) FROM t") == 2


def test_a_nested_transaction_joins_the_outer_one(sql: SqlStore) -> None:
    """An error in the outer transaction rolls back what an inner one wrote (the group writer's batch)."""
    with pytest.raises(RuntimeError), sql.transaction() as outer:
        with outer.transaction() as inner:
            inner.execute("INSERT INTO t VALUES (1, 'a')")
        raise RuntimeError
    assert sql.scalar("SELECT count(*) FROM t") == 0
    with sql.transaction() as outer:
        with outer.transaction() as inner:
            inner.execute("INSERT INTO t VALUES (1, 'a')")
        outer.execute("INSERT INTO t VALUES (2, 'b')")
    sql.checkpoint()
    assert sql.scalar("SELECT count(*) FROM t") == 2


def test_a_read_does_not_wait_for_an_open_write(sql: SqlStore) -> None:
    """While one thread's transaction is open, another thread reads what was committed before it."""
    sql.execute("INSERT INTO t VALUES (1, 'a')")
    counted: list[int] = []
    with sql.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (2, 'b')")
        reader = threading.Thread(target=lambda: counted.append(sql.scalar("SELECT count(*) FROM t")))
        reader.start()
        reader.join(timeout=10)
    assert counted == [1]
    assert sql.scalar("SELECT count(*) FROM t") == 2


def test_blob_storage_adopts_a_staged_upload_under_its_digest(tmp_path: Path) -> None:
    blobs: BlobStorage = BlobStore(tmp_path / "blobs", tmp_path / "tmp")
    fh, temp = blobs.new_temp()
    with fh:
        fh.write(b"archive")
    digest = hashlib.sha256(b"archive").hexdigest()
    assert temp.parent == blobs.tmp_dir and not blobs.exists(digest)
    assert blobs.adopt(temp, digest) == blobs.path_for(digest)
    assert blobs.exists(digest) and blobs.path_for(digest).read_bytes() == b"archive"
    assert not temp.exists()
