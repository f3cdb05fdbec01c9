"""The update lifecycle: one transition table, one handler per state, the state persisted before each step.

::

    IDLE --poll--> CHECK --update--> DOWNLOAD --ok--> VERIFY --ok--> STAGE --ok--> HEALTH_CHECK
                      \\--nothing--> IDLE                                             |ok
    IDLE <--ok-- COMMIT <--ok-- ACTIVATE <---------------------------------------------+
    any failure before ACTIVATE -> IDLE (the bundle is refused or retried later);
    ACTIVATE/COMMIT failure -> ROLLBACK -> IDLE

``lifecycle.json`` is written atomically before every state is entered, so after a crash or SIGKILL
the agent knows where it stopped; ``RESUME`` says where each state continues (before the switch:
start the update again; during the switch: roll back; after it: finish the commit). An update that
keeps coming back (``max_update_attempts``) is refused and reported instead of looping.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from threading import Event as ThreadEvent

import msgspec

from agent.config import AgentConfig
from agent.errors import EnrollmentError, SyncError, UpdateRejectedError
from agent.paths import (
    StatePaths,
    atomic_write_bytes,
    fsync_tree,
    read_symlink,
    remove_tree,
    switch_symlink,
)
from agent.scoring import Scorer, health_check
from agent.sync import SyncClient
from forecasting.contracts import Assignment
from forecasting.errors import BundleError
from forecasting.logs import get_logger

log = get_logger("agent.lifecycle")


class State(enum.StrEnum):
    IDLE = "idle"
    CHECK = "check"
    DOWNLOAD = "download"
    VERIFY = "verify"
    STAGE = "stage"
    HEALTH_CHECK = "health_check"
    ACTIVATE = "activate"
    COMMIT = "commit"
    ROLLBACK = "rollback"


class Event(enum.StrEnum):
    POLL = "poll"
    UPDATE = "update"
    NOTHING = "nothing_to_do"
    SUCCESS = "success"
    FAILURE = "failure"


# The whole lifecycle, in one place.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.POLL): State.CHECK,
    (State.CHECK, Event.UPDATE): State.DOWNLOAD,
    (State.CHECK, Event.NOTHING): State.IDLE,
    (State.CHECK, Event.FAILURE): State.IDLE,
    (State.DOWNLOAD, Event.SUCCESS): State.VERIFY,
    (State.DOWNLOAD, Event.FAILURE): State.IDLE,
    (State.VERIFY, Event.SUCCESS): State.STAGE,
    (State.VERIFY, Event.FAILURE): State.IDLE,
    (State.STAGE, Event.SUCCESS): State.HEALTH_CHECK,
    (State.STAGE, Event.FAILURE): State.IDLE,
    (State.HEALTH_CHECK, Event.SUCCESS): State.ACTIVATE,
    (State.HEALTH_CHECK, Event.FAILURE): State.IDLE,
    (State.ACTIVATE, Event.SUCCESS): State.COMMIT,
    (State.ACTIVATE, Event.FAILURE): State.ROLLBACK,
    (State.COMMIT, Event.SUCCESS): State.IDLE,
    (State.COMMIT, Event.FAILURE): State.ROLLBACK,
    (State.ROLLBACK, Event.SUCCESS): State.IDLE,
    (State.ROLLBACK, Event.FAILURE): State.IDLE,
}

# Where a state found in lifecycle.json after a crash continues.
RESUME: dict[State, State] = {
    State.IDLE: State.IDLE,
    State.CHECK: State.IDLE,
    State.DOWNLOAD: State.DOWNLOAD,  # the .part file is resumed with Range
    State.VERIFY: State.VERIFY,  # unpack again from the downloaded archive
    State.STAGE: State.VERIFY,  # a half-staged directory is discarded and staged again
    State.HEALTH_CHECK: State.HEALTH_CHECK,
    State.ACTIVATE: State.ROLLBACK,  # the switch may or may not have happened: go back to known good
    State.COMMIT: State.COMMIT,  # the new version is active: finish the bookkeeping
    State.ROLLBACK: State.ROLLBACK,
}

# States that change what the agent runs: the record is on disk before they start.
SYSTEM_CHANGING = frozenset({State.STAGE, State.ACTIVATE, State.COMMIT, State.ROLLBACK})


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


def load_record(paths: StatePaths) -> Record:
    try:
        return msgspec.json.decode(paths.lifecycle.read_bytes(), type=Record)
    except FileNotFoundError:
        return Record()


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


@dataclass
class Outcome:
    """What a run of the lifecycle did (for the runtime: rescoring, heartbeats, backoff)."""

    activated: VersionRef | None = None
    rolled_back: bool = False
    failed: bool = False


class Lifecycle:
    """Runs the table from IDLE back to IDLE, one handler per state."""

    def __init__(
        self,
        config: AgentConfig,
        paths: StatePaths,
        *,
        stop: ThreadEvent,
        client_factory: Callable[[], SyncClient],
        scorer: Scorer,
    ) -> None:
        self.scorer = scorer
        self.config = config
        self.paths = paths
        self.stop = stop
        self._client_factory = client_factory
        self._client: SyncClient | None = None
        self.record = load_record(paths)
        self.pending_assignment: Assignment | None = None
        self.outcome = Outcome()
        self.handlers: dict[State, Callable[[], Event]] = {
            State.IDLE: self.on_idle,
            State.CHECK: self.on_check,
            State.DOWNLOAD: self.on_download,
            State.VERIFY: self.on_verify,
            State.STAGE: self.on_stage,
            State.HEALTH_CHECK: self.on_health_check,
            State.ACTIVATE: self.on_activate,
            State.COMMIT: self.on_commit,
            State.ROLLBACK: self.on_rollback,
        }

    # -- driver --------------------------------------------------------------------------------------

    @property
    def client(self) -> SyncClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def recover(self) -> None:
        """After a restart: move from the persisted state to where it resumes."""
        found = self.record.state
        resume = RESUME[found]
        if found != State.IDLE:
            log.warning("lifecycle_resumed", found_state=found.value, resume_state=resume.value)
        self.record.state = resume
        save_record(self.paths, self.record)
        self._reconcile_current()

    def _reconcile_current(self) -> None:
        """If ``current`` disagrees with the committed record (crash in between), trust the record."""
        active = self.record.active
        if active is None or self.record.state != State.IDLE:
            return
        want = self.paths.version_dir(active.model_name, active.version)
        if read_symlink(self.paths.current) != want and want.is_dir():
            switch_symlink(self.paths.current, want)
            log.warning("current_link_repaired", model_version=active.version)

    def run(self) -> Outcome:
        """Run from the current state until back in IDLE (bounded: every path reaches IDLE)."""
        self.outcome = Outcome()
        if self.record.state == State.IDLE:
            self._enter(TRANSITIONS[(State.IDLE, self.handlers[State.IDLE]())])
        for _ in range(4 * len(State)):
            state = self.record.state
            if state == State.IDLE or self.stop.is_set():
                break
            self._fault_hold(state)
            if self.stop.is_set():
                break  # stopping: the persisted state is where a restart resumes
            try:
                event = self.handlers[state]()
            except Exception as exc:
                log.exception("lifecycle_handler_crashed", state=state.value)
                self.record.last_error = f"{state.value}: {type(exc).__name__}: {exc}"
                event = Event.FAILURE
            nxt = TRANSITIONS[(state, event)]
            log.debug("lifecycle_transition", state=state.value, lifecycle_event=event.value, next=nxt.value)
            self._enter(nxt)
        return self.outcome

    def _enter(self, state: State) -> None:
        self.record.state = state
        save_record(self.paths, self.record)

    def _fault_hold(self, state: State) -> None:
        if self.config.agent.fault_hold_state == state.value and self.config.agent.fault_hold_seconds > 0:
            log.warning(
                "lifecycle_fault_hold", state=state.value, seconds=self.config.agent.fault_hold_seconds
            )
            self.stop.wait(self.config.agent.fault_hold_seconds)

    def _reject(self, reason: str) -> Event:
        target = self.record.target
        if target is not None:
            self.record.rejected[target.bundle_sha256] = reason
            log.error(
                "update_rejected",
                model_name=target.model_name,
                model_version=target.version,
                bundle_sha256=target.bundle_sha256,
                reason=reason,
            )
            (self.paths.downloads / target.bundle_sha256).unlink(missing_ok=True)
            (self.paths.downloads / f"{target.bundle_sha256}.part").unlink(missing_ok=True)
            self._discard_unused(target)
        self.record.last_error = reason
        self.record.target = None
        self.outcome.failed = True
        return Event.FAILURE

    def _discard_unused(self, target: Target) -> None:
        remove_tree(self.paths.staging / target.bundle_sha256)
        vdir = self.paths.version_dir(target.model_name, target.version)
        keep = {self.record.active, self.record.previous}
        if VersionRef(target.model_name, target.version) not in keep and vdir != read_symlink(
            self.paths.current
        ):
            remove_tree(vdir)

    # -- handlers ------------------------------------------------------------------------------------

    def on_idle(self) -> Event:
        return Event.POLL

    def ensure_credential(self) -> None:
        token = self.config.agent.token or read_credential(self.paths)
        if not token and self.config.agent.enrollment_token:
            token = self.client.enroll(self.config.agent.store_id, self.config.agent.enrollment_token)
            write_credential(self.paths, token)
            log.info("agent_enrolled", store_id=self.config.agent.store_id)
        if not token:
            raise EnrollmentError("no store credential: set [agent] token or enrollment_token")
        self.client.token = token

    def on_check(self) -> Event:  # noqa: PLR0911 - each outcome of a poll is one return
        try:
            self.ensure_credential()
            poll = self.client.poll_assignment(self.config.agent.store_id, self.record.assignment_etag)
        except SyncError as exc:
            self.record.last_error = str(exc)
            self.outcome.failed = True
            log.warning("sync_failed", reason=str(exc))
            return Event.FAILURE
        self.record.last_sync_at = datetime.now(UTC)
        self.record.last_error = None
        if poll.not_modified or poll.assignment is None:
            return Event.NOTHING
        assignment = poll.assignment
        self.record.assignment_etag = poll.etag
        active = self.record.active
        if active and (active.model_name, active.version) == (assignment.model_name, assignment.version):
            return Event.NOTHING
        if (
            assignment.bundle_sha256 in self.record.rejected
            or f"{assignment.model_name}-{assignment.version}" in self.record.rejected
        ):
            return Event.NOTHING
        kept = self.paths.version_dir(assignment.model_name, assignment.version).is_dir()
        if assignment.version < self.record.highest_version and not kept:
            reason = (
                f"v{assignment.version} is older than v{self.record.highest_version} and not kept locally "
                "(downgrade refused)"
            )
            self.record.rejected[assignment.bundle_sha256] = reason
            log.error("update_rejected", model_version=assignment.version, reason=reason)
            return Event.NOTHING
        attempts = self.record.attempts.get(assignment.bundle_sha256, 0) + 1
        self.record.target = Target(
            assignment.model_name, assignment.version, assignment.bundle_sha256, assignment.bundle_size
        )
        if attempts > self.config.agent.max_update_attempts:
            log.error("update_loop_aborted", model_version=assignment.version, attempts=attempts - 1)
            self._reject(f"update to v{assignment.version} did not complete after {attempts - 1} attempts")
            return Event.NOTHING
        self.record.attempts[assignment.bundle_sha256] = attempts
        self.scorer.warm()
        log.info(
            "update_started",
            model_name=assignment.model_name,
            model_version=assignment.version,
            attempt=attempts,
        )
        return Event.UPDATE

    def _target(self) -> Target:
        if self.record.target is None:
            raise UpdateRejectedError("no update target recorded")
        return self.record.target

    def on_download(self) -> Event:
        target = self._target()
        if self.paths.version_dir(target.model_name, target.version).is_dir():
            return Event.SUCCESS
        try:
            self.ensure_credential()
            self.client.download_bundle(
                target.bundle_sha256,
                target.bundle_size,
                self.paths.downloads,
                max_bytes=self.config.agent.max_bundle_bytes,
            )
        except UpdateRejectedError as exc:
            return self._reject(str(exc))
        except SyncError as exc:
            self.record.last_error = str(exc)
            self.outcome.failed = True
            log.warning("download_failed", model_version=target.version, reason=str(exc))
            return Event.FAILURE
        return Event.SUCCESS

    def _trusted_keys(self) -> list[Path]:
        return [Path(p) for p in self.config.agent.trusted_keys]

    def on_verify(self) -> Event:
        from forecasting.bundle import unpack_archive, verify

        target = self._target()
        vdir = self.paths.version_dir(target.model_name, target.version)
        if vdir.is_dir():
            # Kept from before (a rollback target): it was verified when it arrived; check it again anyway.
            try:
                verify(vdir, self._trusted_keys(), max_file_bytes=self.config.agent.max_bundle_bytes)
            except BundleError as exc:
                return self._reject(f"kept version failed verification: {exc}")
            return Event.SUCCESS
        staging = self.paths.staging / target.bundle_sha256
        remove_tree(staging)
        archive = self.paths.downloads / target.bundle_sha256
        if not archive.is_file():
            return self._reject("downloaded archive is missing")
        try:
            unpacked = unpack_archive(archive, staging, max_bytes=self.config.agent.max_bundle_bytes)
            manifest = verify(
                unpacked,
                self._trusted_keys(),
                min_version=self.record.highest_version + 1,
                max_file_bytes=self.config.agent.max_bundle_bytes,
            )
        except BundleError as exc:
            return self._reject(f"{type(exc).__name__}: {exc}")
        if (manifest.model_name, manifest.version) != (target.model_name, target.version):
            return self._reject(
                f"bundle is {manifest.model_name} v{manifest.version}, assignment said "
                f"{target.model_name} v{target.version}"
            )
        return Event.SUCCESS

    def on_stage(self) -> Event:
        target = self._target()
        vdir = self.paths.version_dir(target.model_name, target.version)
        if vdir.is_dir():
            return Event.SUCCESS
        staging = self.paths.staging / target.bundle_sha256
        if not staging.is_dir():
            return self._reject("nothing staged")
        fsync_tree(staging)
        Path(staging).replace(vdir)
        fsync_tree(vdir)
        return Event.SUCCESS

    def on_health_check(self) -> Event:
        target = self._target()
        vdir = self.paths.version_dir(target.model_name, target.version)
        try:
            seconds = health_check(
                vdir,
                self.paths.staging / f"probe-{target.version}",
                self.scorer,
                store_id=self.config.agent.store_id,
            )
        except UpdateRejectedError as exc:
            return self._reject(str(exc))
        log.info("health_check_passed", model_version=target.version, duration_seconds=round(seconds, 3))
        return Event.SUCCESS

    def on_activate(self) -> Event:
        target = self._target()
        vdir = self.paths.version_dir(target.model_name, target.version)
        if self.record.active != VersionRef(target.model_name, target.version):
            self.record.previous = self.record.active
        save_record(self.paths, self.record)
        switch_symlink(self.paths.current, vdir)
        return Event.SUCCESS

    def on_commit(self) -> Event:
        target = self._target()
        ref = VersionRef(target.model_name, target.version)
        self.record.active = ref
        self.record.highest_version = max(self.record.highest_version, target.version)
        self.record.target = None
        self.record.attempts.pop(target.bundle_sha256, None)
        save_record(self.paths, self.record)
        (self.paths.downloads / target.bundle_sha256).unlink(missing_ok=True)
        prune_versions(self.paths, self.record, keep=self.config.agent.keep_versions)
        self.outcome.activated = ref
        log.info("model_activated", model_name=ref.model_name, model_version=ref.version)
        return Event.SUCCESS

    def on_rollback(self) -> Event:
        target = self.record.target
        back = self.record.active
        if back is None or not self.paths.version_dir(back.model_name, back.version).is_dir():
            back = self.record.previous
        if back is not None and self.paths.version_dir(back.model_name, back.version).is_dir():
            switch_symlink(self.paths.current, self.paths.version_dir(back.model_name, back.version))
            self.record.active = back
        log.warning(
            "update_rolled_back",
            failed_version=target.version if target else None,
            model_version=back.version if back else None,
        )
        self.outcome.rolled_back = True
        self.record.target = None
        # Ask for the full assignment next time: the update is retried (bounded by max_update_attempts).
        self.record.assignment_etag = None
        return Event.SUCCESS

    # -- operator rollback ---------------------------------------------------------------------------

    def rollback_to_previous(self) -> VersionRef:
        """``shelfcast agent rollback``: switch back to the newest kept version older than the active one."""
        active = self.record.active
        if active is None:
            raise UpdateRejectedError("no active version to roll back from")
        kept = kept_versions(self.paths, active.model_name)
        older = [v for v in kept if v < active.version]
        if not older:
            raise UpdateRejectedError(f"no kept version older than v{active.version} to roll back to")
        back = VersionRef(active.model_name, older[-1])
        self.record.state = State.ROLLBACK
        self.record.previous = active
        save_record(self.paths, self.record)
        switch_symlink(self.paths.current, self.paths.version_dir(back.model_name, back.version))
        self.record.active = back
        self.record.state = State.IDLE
        # The operator said no to the version we left: do not take it again from the same assignment.
        self.record.rejected[f"{active.model_name}-{active.version}"] = "rolled back by operator"
        self.record.assignment_etag = None
        save_record(self.paths, self.record)
        log.warning("operator_rollback", from_version=active.version, model_version=back.version)
        return back


def kept_versions(paths: StatePaths, model_name: str) -> list[int]:
    prefix = f"{model_name}-"
    found = []
    if paths.versions.is_dir():
        for entry in paths.versions.iterdir():
            if entry.is_dir() and entry.name.startswith(prefix) and entry.name[len(prefix) :].isdigit():
                found.append(int(entry.name[len(prefix) :]))
    return sorted(found)


def prune_versions(paths: StatePaths, record: Record, *, keep: int) -> None:
    """Keep the active version and the ``keep`` newest others; remove the rest."""
    if record.active is None:
        return
    versions = kept_versions(paths, record.active.model_name)
    others = [v for v in versions if v != record.active.version]
    for version in others[: max(0, len(others) - keep)]:
        remove_tree(paths.version_dir(record.active.model_name, version))
        log.info("version_pruned", model_version=version)
