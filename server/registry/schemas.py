"""Wire types of the registry API: models, versions, aliases, runs, datasets, lineage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from forecasting.common.contracts import Count, ModelVersionInfo, Version


class ModelInfo(msgspec.Struct, kw_only=True):
    name: str
    description: str
    tags: list[str]
    created_at: datetime
    latest_version: int | None
    version_count: int
    aliases: dict[str, int]


class ModelPage(msgspec.Struct, kw_only=True):
    items: list[ModelInfo]
    next_cursor: str | None


class ModelUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: str | None = None
    tags: list[str] | None = None


class VersionDetail(msgspec.Struct, kw_only=True):
    model_name: str
    version: int
    bundle_sha256: str
    bundle_size: int
    created_at: datetime
    created_by: str
    run_id: str | None
    dataset_id: str | None
    aliases: list[str]
    manifest: dict[str, Any]


class VersionPage(msgspec.Struct, kw_only=True):
    items: list[ModelVersionInfo]
    next_cursor: str | None


class AliasSet(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: Version
    reason: str = ""


class AliasRollback(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: str = ""


class AliasInfo(msgspec.Struct, kw_only=True):
    model_name: str
    alias: str
    version: int
    previous_version: int | None = None
    updated_at: datetime
    updated_by: str


class AliasEvent(msgspec.Struct, kw_only=True):
    event_id: int
    model_name: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str
    moved_at: datetime


class AliasEventPage(msgspec.Struct, kw_only=True):
    items: list[AliasEvent]
    next_cursor: str | None


class DatasetIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A dataset version, identified by the sha256 of its content."""

    dataset_id: str
    name: str = ""
    schema: dict[str, str] = msgspec.field(default_factory=dict)
    row_count: Count | None = None
    date_min: str | None = None
    date_max: str | None = None
    stores: list[str] = msgspec.field(default_factory=list)
    source: str = ""


class Dataset(msgspec.Struct, kw_only=True):
    dataset_id: str
    name: str
    schema: dict[str, str]
    row_count: int | None
    date_min: str | None
    date_max: str | None
    stores: list[str]
    source: str
    created_at: datetime


class DatasetPage(msgspec.Struct, kw_only=True):
    items: list[Dataset]
    next_cursor: str | None


class Run(msgspec.Struct, kw_only=True):
    run_id: str
    model_name: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    selection: dict[str, Any]
    artifacts: list[Any]
    dataset_id: str | None
    code_version: str
    packages: dict[str, Any]
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    created_by: str


class RunPage(msgspec.Struct, kw_only=True):
    items: list[Run]
    next_cursor: str | None


class RunComparison(msgspec.Struct, kw_only=True):
    """Two or more runs side by side: one row per field, one column per run."""

    run_ids: list[str]
    rows: list[dict[str, Any]]


class VersionLineage(msgspec.Struct, kw_only=True):
    version: ModelVersionInfo
    run: Run | None
    dataset: Dataset | None


class DatasetLineage(msgspec.Struct, kw_only=True):
    dataset: Dataset
    runs: list[Run]
    versions: list[ModelVersionInfo]


class KeyTrust(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/keys``: a PEM ed25519 public key (the contents of ``FILE.pub``) to trust for uploads."""

    public_key: str
    label: str = ""


class TrustedKey(msgspec.Struct, kw_only=True):
    key_id: str
    source: str  # "config" ([server] trusted_keys) | "state_dir" (<state_dir>/keys, where the API writes)
    path: str
    error: str = ""  # a file that is no ed25519 public key (listed so it can be fixed)
    revoked: bool = False


class KeyEvent(msgspec.Struct, kw_only=True):
    at: datetime
    action: str  # trust | revoke
    key_id: str
    actor: str
    label: str = ""
