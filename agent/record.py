"""``lifecycle.json`` (the persisted record of the update lifecycle), the errors it counts, the store's
credential and the model versions kept on disk."""

from __future__ import annotations

import contextlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from agent.config import AgentConfig
from agent.paths import StatePaths, atomic_write_bytes, read_symlink, remove_tree
from agent.serving import read_serving
from agent.states import State
from forecasting.common.logs import get_logger
from forecasting.common.version import shelfcast_version

log = get_logger("agent.record")


class VersionRef(msgspec.Struct, frozen=True):
    model_name: str
    version: int


class Target(msgspec.Struct, frozen=True):
    model_name: str
    version: int
    bundle_sha256: str
    bundle_size: int


class Record(msgspec.Struct, kw_only=True):
    """``lifecycle.json``."""

    state: State = State.IDLE
    target: Target | None = None
    active: VersionRef | None = None
    previous: VersionRef | None = None
    highest_version: int = 0
    attempts: dict[str, int] = msgspec.field(default_factory=dict)
    rejected: dict[str, str] = msgspec.field(default_factory=dict)
    assignment_etag: str | None = None
    last_sync_at: datetime | None = None
    last_error: str | None = None
    updated_at: datetime | None = None
    # cumulative error counts by kind, and the newest counted error ("<kind>: <reason>") with its time
    error_counts: dict[str, int] = msgspec.field(default_factory=dict)
    counted_error: str | None = None
    counted_error_at: datetime | None = None
    # the shadow version the assignment names (None: no shadow), and the one verified and kept
    shadow_target: Target | None = None
    shadow: VersionRef | None = None
    # errors that still stand (kind -> newest reason), and what the refusals in ``rejected`` were judged under
    current_errors: dict[str, str] = msgspec.field(default_factory=dict)
    refusal_context: str | None = None


OPERATOR_ROLLBACK = "rolled back by operator"
# Error kinds an update that reached the active version (or a poll naming it) shows to be over.
UPDATE_ERROR_KINDS = ("verify", "health_check", "activation")


ERROR_KINDS = (
    "sync",  # the server could not be reached or answered something unusable
    "download",  # a bundle download broke off (retried)
    "verify",  # a bundle was refused: hash, size, signature, untrusted key, expiry, downgrade, identity
    "health_check",  # a staged version failed to score the built-in probe
    "activation",  # switching to a verified version failed, or an update never completed
    "scoring",  # scoring the served version failed
    "shadow",  # scoring the shadow version failed
    "report",  # a report could not be delivered (retried) or was refused by the server (dropped)
    "ingest",  # the sales folder could not be read
    "monitoring",  # computing accuracy or drift reports failed
    "state",  # lifecycle.json was unreadable and was rebuilt from what is on disk
)
# State in which an unexpected failure happened -> the error kind it counts as.
STATE_ERROR_KIND: dict[State, str] = {
    State.IDLE: "sync",
    State.CHECK: "sync",
    State.DOWNLOAD: "download",
    State.VERIFY: "verify",
    State.STAGE: "verify",
    State.HEALTH_CHECK: "health_check",
    State.ACTIVATE: "activation",
    State.COMMIT: "activation",
    State.ROLLBACK: "activation",
}


def count_error(record: Record, kind: str, reason: str) -> None:
    """Count one error of ``kind`` (one of ``ERROR_KINDS``) and remember it as the newest."""
    record.error_counts[kind] = record.error_counts.get(kind, 0) + 1
    record.counted_error = f"{kind}: {reason}"[:1000]
    record.counted_error_at = datetime.now(UTC)
    record.current_errors[kind] = reason[:1000]


def resolve_errors(record: Record, *kinds: str) -> bool:
    """The work of ``kinds`` succeeded: their errors no longer stand. True when one was current."""
    resolved = [kind for kind in kinds if record.current_errors.pop(kind, None) is not None]
    if resolved:
        log.info("errors_resolved", kinds=resolved)
    return bool(resolved)


def refusal_context(config: AgentConfig) -> str:
    """What a refusal was judged under: trusted keys (paths and contents), the whole config, the code."""
    import hashlib

    digest = hashlib.sha256(shelfcast_version().encode())
    digest.update(msgspec.json.encode(config))
    for name in sorted(config.agent.trusted_keys):
        digest.update(name.encode())
        try:
            digest.update(hashlib.sha256(Path(name).read_bytes()).digest())
        except OSError as exc:
            digest.update(type(exc).__name__.encode())
    return digest.hexdigest()


