"""The rollout engine: an asyncio task of the server that, while it holds the lease, lets the service decide.

The lease is a row in the server's database (``engine_leases``): only its holder decides, it is renewed
every pass and released at a graceful shutdown; after a crash the next server takes it once it expires.
All rollout state lives in the database, so a restarted server carries on where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from datetime import timedelta

from forecasting.common.logs import get_logger
from server.db import utcnow
from server.rollouts.repository import RolloutRepository
from server.rollouts.services import RolloutService

log = get_logger("server.rollouts.engine")

LEASE_NAME = "rollouts"


class RolloutEngine:
    def __init__(
        self,
        service: RolloutService,
        repo: RolloutRepository,
        *,
        interval_seconds: float,
        lease_seconds: float,
    ) -> None:
        self.service = service
        self.repo = repo
        self.interval_seconds = interval_seconds
        self.lease_seconds = lease_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None
        self.holding = False

    def run_once(self) -> int:
        """Take or renew the lease and, if held, decide once; returns the decisions taken."""
        now = utcnow()
        self.holding = self.repo.take_lease(
            LEASE_NAME, self.holder, now, now + timedelta(seconds=self.lease_seconds)
        )
        if not self.holding:
            return 0
        return self.service.tick(now)

    async def _loop(self) -> None:
        import anyio

        while True:
            try:
                await anyio.to_thread.run_sync(self.run_once)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failing pass is logged; the next one retries
                log.exception("rollout_engine_failed", error_type=type(exc).__name__)
            await asyncio.sleep(self.interval_seconds)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="rollout-engine")
            log.info("rollout_engine_started", holder=self.holder, interval_seconds=self.interval_seconds)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self.holding:
            self.repo.release_lease(LEASE_NAME, self.holder)
            self.holding = False
