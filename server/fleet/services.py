"""Rules of the fleet: stores and their credentials, enrollment, heartbeats, assignments (cached, ETagged)."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from forecasting.common.contracts import Assignment, Heartbeat
from forecasting.common.logs import get_logger
from server.auth import Principal, TokenIndex, hash_token, new_id, new_token
from server.db import as_utc, to_naive_utc, utcnow
from server.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    UnauthorizedError,
)
from server.fleet import schemas
from server.fleet.contacts import ContactBook
from server.fleet.repository import FleetRepository
from server.pagination import next_cursor, page_request
from server.registry.repository import RegistryRepository
from server.registry.services import check_name
from server.writer import GroupWriter

log = get_logger("server.fleet")

REPORT_KEY_RETENTION = timedelta(days=1)
PRUNE_EVERY_HEARTBEATS = 1000  # keeps the idempotency-key table to about a day of reports
ERROR_RETENTION = timedelta(days=90)  # error increases kept for rollout health gates (longer than a bake)
MAX_ERROR_KINDS = 50


class CachedAssignment(msgspec.Struct, frozen=True):
    etag: str
    body: bytes


class FleetService:
    def __init__(
        self,
        repo: FleetRepository,
        registry: RegistryRepository,
        tokens: TokenIndex,
        writer: GroupWriter,
        contacts: ContactBook,
        *,
        enrollment_ttl_seconds: int,
        stale_after_seconds: int,
        page_default: int,
        page_cap: int,
    ) -> None:
        self.repo = repo
        self.registry = registry
        self.tokens = tokens
        self.enrollment_ttl = timedelta(seconds=enrollment_ttl_seconds)
        self.stale_after = timedelta(seconds=stale_after_seconds)
        self.page_default = page_default
        self.page_cap = page_cap
        self._assignments: dict[str, CachedAssignment | None] = {}
        self._cache_lock = threading.Lock()
        self._generation = 0
        self._heartbeats = 0
        # store id -> (what its last stored heartbeat said, its sent_at), for the unchanged-heartbeat path
        self._last_said: dict[str, tuple[tuple[Any, ...], datetime]] = {}
        self.writer = writer
        self.contacts = contacts
        # (store_id, model_name) -> the active rollout's version for the store, if any
        self.rollout_override: Callable[[str, str], Any] | None = None

    def load_tokens(self) -> None:
        """Fill the token index from the credentials table (at start and after restores)."""
        self.tokens.replace_all(
            (
                r["token_sha256"],
                Principal(role=r["role"], credential_id=r["credential_id"], store_id=r["store_id"]),
            )
            for r in self.repo.active_credentials()
        )

    # --- stores -----------------------------------------------------------------------------------

    def create_store(self, body: schemas.StoreCreate) -> schemas.StoreCreated:
        check_name(body.store_id, "store id")
        check_name(body.model_name, "model name")
        with self.repo.db.transaction():
            if self.repo.get_store(body.store_id) is not None:
                raise ConflictError(f"store {body.store_id!r} already exists")
            self.repo.insert_store(msgspec.to_builtins(body))
            self.repo.set_groups(body.store_id, body.groups)
            token, expires_at = self._issue_enrollment(body.store_id)
        self.repo.db.checkpoint()
        self.invalidate_assignments()
        log.info("store_created", store_id=body.store_id, model_name=body.model_name)
        return schemas.StoreCreated(store_id=body.store_id, enrollment_token=token, expires_at=expires_at)

    def update_store(self, store_id: str, body: schemas.StoreUpdate) -> schemas.Store:
        changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None and k != "groups"}
        if "model_name" in changes:
            check_name(changes["model_name"], "model name")
        with self.repo.db.transaction():
            self._require_store(store_id)
            self.repo.update_store(store_id, changes)
            if body.groups is not None:
                self.repo.set_groups(store_id, body.groups)
        self.repo.db.checkpoint()
        self.invalidate_assignments()
        return self.get_store(store_id)

    def get_store(self, store_id: str) -> schemas.Store:
        return self._store(self._require_store(store_id))

    def list_stores(
        self,
        *,
        limit: int | None,
        cursor: str | None,
        region: str | None = None,
        group: str | None = None,
        model_name: str | None = None,
    ) -> schemas.StorePage:
        page = page_request(limit, cursor, default=self.page_default, cap=self.page_cap)
        rows = self.repo.list_stores(
            after=page.after[0] if page.after else None,
            limit=page.limit + 1,
            region=region,
            group=group,
            model_name=model_name,
        )
        rows, nxt = next_cursor(rows, page.limit, lambda r: [r["store_id"]])
        return schemas.StorePage(items=[self._store(r) for r in rows], next_cursor=nxt)

    def list_groups(self) -> list[schemas.Group]:
        return [msgspec.convert(r, schemas.Group) for r in self.repo.list_groups()]

    def _require_store(self, store_id: str) -> dict[str, Any]:
        row = self.repo.get_store(store_id)
        if row is None:
            raise NotFoundError(f"no store {store_id!r}")
        return row

    def _store(self, row: dict[str, Any]) -> schemas.Store:
        status = None
        if row.get("state") is not None:
            contact = row["last_contact_at"]
            status = schemas.AgentStatus(
                state=row["state"],
                model_name=row["status_model_name"],
                active_version=row["active_version"],
                last_scored_at=as_utc(row["last_scored_at"]),
                agent_version=row["agent_version"],
                last_contact_at=as_utc(contact) or contact,
                stale=contact < utcnow() - self.stale_after,
                errors=row.get("errors") or {},
                last_error=row.get("last_error"),
                last_error_at=as_utc(row.get("last_error_at")),
                shadow_version=row.get("shadow_version"),
                current_errors=row.get("current_errors") or {},
            )
        return schemas.Store(
            store_id=row["store_id"],
            model_name=row["model_name"],
            name=row["name"],
            region=row["region"],
            type=row["type"],
            size=row["size"],
            tags=row["tags"],
            groups=list(row["groups"]),
            created_at=as_utc(row["created_at"]) or row["created_at"],
            revoked_at=as_utc(row["revoked_at"]),
            status=status,
        )

    # --- enrollment and credentials -------------------------------------------------------------------

    def _issue_enrollment(self, store_id: str) -> tuple[str, datetime]:
        token = new_token("enroll")
        expires_at = utcnow() + self.enrollment_ttl
        self.repo.insert_enrollment_token(hash_token(token), store_id, expires_at)
        return token, as_utc(expires_at) or expires_at

    def new_enrollment_token(self, store_id: str) -> schemas.StoreCreated:
        """A fresh one-time enrollment token (to re-enroll a replaced machine); older ones stop working."""
        with self.repo.db.transaction():
            self._require_store(store_id)
            self.repo.expire_enrollment_tokens(store_id)
            self.repo.set_store_revoked(store_id, revoked=False)
            token, expires_at = self._issue_enrollment(store_id)
        self.repo.db.checkpoint()
        self.invalidate_assignments()
        return schemas.StoreCreated(store_id=store_id, enrollment_token=token, expires_at=expires_at)

    def enroll(self, body: schemas.EnrollRequest) -> schemas.EnrollResponse:
        """Exchange a one-time enrollment token for the store's credential (older ones are revoked)."""
        digest = hash_token(body.enrollment_token)
        with self.repo.db.transaction():
            row = self.repo.get_enrollment_token(digest)
            if row is None or not hmac.compare_digest(row["token_sha256"], digest):
                raise UnauthorizedError("unknown enrollment token")
            if row["store_id"] != body.store_id:
                raise PermissionDeniedError(f"this enrollment token is not for store {body.store_id!r}")
            if row["used_at"] is not None:
                raise UnauthorizedError("this enrollment token was already used (ask an admin for a new one)")
            if row["expires_at"] < utcnow():
                raise UnauthorizedError("this enrollment token has expired (ask an admin for a new one)")
            self.repo.use_enrollment_token(digest)
            self.repo.revoke_credentials(store_id=body.store_id)
            credential_id, token = self._new_store_credential(body.store_id, "enrolled")
        self.repo.db.checkpoint()
        self.tokens.remove_where(lambda p: p.store_id == body.store_id and p.credential_id != credential_id)
        log.info("store_enrolled", store_id=body.store_id, credential_id=credential_id)
        return schemas.EnrollResponse(store_id=body.store_id, token=token, credential_id=credential_id)

    def _new_store_credential(self, store_id: str, label: str) -> tuple[str, str]:
        token = new_token("agent")
        credential_id = new_id("cred")
        digest = hash_token(token)
        self.repo.insert_credential(credential_id, digest, "agent", store_id, label)
        self.tokens.add(digest, Principal(role="agent", credential_id=credential_id, store_id=store_id))
        return credential_id, token

    def rotate_store_credential(self, store_id: str, who: Principal) -> schemas.EnrollResponse:
        """A new credential for the store; the previous ones stop working at once."""
        with self.repo.db.transaction():
            self._require_store(store_id)
            self.repo.revoke_credentials(store_id=store_id)
            credential_id, token = self._new_store_credential(store_id, f"rotated by {who.actor}")
        self.repo.db.checkpoint()
        self.tokens.remove_where(lambda p: p.store_id == store_id and p.credential_id != credential_id)
        log.info("store_credential_rotated", store_id=store_id, actor=who.actor)
        return schemas.EnrollResponse(store_id=store_id, token=token, credential_id=credential_id)

    def revoke_store(self, store_id: str, who: Principal) -> schemas.Store:
        """Revoke every credential and pending enrollment token of the store; it gets no assignment."""
        with self.repo.db.transaction():
            self._require_store(store_id)
            self.repo.revoke_credentials(store_id=store_id)
            self.repo.expire_enrollment_tokens(store_id)
            self.repo.set_store_revoked(store_id, revoked=True)
        self.repo.db.checkpoint()
        self.tokens.remove_where(lambda p: p.store_id == store_id)
        self.invalidate_assignments()
        log.info("store_revoked", store_id=store_id, actor=who.actor)
        return self.get_store(store_id)

    def create_credential(self, body: schemas.CredentialCreate, who: Principal) -> schemas.CredentialCreated:
        token = new_token(body.role)
        credential_id = new_id("cred")
        digest = hash_token(token)
        with self.repo.db.transaction():
            self.repo.insert_credential(
                credential_id, digest, body.role, None, body.label or f"by {who.actor}"
            )
        self.repo.db.checkpoint()
        self.tokens.add(digest, Principal(role=body.role, credential_id=credential_id))
        log.info("credential_created", credential_id=credential_id, role=body.role, actor=who.actor)
        return schemas.CredentialCreated(credential_id=credential_id, role=body.role, token=token)

    def list_credentials(self) -> list[schemas.Credential]:
        rows = self.repo.list_credentials()
        for row in rows:
            row["created_at"] = as_utc(row["created_at"])
            row["revoked_at"] = as_utc(row["revoked_at"])
        return [msgspec.convert(r, schemas.Credential) for r in rows]

    def revoke_credential(self, credential_id: str, who: Principal) -> None:
        if who.credential_id == credential_id:
            raise ConflictError("a credential cannot revoke itself")
        with self.repo.db.transaction():
            if self.repo.get_credential(credential_id) is None:
                raise NotFoundError(f"no credential {credential_id!r}")
            self.repo.revoke_credentials(credential_id=credential_id)
        self.repo.db.checkpoint()
        self.tokens.remove_where(lambda p: p.credential_id == credential_id)
        log.info("credential_revoked", credential_id=credential_id, actor=who.actor)

    # --- heartbeats -------------------------------------------------------------------------------

    async def record_heartbeat(
        self, beat: Heartbeat, who: Principal, idempotency_key: str | None
    ) -> schemas.Accepted:
        """Store a heartbeat; answered once the batch holding it is committed.

        A heartbeat that says what the store's last stored one said (only its time differs) is a contact:
        kept in memory and written with the next batch. With an ``Idempotency-Key`` the key is still
        claimed in a batch (a retried delivery is told ``duplicate``); without one it is answered at once.
        """
        if who.role == "agent" and who.store_id != beat.store_id:
            raise PermissionDeniedError(
                f"this credential belongs to store {who.store_id}; it cannot report for {beat.store_id}"
            )
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
            raise InvalidInputError("Idempotency-Key must be 1-200 characters")
        _check_error_counts(beat.errors)
        row = _status_row(beat, _current_errors(beat.current_errors))
        sent_at = row["sent_at"]
        said = _said(row)
        last = self._last_said.get(beat.store_id)
        if last is not None and last[0] == said and sent_at >= last[1]:
            if idempotency_key is None:
                self.contacts.note(beat.store_id, utcnow(), sent_at)
                return schemas.Accepted()
            return await self.writer.run_grouped(
                self._keyed_contacts, (beat.store_id, idempotency_key, sent_at)
            )
        accepted, applied = await self.writer.run(lambda: self._store_heartbeat(row, who, idempotency_key))
        if applied:
            self._remember(beat.store_id, said, sent_at)
        return accepted

    def _remember(self, store_id: str, said: tuple[Any, ...], sent_at: datetime) -> None:
        last = self._last_said.get(store_id)
        if last is None or sent_at >= last[1]:
            self._last_said[store_id] = (said, sent_at)

    def _keyed_contacts(self, beats: list[tuple[str, str, datetime]]) -> list[schemas.Accepted]:
        """Unchanged heartbeats with keys, all of a batch's at once (``(store_id, key, sent_at)``): one
        claim of their keys, then each new one is a contact noted in memory."""
        now = utcnow()
        new = self.repo.claim_report_keys([(store_id, key) for store_id, key, _ in beats], now)
        answers = []
        for store_id, key, sent_at in beats:
            if (store_id, key) not in new:  # seen before, or earlier in this batch
                answers.append(schemas.Accepted(duplicate=True))
                continue
            new.discard((store_id, key))
            self.contacts.note(store_id, now, sent_at)
            self._count_heartbeat(now)
            answers.append(schemas.Accepted())
        return answers

    def _store_heartbeat(
        self, row: dict[str, Any], who: Principal, idempotency_key: str | None
    ) -> tuple[schemas.Accepted, bool]:
        """A heartbeat's writes (in a batch); whether it replaced the stored status as well."""
        store_id = row["store_id"]
        now = row["last_contact_at"] = utcnow()
        sent_at = row["sent_at"]
        # an agent credential exists only for an existing store; an admin may name any store
        if who.role != "agent" and not self.repo.store_exists(store_id):
            raise NotFoundError(f"no store {store_id!r}")
        if idempotency_key and not self.repo.claim_report_key(store_id, idempotency_key):
            return schemas.Accepted(duplicate=True), False
        previous = self.repo.reported_errors(store_id)
        # ordered by sent_at, unless the stored one lies ahead of our clock (see upsert_agent_status)
        applied = previous is None or sent_at >= previous[0] or previous[0] > now
        if applied:
            increases = error_increases(previous[1] if previous else {}, row["errors"])
            if increases:
                self.repo.insert_error_increases(store_id, increases, row["last_error"], now)
                log.warning(
                    "agent_errors_reported",
                    store_id=store_id,
                    new_errors={k: v[0] for k, v in increases.items()},
                    last_error=row["last_error"],
                )
        self.repo.upsert_agent_status(row)
        if not applied:  # an applied one wrote the contact time itself
            self.repo.touch_agent(store_id, now)
        self._count_heartbeat(now)
        return schemas.Accepted(), applied

    def _count_heartbeat(self, now: datetime) -> None:
        self._heartbeats += 1
        if self._heartbeats % PRUNE_EVERY_HEARTBEATS == 0:
            self.repo.prune_report_keys(now - REPORT_KEY_RETENTION)
            self.repo.prune_agent_errors(now - ERROR_RETENTION)

    def note_contact(self, store_id: str) -> None:
        """A poll: the store was here now (written with the writer's next batch)."""
        self.contacts.note(store_id, utcnow())

    def prune(self) -> None:
        with self.repo.db.transaction():
            self.repo.prune_report_keys(utcnow() - REPORT_KEY_RETENTION)
            self.repo.prune_agent_errors(utcnow() - ERROR_RETENTION)

    def gauges(self) -> dict[str, Any]:
        return self.repo.fleet_gauges(utcnow() - self.stale_after)

    # --- assignments ------------------------------------------------------------------------------

    def invalidate_assignments(self) -> None:
        with self._cache_lock:
            self._assignments = {}
            self._generation += 1

    def cached_assignment(self, store_id: str) -> CachedAssignment | bool | None:
        """The cached answer for ``store_id``: the entry, None (nothing assigned), False (not cached)."""
        return self._assignments.get(store_id, False)

    def assignment(self, store_id: str) -> CachedAssignment:
        """The store's assignment (its model's ``champion``) with a strong ETag; cached until a change."""
        cached = self._assignments.get(store_id, False)
        if cached is False:
            with self._cache_lock:
                generation = self._generation
            cached = self._compute_assignment(store_id)
            with self._cache_lock:
                if generation == self._generation:
                    self._assignments[store_id] = cached
        if cached is None:
            raise NotFoundError(f"nothing is assigned to store {store_id!r} yet (its model has no champion)")
        assert isinstance(cached, CachedAssignment)
        return cached

    def _compute_assignment(self, store_id: str) -> CachedAssignment | None:
        store = self._require_store(store_id)
        if store["revoked_at"] is not None:
            return None
        model_name = store["model_name"]
        alias = self.registry.get_alias(model_name, "champion")
        if alias is None:
            return None
        version = self.registry.get_version(model_name, int(alias["version"]))
        if version is None:
            return None
        assignment = Assignment(
            store_id=store_id,
            model_name=model_name,
            version=int(version["version"]),
            bundle_sha256=version["bundle_sha256"],
            bundle_size=int(version["bundle_size"]),
        )
        override = self.rollout_override(store_id, model_name) if self.rollout_override else None
        candidate = None if override is None else self.registry.get_version(model_name, int(override.version))
        if override is not None and candidate is not None and candidate["version"] != version["version"]:
            if override.shadow:
                assignment = msgspec.structs.replace(
                    assignment,
                    shadow_version=int(candidate["version"]),
                    shadow_bundle_sha256=candidate["bundle_sha256"],
                    shadow_bundle_size=int(candidate["bundle_size"]),
                    rollout_id=override.rollout_id,
                )
            else:
                assignment = msgspec.structs.replace(
                    assignment,
                    version=int(candidate["version"]),
                    bundle_sha256=candidate["bundle_sha256"],
                    bundle_size=int(candidate["bundle_size"]),
                    rollout_id=override.rollout_id,
                )
                if override.champion_shadow:  # paired evidence: the champion keeps being scored
                    assignment = msgspec.structs.replace(
                        assignment,
                        shadow_version=int(version["version"]),
                        shadow_bundle_sha256=version["bundle_sha256"],
                        shadow_bundle_size=int(version["bundle_size"]),
                    )
        body = msgspec.json.encode(assignment)
        return CachedAssignment(etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"', body=body)


def _status_row(beat: Heartbeat, current_errors: dict[str, str]) -> dict[str, Any]:
    """The ``agent_status`` row a heartbeat stores (``last_contact_at`` is set when it is written)."""
    return {
        "store_id": beat.store_id,
        "state": beat.state,
        "model_name": beat.model_name,
        "active_version": beat.active_version,
        "last_scored_at": to_naive_utc(beat.last_scored_at),
        "agent_version": beat.agent_version,
        "sent_at": to_naive_utc(beat.sent_at),
        "last_contact_at": None,
        "errors": beat.errors,
        "last_error": beat.last_error[:1000] if beat.last_error else None,
        "last_error_at": to_naive_utc(beat.last_error_at),
        "shadow_version": beat.shadow_version,
        "current_errors": current_errors,
    }


def _said(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a heartbeat says besides its times (two equal ones change nothing but the contact time)."""
    return (
        row["state"], row["model_name"], row["active_version"], row["last_scored_at"], row["agent_version"],
        tuple(sorted(row["errors"].items())), row["last_error"], row["last_error_at"], row["shadow_version"],
        tuple(sorted(row["current_errors"].items())),
    )  # fmt: skip


def _check_error_counts(errors: dict[str, int]) -> None:
    if len(errors) > MAX_ERROR_KINDS:
        raise InvalidInputError(f"heartbeat: errors: at most {MAX_ERROR_KINDS} kinds")
    for kind, count in errors.items():
        if not (0 < len(kind) <= 40) or count < 0:
            raise InvalidInputError(f"heartbeat: errors: bad entry {kind[:40]!r}: {count}")


def _current_errors(reasons: dict[str, str]) -> dict[str, str]:
    """The standing errors of a heartbeat: known-size map, each reason cut to 1,000 characters."""
    if len(reasons) > MAX_ERROR_KINDS:
        raise InvalidInputError(f"heartbeat: current_errors: at most {MAX_ERROR_KINDS} kinds")
    for kind in reasons:
        if not 0 < len(kind) <= 40:
            raise InvalidInputError(f"heartbeat: current_errors: bad kind {kind[:40]!r}")
    return {kind: reason[:1000] for kind, reason in reasons.items()}


def error_increases(before: dict[str, int], now: dict[str, int]) -> dict[str, tuple[int, int]]:
    """``kind -> (new errors, total)`` for every cumulative counter that went up.

    A counter below the stored one means the agent started counting again (a new state folder): all of
    its errors are new.
    """
    found: dict[str, tuple[int, int]] = {}
    for kind, total in now.items():
        old = before.get(kind, 0)
        new = total - old if total >= old else total
        if new > 0:
            found[kind] = (new, total)
    return found
