"""Wire types of the fleet API: stores, enrollment, credentials, agent status."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec


class StoreCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    store_id: str
    model_name: str = "demand"
    name: str = ""
    region: str = ""
    type: str = ""
    size: str = ""
    tags: list[str] = msgspec.field(default_factory=list)
    groups: list[str] = msgspec.field(default_factory=list)


class StoreUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model_name: str | None = None
    name: str | None = None
    region: str | None = None
    type: str | None = None
    size: str | None = None
    tags: list[str] | None = None
    groups: list[str] | None = None


class StoreCreated(msgspec.Struct, kw_only=True):
    store_id: str
    enrollment_token: str
    expires_at: datetime


class AgentStatus(msgspec.Struct, kw_only=True):
    state: str
    model_name: str | None
    active_version: int | None
    last_scored_at: datetime | None
    agent_version: str
    last_contact_at: datetime
    stale: bool
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    last_error: str | None = None
    last_error_at: datetime | None = None
    shadow_version: int | None = None
    # errors that still stand (kind -> newest reason); ``last_error`` is history once its kind left here
    current_errors: dict[str, str] = msgspec.field(default_factory=dict)


class Store(msgspec.Struct, kw_only=True):
    store_id: str
    model_name: str
    name: str
    region: str
    type: str
    size: str
    tags: list[str]
    groups: list[str]
    created_at: datetime
    revoked_at: datetime | None
    status: AgentStatus | None = None


class StorePage(msgspec.Struct, kw_only=True):
    items: list[Store]
    next_cursor: str | None


class Group(msgspec.Struct, kw_only=True):
    group: str
    store_ids: list[str]


class EnrollRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    store_id: str
    enrollment_token: str


class EnrollResponse(msgspec.Struct, kw_only=True):
    store_id: str
    token: str
    credential_id: str


class CredentialCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    role: Literal["admin", "reader"]
    label: str = ""


class CredentialCreated(msgspec.Struct, kw_only=True):
    credential_id: str
    role: str
    token: str


class Credential(msgspec.Struct, kw_only=True):
    credential_id: str
    role: str
    store_id: str | None
    label: str
    created_at: datetime
    revoked_at: datetime | None


class Accepted(msgspec.Struct, kw_only=True):
    accepted: bool = True
    duplicate: bool = False
