"""State that must outlive the process: restarts, the single-writer lock, backup and restore."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from server.db import DB_FILE_NAME, Database
from server.errors import StorageLockedError
from server.fleet.repository import FleetRepository
from server.migrations import MIGRATIONS
from server.quality.repository import QualityRepository
from shelfcast.cli import cli
from tests.conftest import free_port
from tests.server.conftest import (
    FRESH_MAX_BUNDLE_BYTES,
    RunningServer,
    create_store,
    enroll,
    launch,
    make_bundle,
    publish,
)


def _populate(server: RunningServer, tmp_path: Path, key: Path) -> dict[str, str]:
    with server.admin() as admin:
        token = enroll(
            server.url, "S001", create_store(admin, "S001", "demand", region="east", groups=["pilot"])
        )
        admin.post("/v1/runs", json={"run_id": "run-1", "model_name": "demand", "dataset_id": "d" * 64})
        archive = make_bundle(tmp_path, key, "demand", 1, run_id="run-1", dataset_fingerprint="d" * 64)
        publish(admin, archive, "demand").raise_for_status()
        admin.put(
            "/v1/models/demand/aliases/champion", json={"version": 1, "reason": "go"}
        ).raise_for_status()
        reader = admin.post("/v1/credentials", json={"role": "reader"}).json()["token"]
    return {"agent": token, "reader": reader, "sha": hashlib.sha256(archive.read_bytes()).hexdigest()}


def _check_populated(server: RunningServer, secrets: dict[str, str]) -> None:
    with server.client(secrets["agent"]) as agent:
        assignment = agent.get("/v1/stores/S001/assignment")
        assert assignment.status_code == 200
        assert assignment.json()["bundle_sha256"] == secrets["sha"]
        bundle = agent.get(f"/v1/bundles/{secrets['sha']}")
        assert hashlib.sha256(bundle.content).hexdigest() == secrets["sha"]
    with server.client(secrets["reader"]) as reader:
        store = reader.get("/v1/stores/S001").json()
        assert (store["region"], store["groups"]) == ("east", ["pilot"])
        history = reader.get("/v1/models/demand/aliases/champion/history").json()["items"]
        assert [(e["to_version"], e["reason"]) for e in history] == [(1, "go")]
        lineage = reader.get("/v1/models/demand/versions/1/lineage").json()
        assert lineage["run"]["run_id"] == "run-1"
        assert lineage["dataset"]["dataset_id"] == "d" * 64


def test_second_writer_is_refused_clearly(server: RunningServer) -> None:
    """A second server on the same state folder exits 1: the database is in use (also after a backup)."""
    with server.admin() as admin:
        assert admin.get("/v1/admin/backup").status_code == 200
    args = ["server", "run", "--port", str(free_port()), "--state-dir", str(server.state_dir)]
    result = CliRunner().invoke(cli, args, env={"SHELFCAST_LOGGING__FORMAT": "json"})
    assert result.exit_code == 1
    assert "in use by another process" in result.stderr
    with pytest.raises(StorageLockedError):
        Database.open(server.state_dir / DB_FILE_NAME)


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    """Migrations apply once, are recorded with their number, and re-opening applies nothing."""
    db = Database.open(tmp_path / "r.duckdb")
    assert db.schema_version() >= 1
    assert db.migrate() == []
    db.close()
    con = duckdb.connect(str(tmp_path / "r.duckdb"))
    rows = con.execute("SELECT number, name FROM schema_migrations ORDER BY number").fetchall()
    con.close()
    assert rows[0] == (1, "registry and fleet")


def test_idempotency_claims_stored_before_the_one_column_keys_still_count(tmp_path: Path) -> None:
    """Keys and report ids stored under the old composite keys are carried into the one-column ``claim``
    keys: sent again, they are duplicates; new ones (with ':' in them) are not."""
    db = Database.open(tmp_path / "r.duckdb", migrate=False)
    db.migrate([m for m in MIGRATIONS if m.number <= 11])
    at = datetime(2026, 12, 1, 12)
    db.execute("INSERT INTO report_keys VALUES ('S1', 'hb-1', ?), ('S1:x', 'y', ?)", [at, at])
    db.execute("INSERT INTO monitoring_reports VALUES ('accuracy', 'S1', 'r-1', ?)", [at])
    assert db.migrate() == [12]
    fleet, quality = FleetRepository(db), QualityRepository(db)
    with db.transaction():
        new_keys = fleet.claim_report_keys([("S1", "hb-1"), ("S1", "hb-2"), ("S1", "x:y"), ("S1:x", "y")], at)
        new_reports = quality.claim_many([("accuracy", "S1", "r-1"), ("drift", "S1", "r-1")], at)
    db.close()
    assert new_keys == {("S1", "hb-2"), ("S1", "x:y")}
    assert new_reports == {("drift", "S1", "r-1")}


def test_restart_backup_and_restore_keep_everything(
    fresh_server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """Registry, fleet, credentials and blobs survive a restart, and an online backup restored elsewhere."""
    secrets = _populate(fresh_server, tmp_path, signing_key)
    with fresh_server.admin() as admin:
        big = make_bundle(tmp_path, signing_key, "demand", 2, payload=b"y" * (FRESH_MAX_BUNDLE_BYTES + 1))
        refused = publish(admin, big, "demand")
        assert refused.status_code == 413
        assert "accepts up to" in refused.json()["detail"]
    fresh_server.restart()
    _check_populated(fresh_server, secrets)
    backup_dir = tmp_path / "backup"
    runner = CliRunner()
    env = {"SHELFCAST_SERVER_URL": fresh_server.url, "SHELFCAST_TOKEN": fresh_server.admin_token}
    done = runner.invoke(cli, ["server", "backup", "--to", str(backup_dir)], env=env)
    assert done.exit_code == 0, done.output
    assert (backup_dir / "backup.json").is_file()
    restored_dir = tmp_path / "restored" / "state"
    done = runner.invoke(
        cli, ["server", "restore", "--from", str(backup_dir), "--state-dir", str(restored_dir)]
    )
    assert done.exit_code == 0, done.output
    restored = launch(restored_dir.parent, fresh_server.trusted_key)
    try:
        _check_populated(restored, secrets)
    finally:
        restored.process.stop()
    (backup_dir / DB_FILE_NAME).write_bytes(b"corrupt")
    other = tmp_path / "other"
    refused = runner.invoke(cli, ["server", "restore", "--from", str(backup_dir), "--state-dir", str(other)])
    assert refused.exit_code == 1
    assert "does not match its recorded sha256" in refused.stderr
    assert not other.exists()


def test_init_prints_an_admin_token_once_and_keeps_only_its_hash(tmp_path: Path) -> None:
    """`server init` prints a working admin token; the database holds its sha256, not the token."""
    from server.app import ServerState
    from server.auth import hash_token
    from server.config import ServerConfig

    state_dir = tmp_path / "state"
    result = CliRunner().invoke(cli, ["server", "init", "--state-dir", str(state_dir)], env={})
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("sca_")
    config = ServerConfig().with_overrides(state_dir=str(state_dir))
    state = ServerState(config)
    state.open()
    try:
        assert state.tokens.authenticate(f"Bearer {token}").role == "admin"
        assert state.db is not None
        stored = state.db.fetch_all("SELECT token_sha256 FROM credentials")
    finally:
        state.close()
    assert stored == [{"token_sha256": hash_token(token)}]
