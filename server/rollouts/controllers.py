"""HTTP routes of rollouts: start and act on them (admin), list and inspect them (reader)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from server.auth import principal_of
from server.registry.controllers import Cursor, Limit
from server.rollouts import schemas
from server.rollouts.services import RolloutService

READER = {"access": "reader"}
ADMIN = {"access": "admin"}


class RolloutController(Controller):
    path = "/v1/rollouts"
    tags = ["rollouts"]  # noqa: RUF012 - Litestar reads class attributes

    @post(
        "/", opt=ADMIN, sync_to_thread=True, status_code=201, summary="Start a rollout of a candidate version"
    )
    def start(
        self,
        request: Request[Any, Any, Any],
        rollouts: NamedDependency[RolloutService],
        data: JSONBody[schemas.RolloutCreate],
    ) -> schemas.RolloutDetail:
        return rollouts.start(data, principal_of(request))

    @get("/", opt=READER, sync_to_thread=True, summary="Rollouts, newest first")
    def list_rollouts(
        self,
        rollouts: NamedDependency[RolloutService],
        model_name: Annotated[str | None, QueryParameter(name="model_name", required=False)] = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> schemas.RolloutPage:
        return rollouts.list_rollouts(model_name, limit, cursor)

    @get("/{rollout_id:str}", opt=READER, sync_to_thread=True, summary="Waves, stores, gates, decisions")
    def get_rollout(
        self, rollouts: NamedDependency[RolloutService], rollout_id: FromPath[str]
    ) -> schemas.RolloutDetail:
        return rollouts.get(rollout_id)

    @post(
        "/{rollout_id:str}/{action:str}",
        opt=ADMIN,
        sync_to_thread=True,
        status_code=200,
        summary="pause | resume | approve | promote | abort",
    )
    def act(
        self,
        request: Request[Any, Any, Any],
        rollouts: NamedDependency[RolloutService],
        rollout_id: FromPath[str],
        action: FromPath[str],
        data: JSONBody[schemas.RolloutAction | None] = None,
    ) -> schemas.RolloutDetail:
        return rollouts.act(rollout_id, action, data or schemas.RolloutAction(), principal_of(request))
