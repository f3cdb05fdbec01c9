"""Content-addressed blob store: ``<state_dir>/blobs/sha256/ab/abcdef...``, written atomically."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from server.errors import InvalidInputError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK_BYTES = 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Immutable files named by their sha256; a blob is either absent or complete."""

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise InvalidInputError(f"{sha256!r} is not a lower-case hex sha256 digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """An open temporary file in the same file system as the blobs (rename stays atomic)."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-", suffix=".part")
        return os.fdopen(fd, "wb"), Path(name)

    def adopt(self, temp_path: Path, sha256: str) -> Path:
        """Move a complete, fsynced temp file into place under its digest (idempotent)."""
        target = self.path_for(sha256)
        if target.is_file():
            temp_path.unlink(missing_ok=True)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        temp_path.replace(target)
        fsync_dir(target.parent)
        return target

    def put_bytes(self, data: bytes) -> tuple[str, Path]:
        digest = hashlib.sha256(data).hexdigest()
        fh, temp = self.new_temp()
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return digest, self.adopt(temp, digest)

    def iter_digests(self) -> list[str]:
        return sorted(p.name for p in (self.root / "sha256").glob("*/*") if SHA256_RE.match(p.name))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
