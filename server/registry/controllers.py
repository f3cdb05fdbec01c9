"""HTTP routes of the registry: models, versions (bundle upload and download), aliases, runs, datasets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any

import anyio
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.datastructures import ETag
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import File

from forecasting.common.contracts import ModelVersionInfo
from server.auth import principal_of
from server.errors import InvalidInputError, PayloadTooLargeError, RangeNotSatisfiableError
from server.registry import schemas
from server.registry.services import RegistryService

READER = {"access": "reader"}
ADMIN = {"access": "admin"}
AGENT = {"access": "agent"}

Limit = Annotated[
    int | None, QueryParameter(name="limit", ge=1, required=False, description="page size (capped)")
]
Cursor = Annotated[
    str | None, QueryParameter(name="cursor", required=False, description="next_cursor of the last page")
]


class ModelController(Controller):
    path = "/v1/models"
    tags = ["registry"]  # noqa: RUF012 - Litestar reads class attributes

    @get("/", opt=READER, sync_to_thread=True)
    def list_models(
        self, registry: NamedDependency[RegistryService], limit: Limit = None, cursor: Cursor = None
    ) -> schemas.ModelPage:
        return registry.list_models(limit, cursor)

    @get("/{name:str}", opt=READER, sync_to_thread=True)
    def get_model(self, registry: NamedDependency[RegistryService], name: FromPath[str]) -> schemas.ModelInfo:
        return registry.get_model(name)

    @patch("/{name:str}", opt=ADMIN, sync_to_thread=True)
    def update_model(
        self,
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        data: JSONBody[schemas.ModelUpdate],
    ) -> schemas.ModelInfo:
        return registry.update_model(name, data)

    @get("/{name:str}/versions", opt=READER, sync_to_thread=True)
    def list_versions(
        self,
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> schemas.VersionPage:
        return registry.list_versions(name, limit, cursor)

    @get("/{name:str}/versions/{version:int}", opt=READER, sync_to_thread=True)
    def get_version(
        self, registry: NamedDependency[RegistryService], name: FromPath[str], version: FromPath[int]
    ) -> schemas.VersionDetail:
        return registry.version_detail(name, version)

    @get("/{name:str}/versions/{version:int}/lineage", opt=READER, sync_to_thread=True)
    def version_lineage(
        self, registry: NamedDependency[RegistryService], name: FromPath[str], version: FromPath[int]
    ) -> schemas.VersionLineage:
        return registry.version_lineage(name, version)

    @get("/{name:str}/aliases", opt=READER, sync_to_thread=True)
    def list_aliases(
        self, registry: NamedDependency[RegistryService], name: FromPath[str]
    ) -> list[schemas.AliasInfo]:
        return registry.list_aliases(name)

    @get("/{name:str}/aliases/{alias:str}", opt=READER, sync_to_thread=True)
    def get_alias(
        self, registry: NamedDependency[RegistryService], name: FromPath[str], alias: FromPath[str]
    ) -> schemas.AliasInfo:
        return registry.get_alias(name, alias)

    @put("/{name:str}/aliases/{alias:str}", opt=ADMIN, sync_to_thread=True)
    def set_alias(
        self,
        request: Request[Any, Any, Any],
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[schemas.AliasSet],
    ) -> schemas.AliasInfo:
        return registry.set_alias(name, alias, data, principal_of(request))

    @post("/{name:str}/aliases/{alias:str}/rollback", opt=ADMIN, sync_to_thread=True, status_code=200)
    def rollback_alias(
        self,
        request: Request[Any, Any, Any],
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[schemas.AliasRollback | None] = None,
    ) -> schemas.AliasInfo:
        return registry.rollback_alias(name, alias, data or schemas.AliasRollback(), principal_of(request))

    @get("/{name:str}/aliases/{alias:str}/history", opt=READER, sync_to_thread=True)
    def alias_history(
        self,
        registry: NamedDependency[RegistryService],
        name: FromPath[str],
        alias: FromPath[str],
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> schemas.AliasEventPage:
        return registry.alias_history(name, alias, limit, cursor)

    @post(
        "/{name:str}/versions",
        opt=ADMIN,
        status_code=201,
        request_max_body_size=None,
        summary="Upload a bundle archive (application/x-tar) as a new version",
    )
    async def upload_version(
        self, request: Request[Any, Any, Any], registry: NamedDependency[RegistryService], name: FromPath[str]
    ) -> ModelVersionInfo:
        """The body (a bundle archive) is streamed to disk and hashed, then verified in a worker thread."""
        limit = registry.max_bundle_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"the bundle is {declared} bytes; this server accepts up to {limit}")
        temp, sha256, size = await receive_to_file(request, registry, limit)
        principal = principal_of(request)
        return await anyio.to_thread.run_sync(lambda: registry.publish(name, temp, sha256, size, principal))


async def receive_to_file(
    request: Request[Any, Any, Any], registry: NamedDependency[RegistryService], limit: int
) -> tuple[Path, str, int]:
    """Stream the request body into a temp file beside the blobs: (path, sha256, size)."""
    fh, temp = registry.blobs.new_temp()
    digest = hashlib.sha256()
    size = 0
    try:
        with fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(  # noqa: TRY301 - the temp file must go on every failure
                        f"the bundle exceeds this server's limit of {limit} bytes"
                    )
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if size == 0:
        temp.unlink(missing_ok=True)
        raise InvalidInputError("the request body is empty; send the bundle archive (application/x-tar)")
    return temp, digest.hexdigest(), size


class BundleController(Controller):
    path = "/v1/bundles"
    tags = ["agents"]  # noqa: RUF012

    @get("/{sha256:str}", opt=AGENT, summary="Download a bundle archive (ETag = sha256, Range supported)")
    async def download(
        self,
        request: Request[Any, Any, Any],
        registry: NamedDependency[RegistryService],
        sha256: FromPath[str],
    ) -> Response[bytes] | File:
        size = await anyio.to_thread.run_sync(registry.bundle_size, sha256)
        path = registry.blobs.path_for(sha256)
        etag = f'"{sha256}"'
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Cache-Control": "private, max-age=31536000, immutable",
        }
        if request.headers.get("if-none-match") in (etag, sha256):
            return Response(b"", status_code=304, headers=headers)
        range_header = request.headers.get("range")
        if range_header and request.headers.get("if-range", etag) in (etag, sha256):
            start, end = parse_range(range_header, size)
            data = await anyio.to_thread.run_sync(read_slice, path, start, end)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return Response(data, status_code=206, media_type="application/x-tar", headers=headers)
        return File(
            path=path,
            filename=f"{sha256}.tar",
            media_type="application/x-tar",
            content_disposition_type="attachment",
            etag=ETag(value=sha256),
            headers={"Accept-Ranges": "bytes", "Cache-Control": headers["Cache-Control"]},
        )


def parse_range(header: str, size: int) -> tuple[int, int]:
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range as inclusive offsets (416 when unsatisfiable)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        raise RangeNotSatisfiableError(f"only one byte range is supported, got {header!r}")
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            length = int(last)
            start, end = max(size - length, 0), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        raise RangeNotSatisfiableError(f"malformed range {header!r}") from None
    if start < 0 or start >= size or end < start:
        raise RangeNotSatisfiableError(f"range {header!r} is outside the {size}-byte bundle")
    return start, end


def read_slice(path: Path, start: int, end: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(start)
        return fh.read(end - start + 1)


class RunController(Controller):
    path = "/v1/runs"
    tags = ["experiments"]  # noqa: RUF012

    @post(
        "/",
        opt=ADMIN,
        sync_to_thread=True,
        status_code=201,
        summary="Register a training run record (run.json)",
    )
    def register(
        self,
        request: Request[Any, Any, Any],
        registry: NamedDependency[RegistryService],
        data: JSONBody[dict[str, Any]],
    ) -> schemas.Run:
        return registry.register_run(data, principal_of(request))

    @get("/", opt=READER, sync_to_thread=True)
    def list_runs(
        self,
        registry: NamedDependency[RegistryService],
        model_name: Annotated[str | None, QueryParameter(name="model_name", required=False)] = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> schemas.RunPage:
        return registry.list_runs(model_name, limit, cursor)

    @get("/compare", opt=READER, sync_to_thread=True)
    def compare(
        self,
        registry: NamedDependency[RegistryService],
        run_ids: Annotated[list[str], QueryParameter(name="run_id")],
    ) -> schemas.RunComparison:
        return registry.compare_runs(run_ids)

    @get("/{run_id:str}", opt=READER, sync_to_thread=True)
    def get_run(self, registry: NamedDependency[RegistryService], run_id: FromPath[str]) -> schemas.Run:
        return registry.get_run(run_id)


class DatasetController(Controller):
    path = "/v1/datasets"
    tags = ["datasets"]  # noqa: RUF012

    @post("/", opt=ADMIN, sync_to_thread=True, status_code=201)
    def register(
        self, registry: NamedDependency[RegistryService], data: JSONBody[schemas.DatasetIn]
    ) -> schemas.Dataset:
        return registry.register_dataset(data)

    @get("/", opt=READER, sync_to_thread=True)
    def list_datasets(
        self, registry: NamedDependency[RegistryService], limit: Limit = None, cursor: Cursor = None
    ) -> schemas.DatasetPage:
        return registry.list_datasets(limit, cursor)

    @get("/{dataset_id:str}", opt=READER, sync_to_thread=True)
    def get_dataset(
        self, registry: NamedDependency[RegistryService], dataset_id: FromPath[str]
    ) -> schemas.Dataset:
        return registry.get_dataset(dataset_id)

    @get("/{dataset_id:str}/lineage", opt=READER, sync_to_thread=True)
    def lineage(
        self, registry: NamedDependency[RegistryService], dataset_id: FromPath[str]
    ) -> schemas.DatasetLineage:
        return registry.dataset_lineage(dataset_id)


class KeyController(Controller):
    """Signing keys trusted for uploads (``shelfcast keys trust|list|revoke|history``)."""

    path = "/v1/keys"
    tags = ["registry"]  # noqa: RUF012 - Litestar reads class attributes

    @get("/", opt=READER, sync_to_thread=True)
    def list_keys(self, registry: NamedDependency[RegistryService]) -> list[schemas.TrustedKey]:
        return registry.keys.listed()

    @post("/", opt=ADMIN, sync_to_thread=True)
    def trust_key(
        self,
        request: Request[Any, Any, Any],
        registry: NamedDependency[RegistryService],
        data: JSONBody[schemas.KeyTrust],
    ) -> schemas.TrustedKey:
        return registry.keys.trust(data, principal_of(request))

    @get("/history", opt=READER, sync_to_thread=True)
    def key_history(
        self, registry: NamedDependency[RegistryService], limit: Limit = None
    ) -> list[schemas.KeyEvent]:
        return registry.keys.history(min(limit or 100, 1000))

    @delete("/{key_id:str}", opt=ADMIN, sync_to_thread=True, status_code=200)
    def revoke_key(
        self,
        request: Request[Any, Any, Any],
        registry: NamedDependency[RegistryService],
        key_id: FromPath[str],
    ) -> schemas.TrustedKey:
        return registry.keys.revoke(key_id, principal_of(request))
