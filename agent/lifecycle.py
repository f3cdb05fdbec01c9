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

A refusal is remembered with what it was judged under (``refusal_context``: the trusted keys' contents,
the config and the code version); once any of them changes, the refused bundles are tried again, and
``shelfcast agent retry`` (``retry_refused``) forces that. An operator's rollback is kept either way.

Errors are counted by kind in the record (``count_error``) and reported in every heartbeat, so the
server learns of refused updates (bad signature, tampered payload, downgrade, expiry ...) and failed
health checks. ``current_errors`` keeps the newest reason of each kind until the work it names succeeds
(``resolve_errors``): the server shows what still fails apart from the history. A shadow version
named by the assignment is fetched beside the table (``sync_shadow``) with the same checks into
``shadow/<model>-<version>/``; it is scored, never served.

The table itself (states, events, transitions, ``RESUME``) is :mod:`agent.states`; the record, its
error counts and the versions kept on disk are :mod:`agent.record`; the handlers are here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from threading import Event as ThreadEvent

from agent.config import AgentConfig
from agent.errors import EnrollmentError, SyncError, UpdateRejectedError
from agent.paths import (
    StatePaths,
    fsync_tree,
    read_symlink,
    remove_tree,
    switch_symlink,
)
from agent.record import (
    OPERATOR_ROLLBACK,
    STATE_ERROR_KIND,
    UPDATE_ERROR_KINDS,
    Target,
    VersionRef,
    clear_refusals,
    count_error,
    kept_versions,
    load_record,
    prune_versions,
    read_credential,
    refusal_context,
    resolve_errors,
    save_record,
    write_credential,
)
from agent.scoring import Scorer, health_check
from agent.states import RESUME, TRANSITIONS, Event, State
from agent.sync import SyncClient
from forecasting.common.contracts import Assignment
from forecasting.common.errors import BundleError
from forecasting.common.logs import get_logger

