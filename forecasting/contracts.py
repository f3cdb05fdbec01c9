"""What crosses the wire between the server and the agents, defined once and used by both sides."""

from __future__ import annotations

from datetime import datetime

import msgspec


class Assignment(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Which model version a store must run (``GET /v1/stores/{store_id}/assignment``)."""

    store_id: str
    model_name: str
    version: int
    bundle_sha256: str
    bundle_size: int
    shadow_version: int | None = None
    shadow_bundle_sha256: str | None = None
    shadow_bundle_size: int | None = None
    rollout_id: str | None = None


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An agent's periodic report of where it stands."""

    store_id: str
    state: str
    model_name: str | None = None
    active_version: int | None = None
    last_scored_at: datetime | None = None
    agent_version: str = ""
    sent_at: datetime


class ModelVersionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A registered, immutable model version as the registry describes it."""

    model_name: str
    version: int
    bundle_sha256: str
    bundle_size: int
    created_at: datetime
    run_id: str | None = None


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details, the body of every error response."""

    title: str
    status: int
    detail: str = ""
    type: str = "about:blank"
