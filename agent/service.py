"""The agent process: the inventory API under uvicorn (main thread) beside the runtime's work loop.

Ready for systemd (``READY=1``) once the API listens; the watchdog is fed while the work loop is healthy;
SIGTERM stops the API, then the work loop, then the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

from agent.api import create_app
from agent.config import is_loopback
from agent.errors import AgentError
from agent.runtime import AgentRuntime
from forecasting.common.logs import get_logger
from forecasting.common.systemd_notify import notify, watchdog_interval_seconds

log = get_logger("agent.service")


def serve(runtime: AgentRuntime) -> None:
    """Run the API and the work loop until SIGTERM/SIGINT; systemd READY=1 once listening."""
    runtime.config.check_transport()
    _limit_malloc_arenas()
    loop_factory = None
    if _has("uvloop"):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(runtime))


async def _serve(runtime: AgentRuntime) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Like uvicorn's, minus re-raising the signal afterwards: the agent still has to stop its
            # work loop, close its store and tell systemd it is stopping.
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    app = create_app(runtime)
    server = Server(
        uvicorn.Config(
            app,
            host=runtime.config.api.host,
            port=runtime.config.api.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="httptools" if _has("httptools") else "h11",
            server_header=False,
            timeout_graceful_shutdown=5,
            ssl_certfile=runtime.config.api.tls_cert_file or None,
            ssl_keyfile=runtime.config.api.tls_key_file or None,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if task.done():
        runtime.stop.set()
        await task
        raise AgentError(
            f"inventory API could not listen on {runtime.config.api.host}:{runtime.config.api.port}"
        )
    api = runtime.config.api
    notify(f"READY=1\nSTATUS=serving on {api.host}:{api.port}\nMAINPID={os.getpid()}")
    # The work loop (store, lifecycle, last forecasts) starts once the API listens: READY comes sooner,
    # and for the moment the last run takes to open the API answers 503 "no forecasts yet".
    runtime.start_worker()
    log.info(
        "agent_started",
        store_id=runtime.config.agent.store_id,
        url=f"{runtime.config.api.scheme}://{runtime.config.api.host}:{runtime.config.api.port}",
        state_dir=str(runtime.paths.root),
        server_url=runtime.config.agent.server_url,
    )
    if runtime.config.api.scheme == "http" and not is_loopback(runtime.config.api.host):
        log.warning(
            "api_plain_http",
            host=runtime.config.api.host,
            consequence="the inventory API (forecasts, sales, its token) is plain HTTP on the store "
            "network; set [api] tls_cert_file and tls_key_file",
        )
    if runtime.config.agent.insecure:
        log.warning(
            "insecure_transport",
            server_url=runtime.config.agent.server_url,
            plain_http_off_loopback=runtime.config.agent.plain_http_off_loopback,
            consequence="credentials and sales reports may cross the network unencrypted; "
            "use https:// and set insecure = false",
        )
    if not runtime.config.agent.trusted_keys:
        log.warning(
            "no_trusted_keys", consequence="no model bundle can be verified; set [agent] trusted_keys"
        )
    interval = watchdog_interval_seconds()
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=interval or 5.0)
            if interval and runtime.healthy():
                notify("WATCHDOG=1")
            if runtime.worker is not None and not runtime.worker.is_alive() and not runtime.stop.is_set():
                log.error("work_loop_died", action="stopping so systemd restarts the agent")
                server.should_exit = True
    finally:
        notify("STOPPING=1")
        runtime.stop.set()
        runtime.wake.set()
        if runtime.worker is not None:
            runtime.worker.join(timeout=30)
        if runtime._client is not None:
            runtime._client.close()
        log.info("agent_stopped", store_id=runtime.config.agent.store_id)


def _limit_malloc_arenas() -> None:
    """Two glibc malloc arenas instead of eight per core: the API's threads need no more, RSS stays low."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).mallopt(-8, 2)  # M_ARENA_MAX


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