log = get_logger("agent.lifecycle")


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
        if resume == State.ROLLBACK:
            count_error(self.record, "activation", f"interrupted in {found.value}; rolling back")
        self.record.state = resume
        self._retry_if_context_changed()
        save_record(self.paths, self.record)
        self._reconcile_current()

    def _retry_if_context_changed(self) -> None:
        """Refusals judged under other keys, config or code are void: their bundles are tried again."""
        if not self.record.rejected and not self.record.attempts:
            return
        context = refusal_context(self.config)
        if self.record.refusal_context in (None, context):
            self.record.refusal_context = context
            return
        cleared = clear_refusals(self.record)
        self.record.refusal_context = context
        if cleared:
            log.info("refusals_cleared", reason="trusted keys, config or code changed", bundles=cleared)

    def retry_refused(self) -> list[str]:
        """``shelfcast agent retry``: try every refused bundle again at the next poll."""
        cleared = clear_refusals(self.record)
        save_record(self.paths, self.record)
        log.info("refusals_cleared", reason="operator retry", bundles=cleared)
        return cleared

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
                count_error(self.record, STATE_ERROR_KIND[state], self.record.last_error)
                event = Event.FAILURE
            if event == Event.FAILURE and state != State.CHECK:
                # Ask for the full assignment on the next poll, so a failed update is tried again there
                # (bounded by max_update_attempts; a refused bundle stays refused).
                self.record.assignment_etag = None
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

    def _reject(self, reason: str, kind: str = "verify") -> Event:
        target = self.record.target
        what = f"update to v{target.version} refused" if target is not None else "update refused"
        count_error(self.record, kind, f"{what}: {reason}")
        if target is not None:
            self._remember_refusal(target.bundle_sha256, reason)
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

    def _remember_refusal(self, key: str, reason: str) -> None:
        self.record.rejected[key] = reason
        self.record.refusal_context = refusal_context(self.config)

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
        self._retry_if_context_changed()  # a key file replaced in place counts too
        try:
            self.ensure_credential()
            poll = self.client.poll_assignment(self.config.agent.store_id, self.record.assignment_etag)
        except SyncError as exc:
            self.record.last_error = str(exc)
            self.outcome.failed = True
            count_error(self.record, "sync", str(exc))
            log.warning("sync_failed", reason=str(exc))
            return Event.FAILURE
        self.record.last_sync_at = datetime.now(UTC)
        self.record.last_error = None
        resolve_errors(self.record, "sync")
        if poll.not_modified:
            return Event.NOTHING
        if poll.assignment is None:
            self.record.shadow_target = None
            return Event.NOTHING
        assignment = poll.assignment
        self.record.assignment_etag = poll.etag
        self.record.shadow_target = _shadow_target(assignment)
        active = self.record.active
        if active and (active.model_name, active.version) == (assignment.model_name, assignment.version):
            resolve_errors(self.record, *UPDATE_ERROR_KINDS)  # whatever was refused is no longer asked for
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
            self._remember_refusal(assignment.bundle_sha256, reason)
            count_error(self.record, "verify", f"update to v{assignment.version} refused: {reason}")
            log.error("update_rejected", model_version=assignment.version, reason=reason)
            return Event.NOTHING
        attempts = self.record.attempts.get(assignment.bundle_sha256, 0) + 1
        self.record.target = Target(
            assignment.model_name, assignment.version, assignment.bundle_sha256, assignment.bundle_size
        )
        if attempts > self.config.agent.max_update_attempts:
            log.error("update_loop_aborted", model_version=assignment.version, attempts=attempts - 1)
            self._reject(
                f"update to v{assignment.version} did not complete after {attempts - 1} attempts",
                kind="activation",
            )
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
        vdir = self.paths.version_dir(target.model_name, target.version)
        if vdir.is_dir():
            return Event.SUCCESS
        shadow = self.paths.shadow_dir(target.model_name, target.version)
        if self.record.shadow == VersionRef(target.model_name, target.version) and shadow.is_dir():
            # The shadow version is now to be served: it was verified on arrival (and is again in VERIFY).
            shadow.replace(vdir)
            fsync_tree(vdir)
            self.record.shadow = None
            log.info("shadow_taken_for_update", model_version=target.version)
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
            count_error(self.record, "download", f"v{target.version}: {exc}")
            log.warning("download_failed", model_version=target.version, reason=str(exc))
            # A network or disk failure is not the update's fault: it does not use up an attempt.
            self.record.attempts[target.bundle_sha256] = self.record.attempts.get(target.bundle_sha256, 1) - 1
            return Event.FAILURE
        resolve_errors(self.record, "download")
        return Event.SUCCESS

    def _trusted_keys(self) -> list[Path]:
        return [Path(p) for p in self.config.agent.trusted_keys]

    def on_verify(self) -> Event:
        from forecasting.bundle.format import verify

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
            self._unpack_verified(archive, staging, target)
        except UpdateRejectedError as exc:
            return self._reject(str(exc))
        return Event.SUCCESS

    def _unpack_verified(self, archive: Path, staging: Path, want: Target, *, shadow: bool = False) -> Path:
        """Unpack ``archive`` into ``staging`` and verify it as ``want``, newer than any trusted version.

        A ``shadow`` may be older (it is scored, never served: serving an older version needs it kept
        locally, see ``on_sync``). The unpacked folder; UpdateRejectedError naming the check that failed.
        """
        from forecasting.bundle.format import unpack_archive, verify

        try:
            unpacked = unpack_archive(archive, staging, max_bytes=self.config.agent.max_bundle_bytes)
            manifest = verify(
                unpacked,
                self._trusted_keys(),
                min_version=0 if shadow else self.record.highest_version + 1,
                max_file_bytes=self.config.agent.max_bundle_bytes,
            )
        except BundleError as exc:
            raise UpdateRejectedError(f"{type(exc).__name__}: {exc}") from exc
        if (manifest.model_name, manifest.version) != (want.model_name, want.version):
            raise UpdateRejectedError(
                f"bundle is {manifest.model_name} v{manifest.version}, assignment said "
                f"{want.model_name} v{want.version}"
            )
        return unpacked

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
            return self._reject(str(exc), kind="health_check")
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
        resolve_errors(self.record, *UPDATE_ERROR_KINDS)
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

    # -- shadow version ------------------------------------------------------------------------------

    def sync_shadow(self) -> bool:
        """Keep the shadow version the assignment names (fetched and verified like an update), drop others.

        Returns True when a shadow version has just become ready. Never touches the served version: a
        failure is counted (``download`` when retried later, ``verify`` when refused for good) and logged.
        """
        want = self.record.shadow_target
        have = self.record.shadow
        wanted = VersionRef(want.model_name, want.version) if want is not None else None
        if have is not None and (have != wanted or wanted == self.record.active):
            self._drop_shadow(have, "no longer assigned" if have != wanted else "now served")
        if want is None or wanted is None or wanted == self.record.active:
            return False
        if self.record.shadow == wanted and self.paths.bundle_dir(want.model_name, want.version) is not None:
            return False
        # A version kept on disk (the champion while its candidate serves) was verified when it arrived:
        # it is scored from there, never fetched again.
        kept = self.paths.version_dir(want.model_name, want.version).is_dir()
        if not kept and (want.bundle_sha256 in self.record.rejected or not self._try_fetch_shadow(want)):
            return False
        self.record.shadow = wanted
        save_record(self.paths, self.record)
        log.info("shadow_ready", model_name=want.model_name, model_version=want.version)
        return True

    def _try_fetch_shadow(self, want: Target) -> bool:
        """Fetch the shadow; False (counted, logged, recorded) when that failed."""
        try:
            self._fetch_shadow(want)
        except UpdateRejectedError as exc:
            reason = str(exc)
            self._remember_refusal(want.bundle_sha256, reason)
            count_error(self.record, "verify", f"shadow v{want.version} refused: {reason}")
            log.error(  # noqa: TRY400 - expected refusal, no traceback
                "shadow_rejected",
                model_name=want.model_name,
                model_version=want.version,
                bundle_sha256=want.bundle_sha256,
                reason=reason,
            )
        except SyncError as exc:
            count_error(self.record, "download", f"shadow v{want.version}: {exc}")
            log.warning("shadow_download_failed", model_version=want.version, reason=str(exc))
        except Exception as exc:  # e.g. a full disk: never let the shadow stop the work loop; retried
            count_error(self.record, "shadow", f"v{want.version}: {type(exc).__name__}: {exc}")
            log.exception("shadow_fetch_failed", model_version=want.version)
        else:
            return True
        finally:
            remove_tree(self.paths.staging / f"shadow-{want.bundle_sha256}")
            (self.paths.downloads / want.bundle_sha256).unlink(missing_ok=True)
        save_record(self.paths, self.record)
        return False

    def _fetch_shadow(self, want: Target) -> None:
        """Download, unpack, verify (hash, size, signature, trusted key, expiry, version) into ``shadow/``."""
        self.ensure_credential()
        archive = self.client.download_bundle(
            want.bundle_sha256,
            want.bundle_size,
            self.paths.downloads,
            max_bytes=self.config.agent.max_bundle_bytes,
        )
        staging = self.paths.staging / f"shadow-{want.bundle_sha256}"
        remove_tree(staging)
        unpacked = self._unpack_verified(archive, staging, want, shadow=True)
        target = self.paths.shadow_dir(want.model_name, want.version)
        remove_tree(self.paths.shadow)
        self.paths.shadow.mkdir(parents=True, exist_ok=True)
        fsync_tree(unpacked)
        Path(unpacked).replace(target)
        fsync_tree(target)

    def _drop_shadow(self, have: VersionRef, why: str) -> None:
        remove_tree(self.paths.shadow_dir(have.model_name, have.version))
        self.record.shadow = None
        save_record(self.paths, self.record)
        log.info("shadow_dropped", model_name=have.model_name, model_version=have.version, reason=why)

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
        self.record.rejected[f"{active.model_name}-{active.version}"] = OPERATOR_ROLLBACK
        self.record.assignment_etag = None
        save_record(self.paths, self.record)
        log.warning("operator_rollback", from_version=active.version, model_version=back.version)
        return back


def _shadow_target(assignment: Assignment) -> Target | None:
    if (
        assignment.shadow_version is None
        or not assignment.shadow_bundle_sha256
        or assignment.shadow_version == assignment.version
    ):
        return None
    return Target(
        assignment.model_name,
        assignment.shadow_version,
        assignment.shadow_bundle_sha256,
        assignment.shadow_bundle_size or 0,
    )
