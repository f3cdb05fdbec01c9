"""The signing keys the server trusts for uploads: listed, trusted and revoked over the admin API, audited.

A key trusted over the API is written to ``<state_dir>/keys/<key id>.pub`` (where a key copied by hand
works too); a key listed in ``[server] trusted_keys`` is shown but can only be removed from the config.
Every trust and revocation is a row of ``key_events`` naming the admin credential that did it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgspec

from forecasting.bundle.signing import key_id, load_public_key
from forecasting.common.errors import KeyFileError
from forecasting.common.logs import get_logger
from server.auth import Principal
from server.db import as_utc
from server.errors import ConflictError, InvalidInputError, NotFoundError
from server.registry import schemas
from server.registry.repository import RegistryRepository

log = get_logger("server.registry.keys")

MAX_PEM_BYTES = 4096
MAX_LABEL_CHARS = 200


class KeyRing:
    def __init__(self, repo: RegistryRepository, configured: Sequence[str], keys_dir: Path) -> None:
        self.repo = repo
        self.configured = [Path(p) for p in configured]
        self.keys_dir = keys_dir

    def files(self) -> list[Path]:
        """Public key files trusted now: ``[server] trusted_keys`` plus ``<state_dir>/keys/*.pub``."""
        found = sorted(self.keys_dir.glob("*.pub")) if self.keys_dir.is_dir() else []
        return [*self.configured, *found]

    def listed(self) -> list[schemas.TrustedKey]:
        keys = []
        for path in self.files():
            source = "config" if path in self.configured else "state_dir"
            try:
                kid = key_id(load_public_key(path))
            except KeyFileError as exc:
                keys.append(schemas.TrustedKey(key_id="", source=source, path=str(path), error=str(exc)))
                continue
            keys.append(schemas.TrustedKey(key_id=kid, source=source, path=str(path)))
        return keys

    def trust(self, body: schemas.KeyTrust, who: Principal) -> schemas.TrustedKey:
        """Trust a PEM ed25519 public key from now on (idempotent for a key trusted already)."""
        pem = body.public_key.encode()
        if len(body.label) > MAX_LABEL_CHARS:
            raise InvalidInputError(f"label: at most {MAX_LABEL_CHARS} characters")
        if len(pem) > MAX_PEM_BYTES or b"PRIVATE KEY" in pem:
            raise InvalidInputError("public_key: send the PEM public key (FILE.pub), never the private key")
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.keys_dir, prefix=".trust-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            try:
                kid = key_id(load_public_key(tmp))
            except KeyFileError as exc:
                raise InvalidInputError(f"public_key: {str(exc).split(': ', 1)[-1]}") from None
            target = self.keys_dir / f"{kid}.pub"
            tmp.chmod(0o644)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        with self.repo.db.transaction():
            self.repo.insert_key_event("trust", kid, who.actor, body.label)
        log.info("signing_key_trusted", key_id=kid, actor=who.actor, label=body.label)
        return schemas.TrustedKey(key_id=kid, source="state_dir", path=str(target))

    def revoke(self, kid: str, who: Principal) -> schemas.TrustedKey:
        """Stop trusting ``kid`` for uploads (versions published before stay; agents keep their own list)."""
        matches = [key for key in self.listed() if key.key_id == kid]
        if not matches:
            raise NotFoundError(f"no trusted key {kid!r}; `shelfcast keys list` shows them")
        if any(key.source == "config" for key in matches):
            raise ConflictError(f"key {kid} is listed in [server] trusted_keys: remove it there and restart")
        for key in matches:
            Path(key.path).unlink(missing_ok=True)
        with self.repo.db.transaction():
            self.repo.insert_key_event("revoke", kid, who.actor, "")
        log.info("signing_key_revoked", key_id=kid, actor=who.actor)
        return msgspec.structs.replace(matches[0], revoked=True)

    def history(self, limit: int) -> list[schemas.KeyEvent]:
        events = []
        for row in self.repo.key_events(limit):
            at = as_utc(row["event_at"]) or row["event_at"]
            events.append(
                schemas.KeyEvent(
                    at=at, action=row["action"], key_id=row["key_id"], actor=row["actor"], label=row["label"]
                )
            )
        return events
