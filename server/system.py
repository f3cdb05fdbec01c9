"""Health, readiness, Prometheus metrics, and the admin backup download."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from litestar import Controller, MediaType, Request, Response, get
from litestar.response import Stream

from server.backup import stream_tar, write_snapshot

PUBLIC = {"access": "public"}
ADMIN = {"access": "admin"}


def _state(request: Request[Any, Any, Any]) -> Any:
    return request.app.state.server


class SystemController(Controller):
    path = "/"
    tags = ["system"]  # noqa: RUF012 - Litestar reads class attributes

    @get("/livez", opt=PUBLIC, media_type=MediaType.TEXT, summary="The process is alive")
    async def livez(self) -> str:
        return "ok"

    @get("/readyz", opt=PUBLIC, sync_to_thread=True, summary="The database answers and blobs are writable")
    def readyz(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        state = _state(request)
        checks: dict[str, str] = {}
        checks["database"] = _database_check(state)
        tmp = state.root / "tmp"
        checks["blobs"] = "ok" if tmp.is_dir() and _writable(tmp) else "failed: not writable"
        ready = all(v == "ok" for v in checks.values())
        return Response({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @get("/metrics", opt=PUBLIC, sync_to_thread=True, summary="Prometheus text format")
    def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        body = _state(request).metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4")  # + charset by Litestar


def _database_check(state: Any) -> str:
    if state.db is None:
        return "failed: database not open"
    try:
        state.db.scalar("SELECT 1")
    except Exception as exc:
        return f"failed: {exc}"
    return "ok"


def _writable(path: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix="ready-"):
            return True
    except OSError:
        return False


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]  # noqa: RUF012

    @get(
        "/backup", opt=ADMIN, summary="A consistent backup (database snapshot + bundle blobs) as a tar stream"
    )
    async def backup(self, request: Request[Any, Any, Any]) -> Stream:
        state = _state(request)
        scratch = Path(tempfile.mkdtemp(dir=state.root / "tmp", prefix="backup-"))
        try:
            await anyio.to_thread.run_sync(write_snapshot, state.db, state.root / "blobs", scratch / "backup")
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream_tar(scratch / "backup"):
                    yield chunk
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

        return Stream(body(), media_type="application/x-tar", headers={"Cache-Control": "no-store"})
