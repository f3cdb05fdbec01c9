"""Where the agent keeps its state, and the crash-safe file operations it uses on it.

Layout of ``state_dir``::

    credential              store credential (0600)
    lifecycle.json          persisted lifecycle state (atomic replace)
    serving.json            which scoring run the inventory API serves (atomic replace)
    agent.duckdb            local store: sales, quarantine, outbox, scoring runs
    downloads/<sha>.part    archive being downloaded (resumed with Range)
    staging/                unpacked bundles being verified
    versions/<model>-<version>/   verified bundles kept for rollback
    shadow/<model>-<version>/     the verified shadow version (scored beside the served one, never served)
    current -> versions/...       the active version (switched with one rename)
    runs/<run_id>/forecasts.parquet   every scoring run's output
    inbox/                  default folder for sales extracts
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from forecasting.common.private import private_dir


@dataclass(frozen=True)
class StatePaths:
    """Every path the agent uses under its state directory."""

    root: Path

    @property
    def credential(self) -> Path:
        return self.root / "credential"

    @property
    def lifecycle(self) -> Path:
        return self.root / "lifecycle.json"

    @property
    def serving(self) -> Path:
        return self.root / "serving.json"

    @property
    def database(self) -> Path:
        return self.root / "agent.duckdb"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def version_dir(self, model_name: str, version: int) -> Path:
        return self.versions / f"{model_name}-{version}"

    @property
    def shadow(self) -> Path:
        return self.root / "shadow"

    def shadow_dir(self, model_name: str, version: int) -> Path:
        return self.shadow / f"{model_name}-{version}"

    def bundle_dir(self, model_name: str, version: int) -> Path | None:
        """Where a kept version's bundle is: among the served versions, else the shadow one; None if gone."""
        for candidate in (self.version_dir(model_name, version), self.shadow_dir(model_name, version)):
            if candidate.is_dir():
                return candidate
        return None

    def ensure(self) -> None:
        """The state folder (0700, also when it existed) and its parts."""
        private_dir(self.root)
        for path in (self.downloads, self.staging, self.versions, self.runs):
            path.mkdir(parents=True, exist_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (a staged bundle before it is switched to)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename over ``path``, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    Path(tmp).replace(path)
    fsync_dir(path.parent)


def switch_symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` with one atomic rename of a fresh temporary symlink."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    relative = os.path.relpath(target, link.parent)
    tmp.symlink_to(relative)
    Path(tmp).replace(link)
    fsync_dir(link.parent)


def read_symlink(link: Path) -> Path | None:
    """The directory ``link`` points to, or None when absent or dangling."""
    try:
        target = link.parent / link.readlink()
    except (FileNotFoundError, OSError):
        return None
    return target if target.is_dir() else None


def remove_tree(path: Path) -> None:
    """Remove a directory tree if it exists (staging leftovers, pruned versions)."""
    shutil.rmtree(path, ignore_errors=True)