def clear_refusals(record: Record) -> list[str]:
    """Forget refused bundles and spent attempts (an operator's rollback stays); the bundles cleared."""
    cleared = [key for key, why in record.rejected.items() if why != OPERATOR_ROLLBACK]
    for key in cleared:
        del record.rejected[key]
    record.attempts.clear()
    record.assignment_etag = None
    record.refusal_context = None
    return cleared


def load_record(paths: StatePaths) -> Record:
    """``lifecycle.json``; a damaged or unreadable one is rebuilt from disk (:func:`rebuild_record`)."""
    try:
        return msgspec.json.decode(paths.lifecycle.read_bytes(), type=Record)
    except FileNotFoundError:
        return Record()
    except (OSError, msgspec.DecodeError) as exc:
        return rebuild_record(paths, f"{type(exc).__name__}: {exc}")


def rebuild_record(paths: StatePaths, reason: str) -> Record:
    """The record as the serving pointer and the versions on disk say, so a damaged state file never
    stops serving: IDLE; active = the version ``current`` points at (else the one ``serving.json``
    names, if kept); previous = the newest older kept version; highest_version = the newest kept one.
    What only the file knew (refused bundles, error counts, the assignment's ETag) starts afresh; the
    damaged bytes are kept as ``lifecycle.json.damaged``. Counted as a ``state`` error, logged loudly."""
    kept = sorted(
        (ref for ref in map(_version_of, paths.versions.glob("*-*")) if ref is not None),
        key=lambda ref: ref.version,
    )
    active = _version_of(read_symlink(paths.current))
    pointer = read_serving(paths)
    if active is None and pointer is not None:
        active = VersionRef(pointer.model_name, pointer.version)
    if active not in kept:
        active = None
    older = [ref for ref in kept if active is not None and ref.version < active.version]
    record = Record(
        active=active,
        previous=older[-1] if older else None,
        highest_version=kept[-1].version if kept else 0,
    )
    count_error(record, "state", f"lifecycle.json unreadable ({reason}); rebuilt from current and versions/")
    with contextlib.suppress(OSError):
        shutil.copyfile(paths.lifecycle, paths.lifecycle.with_name("lifecycle.json.damaged"))
    log.error(
        "lifecycle_state_rebuilt",
        reason=reason,
        model_version=active.version if active else None,
        highest_version=record.highest_version,
    )
    return record


def _version_of(folder: Path | None) -> VersionRef | None:
    """``versions/<model>-<version>`` as a reference; None for anything else."""
    if folder is None or not folder.is_dir():
        return None
    model_name, _, version = folder.name.rpartition("-")
    return VersionRef(model_name, int(version)) if model_name and version.isdigit() else None


def save_record(paths: StatePaths, record: Record) -> None:
    record.updated_at = datetime.now(UTC)
    atomic_write_bytes(paths.lifecycle, msgspec.json.encode(record))


def read_credential(paths: StatePaths) -> str:
    try:
        return paths.credential.read_text().strip()
    except FileNotFoundError:
        return ""


def write_credential(paths: StatePaths, token: str) -> None:
    atomic_write_bytes(paths.credential, token.encode() + b"\n", mode=0o600)


def kept_versions(paths: StatePaths, model_name: str) -> list[int]:
    prefix = f"{model_name}-"
    found = []
    if paths.versions.is_dir():
        for entry in paths.versions.iterdir():
            if entry.is_dir() and entry.name.startswith(prefix) and entry.name[len(prefix) :].isdigit():
                found.append(int(entry.name[len(prefix) :]))
    return sorted(found)


def prune_versions(paths: StatePaths, record: Record, *, keep: int) -> None:
    """Keep the active version, the shadow one and the ``keep`` newest others; remove the rest."""
    if record.active is None:
        return
    versions = kept_versions(paths, record.active.model_name)
    protected = {record.active.version}
    for ref in (record.shadow, record.shadow_target):
        if ref is not None and ref.model_name == record.active.model_name:
            protected.add(ref.version)
    others = [v for v in versions if v not in protected]
    for version in others[: max(0, len(others) - keep)]:
        remove_tree(paths.version_dir(record.active.model_name, version))
        log.info("version_pruned", model_version=version)
