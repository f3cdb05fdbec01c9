"""HTTP routes of the fleet: stores, enrollment, credentials, assignments, heartbeats."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response.base import ASGIResponse

from forecasting.common.contracts import Heartbeat
from server.auth import principal_of
from server.fleet import schemas
from server.fleet.services import FleetService
from server.registry.controllers import Cursor, Limit

READER = {"access": "reader"}
ADMIN = {"access": "admin"}
AGENT = {"access": "agent"}
STORE = {"access": "store"}
PUBLIC = {"access": "public"}


class StoreController(Controller):
    path = "/v1/stores"
    tags = ["fleet"]  # noqa: RUF012 - Litestar reads class attributes

    @post(
        "/",
        opt=ADMIN,
        sync_to_thread=True,
        status_code=201,
        summary="Create a store; returns a one-time enrollment token",
    )
    def create(
        self, fleet: NamedDependency[FleetService], data: JSONBody[schemas.StoreCreate]
    ) -> schemas.StoreCreated:
        return fleet.create_store(data)

    @get("/", opt=READER, sync_to_thread=True)
    def list_stores(
        self,
        fleet: NamedDependency[FleetService],
        region: Annotated[str | None, QueryParameter(name="region", required=False)] = None,
        group: Annotated[str | None, QueryParameter(name="group", required=False)] = None,
        model_name: Annotated[str | None, QueryParameter(name="model_name", required=False)] = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> schemas.StorePage:
        return fleet.list_stores(
            limit=limit, cursor=cursor, region=region, group=group, model_name=model_name
        )

    @get("/{store_id:str}", opt=READER, sync_to_thread=True)
    def get_store(self, fleet: NamedDependency[FleetService], store_id: FromPath[str]) -> schemas.Store:
        return fleet.get_store(store_id)

    @patch("/{store_id:str}", opt=ADMIN, sync_to_thread=True)
    def update(
        self,
        fleet: NamedDependency[FleetService],
        store_id: FromPath[str],
        data: JSONBody[schemas.StoreUpdate],
    ) -> schemas.Store:
        return fleet.update_store(store_id, data)

    @post("/{store_id:str}/enrollment-tokens", opt=ADMIN, sync_to_thread=True, status_code=201)
    def new_enrollment_token(
        self, fleet: NamedDependency[FleetService], store_id: FromPath[str]
    ) -> schemas.StoreCreated:
        return fleet.new_enrollment_token(store_id)

    @post("/{store_id:str}/revoke", opt=ADMIN, sync_to_thread=True, status_code=200)
    def revoke(
        self, request: Request[Any, Any, Any], fleet: NamedDependency[FleetService], store_id: FromPath[str]
    ) -> schemas.Store:
        return fleet.revoke_store(store_id, principal_of(request))

    @post("/{store_id:str}/credentials/rotate", opt=STORE, sync_to_thread=True, status_code=200)
    def rotate(
        self, request: Request[Any, Any, Any], fleet: NamedDependency[FleetService], store_id: FromPath[str]
    ) -> schemas.EnrollResponse:
        return fleet.rotate_store_credential(store_id, principal_of(request))

    @get(
        "/{store_id:str}/assignment",
        opt=STORE,
        summary="Which version this store must run (strong ETag; If-None-Match gives 304)",
        description=(
            "Body: forecasting.common.contracts.Assignment. 404 while the store's model has no champion."
        ),
    )
    async def assignment(self, request: Request[Any, Any, Any]) -> ASGIResponse:
        """The hot path of every agent's poll: answered from memory, no database, no body on 304.

        The store's agent polling counts as contact: noted in memory, written with the next write batch.
        """
        store_id: str = request.path_params["store_id"]
        fleet: FleetService = request.app.state.server.fleet
        if principal_of(request).role == "agent":
            fleet.note_contact(store_id)
        cached = fleet.cached_assignment(store_id)
        if cached is False or cached is None:
            cached = await anyio.to_thread.run_sync(fleet.assignment, store_id)
        assert not isinstance(cached, bool)
        etag = cached.etag.encode()
        if header(request.scope, b"if-none-match") == etag:
            return ASGIResponse(status_code=304, encoded_headers=[(b"etag", etag)])
        return ASGIResponse(
            body=cached.body, media_type="application/json", encoded_headers=[(b"etag", etag)]
        )


def header(scope: Any, name: bytes) -> bytes | None:
    """One raw request header (names are lower-case in ASGI), without building a Headers object."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


class GroupController(Controller):
    path = "/v1/groups"
    tags = ["fleet"]  # noqa: RUF012

    @get("/", opt=READER, sync_to_thread=True)
    def list_groups(self, fleet: NamedDependency[FleetService]) -> list[schemas.Group]:
        return fleet.list_groups()


class EnrollController(Controller):
    path = "/v1/enroll"
    tags = ["agents"]  # noqa: RUF012

    @post(
        "/", opt=PUBLIC, sync_to_thread=True, status_code=200, summary="Exchange a one-time enrollment token"
    )
    def enroll(
        self, fleet: NamedDependency[FleetService], data: JSONBody[schemas.EnrollRequest]
    ) -> schemas.EnrollResponse:
        return fleet.enroll(data)


class HeartbeatController(Controller):
    path = "/v1/heartbeats"
    tags = ["agents"]  # noqa: RUF012

    @post(
        "/",
        opt=AGENT,
        status_code=202,
        summary="Record a heartbeat (answered after its commit; 429 with Retry-After when busy)",
    )
    async def heartbeat(
        self,
        request: Request[Any, Any, Any],
        fleet: NamedDependency[FleetService],
        data: JSONBody[Heartbeat],
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", required=False)
        ] = None,
    ) -> schemas.Accepted:
        return await fleet.record_heartbeat(data, principal_of(request), idempotency_key)


class CredentialController(Controller):
    path = "/v1/credentials"
    tags = ["fleet"]  # noqa: RUF012

    @post(
        "/", opt=ADMIN, sync_to_thread=True, status_code=201, summary="Create an admin or reader credential"
    )
    def create(
        self,
        request: Request[Any, Any, Any],
        fleet: NamedDependency[FleetService],
        data: JSONBody[schemas.CredentialCreate],
    ) -> schemas.CredentialCreated:
        return fleet.create_credential(data, principal_of(request))

    @get("/", opt=ADMIN, sync_to_thread=True)
    def list_credentials(self, fleet: NamedDependency[FleetService]) -> list[schemas.Credential]:
        return fleet.list_credentials()

    @delete("/{credential_id:str}", opt=ADMIN, sync_to_thread=True)
    def revoke(
        self,
        request: Request[Any, Any, Any],
        fleet: NamedDependency[FleetService],
        credential_id: FromPath[str],
    ) -> None:
        fleet.revoke_credential(credential_id, principal_of(request))
