"""Backups of the server state: a checkpointed copy of the database file plus the bundle blobs.

A backup folder holds ``registry.duckdb``, ``blobs/sha256/..`` and ``backup.json`` listing every file with
its size and sha256. ``restore`` checks every file against that list before it touches the state folder,
and swaps the restored folder into place with a rename.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec

from server.blobs import fsync_dir, sha256_file
from server.db import DB_FILE_NAME, Database
from server.errors import BackupError

BACKUP_MANIFEST = "backup.json"
FORMAT_VERSION = 1
CHUNK_BYTES = 1024 * 1024


class BackupFile(msgspec.Struct, frozen=True):
    path: str
    size: int
    sha256: str


class BackupManifest(msgspec.Struct, frozen=True, kw_only=True):
    format_version: int
    created_at: datetime
    schema_version: int
    files: list[BackupFile]


def _copy(src: Path, dst: Path) -> BackupFile:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    with dst.open("rb+") as fh:
        os.fsync(fh.fileno())
    return BackupFile(path="", size=dst.stat().st_size, sha256=sha256_file(dst))


def write_snapshot(db: Database, blobs_root: Path, dest: Path) -> BackupManifest:
    """Copy the database (a consistent snapshot made by DuckDB) and every blob into ``dest``."""
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty; back up into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    files: list[BackupFile] = []
    db.copy_to(dest / DB_FILE_NAME)
    schema_version = db.schema_version()
    copied = dest / DB_FILE_NAME
    files.append(BackupFile(path=DB_FILE_NAME, size=copied.stat().st_size, sha256=sha256_file(copied)))
    blob_dir = blobs_root / "sha256"
    for blob in sorted(blob_dir.glob("*/*")) if blob_dir.is_dir() else []:
        rel = blob.relative_to(blobs_root.parent).as_posix()
        info = _copy(blob, dest / rel)
        if info.sha256 != blob.name:
            raise BackupError(f"blob {blob} does not match its name (corrupt store?)")
        files.append(msgspec.structs.replace(info, path=rel))
    manifest = BackupManifest(
        format_version=FORMAT_VERSION,
        created_at=datetime.now(UTC),
        schema_version=schema_version,
        files=files,
    )
    (dest / BACKUP_MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    fsync_dir(dest)
    return manifest


def backup_offline(state_dir: Path, dest: Path) -> BackupManifest:
    """Back up a stopped server's state folder (refused while a server holds the database)."""
    db = Database.open(state_dir / DB_FILE_NAME, migrate=False)
    try:
        return write_snapshot(db, state_dir / "blobs", dest)
    finally:
        db.close()


def check_backup(src: Path) -> BackupManifest:
    """Read ``backup.json`` and check every listed file's size and sha256."""
    try:
        manifest = msgspec.json.decode((src / BACKUP_MANIFEST).read_bytes(), type=BackupManifest)
    except FileNotFoundError:
        raise BackupError(f"{src} is not a shelfcast backup (no {BACKUP_MANIFEST})") from None
    except msgspec.DecodeError as exc:
        raise BackupError(f"{src / BACKUP_MANIFEST} is not a valid backup manifest ({exc})") from None
    if manifest.format_version != FORMAT_VERSION:
        raise BackupError(f"backup format {manifest.format_version} is not supported")
    for entry in manifest.files:
        path = src / entry.path
        if ".." in Path(entry.path).parts or Path(entry.path).is_absolute():
            raise BackupError(f"backup lists an unsafe path {entry.path!r}")
        if not path.is_file():
            raise BackupError(f"backup is incomplete: {entry.path} is missing")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise BackupError(f"backup is corrupt: {entry.path} does not match its recorded sha256")
    if not any(e.path == DB_FILE_NAME for e in manifest.files):
        raise BackupError("backup holds no database file")
    return manifest


def restore(src: Path, state_dir: Path, *, force: bool = False) -> Path | None:
    """Restore ``src`` into ``state_dir``; returns where the previous state was moved (if any)."""
    manifest = check_backup(src)
    previous: Path | None = None
    db_file = state_dir / DB_FILE_NAME
    if db_file.exists():
        if not force:
            raise BackupError(f"{state_dir} already holds a server database; pass --force to replace it")
        Database.open(db_file, migrate=False).close()  # refuses while a running server holds it
    staging = state_dir.parent / f".{state_dir.name}.restore-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for entry in manifest.files:
        _copy(src / entry.path, staging / entry.path)
    for name in ("keys",):
        if (state_dir / name).is_dir():
            shutil.copytree(state_dir / name, staging / name)
    if state_dir.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        previous = state_dir.parent / f"{state_dir.name}.before-restore-{stamp}"
        state_dir.rename(previous)
    staging.rename(state_dir)
    fsync_dir(state_dir.parent)
    return previous


async def stream_tar(folder: Path) -> AsyncIterator[bytes]:
    """``folder`` as an uncompressed tar, built in a worker thread, then streamed in chunks."""
    archive = folder.with_suffix(".tar")

    def build() -> None:
        with tarfile.open(archive, "w") as tar:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)

    await anyio.to_thread.run_sync(build)
    async with await anyio.open_file(archive, "rb") as fh:
        while chunk := await fh.read(CHUNK_BYTES):
            yield chunk


def extract_backup_tar(archive: Path, dest: Path) -> BackupManifest:
    """Unpack a downloaded backup tar into ``dest`` (regular files with safe names only) and check it."""
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty; back up into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isreg() or member.name.startswith("/") or ".." in parts:
                raise BackupError(f"backup archive member {member.name!r} is not a safe regular file")
            source = tar.extractfile(member)
            if source is None:
                raise BackupError(f"backup archive member {member.name!r} has no data")
            target = dest / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, target.open("wb") as fh:
                shutil.copyfileobj(source, fh, CHUNK_BYTES)
    return check_backup(dest)
