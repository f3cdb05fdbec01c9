"""The fleet a simulation runs: the server (its own, or one it joins), the signing keys, and one real
agent per store (in this process, or a ``shelfcast agent run`` process)."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from forecasting.common.logs import get_logger
from shelfcast.simulate.options import SimulationError, SimulationOptions

if TYPE_CHECKING:
    import httpx

    from agent.runtime import AgentRuntime
    from shelfcast.procs import ServiceProcess
    from shelfcast.simulate.report import Timings
    from shelfcast.simulate.sources import FleetData

log = get_logger("shelfcast.simulate.fleet")


class Agent:
    """One store's agent: in this process (an AgentRuntime and its work loop) or a child process."""

    def __init__(self, store_id: str, root: Path, config: dict[str, Any], process: bool) -> None:
        self.store_id = store_id
        self.root = root
        self.config = config
        self.process: ServiceProcess | None = None
        self.runtime: AgentRuntime | None = None
        self.url = ""
        self.as_process = process
        self.served: list[int] = []
        # an agent process's inventory API takes this operator token (it may post inventory and score):
        # the configured one, else a fresh one
        configured = str(config.get("api", {}).get("operator_token", ""))
        self.operator_token = configured or (secrets.token_urlsafe(24) if process else "")

    @property
    def config_file(self) -> Path:
        """The config file of the agent process."""
        return self.root.parent / f"{self.store_id}.toml"

    @property
    def headers(self) -> dict[str, str]:
        """What a caller of the agent process's API sends: its operator token (none without one)."""
        return {"Authorization": f"Bearer {self.operator_token}"} if self.operator_token else {}

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def start(self, logs: Path) -> None:
        if self.as_process:
            self._start_process(logs)
            return
        from agent.config import AgentConfig
        from agent.runtime import AgentRuntime

        self.runtime = AgentRuntime(msgspec.convert(self.config, AgentConfig))
        self.runtime.start_worker()

    def _start_process(self, logs: Path) -> None:
        from shelfcast.procs import ServiceProcess

        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        config_file = self.config_file
        api = self.config.get("api", {}) | {
            "host": "127.0.0.1",
            "port": port,
            "operator_token": self.operator_token,
        }
        config_file.write_text(toml_document(self.config | {"api": api}))
        self.process = ServiceProcess(
            f"agent {self.store_id}",
            ["agent", "run", "--config", str(config_file)],
            log_path=logs / f"agent-{self.store_id}.log",
            env={"SHELFCAST_LOGGING__FORMAT": "json"},
        ).start()

    def wait_started(self, timeout_seconds: float) -> None:
        if self.process is not None:
            self.process.wait_http(f"{self.url}/livez", timeout_seconds=timeout_seconds)
        elif self.runtime is not None and not self.runtime.ready_event.wait(timeout_seconds):
            raise SimulationError(f"agent {self.store_id} did not open its state in {timeout_seconds:.0f} s")

    def status(self) -> dict[str, Any]:
        if self.runtime is not None:
            status = self.runtime.status()
        else:
            import httpx

            status = httpx.get(f"{self.url}/v1/status", headers=self.headers, timeout=10).json()
        served = status.get("served_version")
        if served is not None and (not self.served or self.served[-1] != served):
            self.served.append(int(served))
        return status

    def served_version(self) -> int | None:
        """The version whose forecasts the agent serves now (cheap in process: no store query)."""
        if self.runtime is None:
            served = self.status().get("served_version")
            return None if served is None else int(served)
        view = self.runtime.view
        version = None if view is None else view.pointer.version
        if version is not None and (not self.served or self.served[-1] != version):
            self.served.append(version)
        return version

    def outbox_empty(self) -> bool:
        if self.runtime is None or self.runtime.store is None:
            return bool(self.status().get("outbox_size") == 0)
        return self.runtime.store.outbox_size() == 0

    def wake(self) -> None:
        if self.runtime is not None:
            self.runtime.wake.set()

    def score(self, timeout_seconds: float) -> None:
        if self.runtime is not None:
            self.runtime.submit(self.runtime.score_now, timeout=timeout_seconds)
            return
        import httpx

        response = httpx.post(f"{self.url}/v1/score", headers=self.headers, timeout=timeout_seconds)
        if response.status_code >= 400:
            raise SimulationError(f"agent {self.store_id} could not score: {response.text[:200]}")

    def credential(self) -> str:
        from agent.paths import StatePaths
        from agent.record import read_credential

        return read_credential(StatePaths(self.root))

    def reported_versions(self) -> list[int]:
        """Versions of this store's own "served" accuracy reports (the agent keeps them as JSON files)."""
        versions: set[int] = set()
        for path in (self.root / "monitoring" / "accuracy").glob("*.json"):
            with contextlib.suppress(OSError, msgspec.DecodeError):
                body = msgspec.json.decode(path.read_bytes())
                if body.get("role") == "served":
                    versions.add(int(body["version"]))
        return sorted(versions)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.runtime is not None:
            self.runtime.stop.set()
            self.runtime.wake.set()
            if self.runtime.worker is not None:
                self.runtime.worker.join(timeout=30)


class Fleet:
    """The server and the agents of a simulation; :meth:`close` stops what it started."""

    def __init__(self, options: SimulationOptions, timings: Timings) -> None:
        self.options = options
        self.timings = timings
        self.state_dir = options.state_dir.resolve()
        self.logs = self.state_dir / "logs"
        self.server: ServiceProcess | None = None
        self.server_port = 0
        self.server_url = options.server_url.rstrip("/")
        self.admin_token = options.admin_token or secrets.token_urlsafe(24)
        self.agents: dict[str, Agent] = {}
        self.keys: dict[str, tuple[Path, Path]] = {}

    def admin(self, timeout: float = 60.0) -> httpx.Client:
        """An HTTP client of the server with the admin token."""
        import httpx

        return httpx.Client(
            base_url=self.server_url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=timeout
        )

    def make_keys(self) -> None:
        """The key pair that signs bundles (given, or new), and a second one if a candidate needs it."""
        from forecasting.bundle.signing import generate_key_files

        folder = self.state_dir / "keys"
        if self.options.signing_key is not None:
            private = self.options.signing_key
            self.keys["main"] = (private, private.with_name(private.name + ".pub"))
        else:
            private, public, _ = generate_key_files(folder / "signing.key")
            self.keys["main"] = (private, public)
        if any(c.untrusted_by for c in self.options.candidates):
            private, public, _ = generate_key_files(folder / "second.key")
            self.keys["second"] = (private, public)

    def start_server(self) -> None:
        """Start the own server on a free port, or check what joining a server needs."""
        if self.options.server_url:
            if not self.options.admin_token:
                raise SimulationError("server_url needs admin_token (and a signing_key the server trusts)")
            return
        self.server_port = self.options.server_port or _free_port()
        self.server_url = f"http://{self.options.server_host}:{self.server_port}"
        self._launch_server()

    def _launch_server(self) -> None:
        from shelfcast.procs import ServiceProcess

        started = time.monotonic()
        interval = self.options.engine_interval_seconds
        env = {
            "SHELFCAST_SERVER__ADMIN_TOKEN": self.admin_token,
            "SHELFCAST_SERVER__TRUSTED_KEYS": msgspec.json.encode(
                [str(k[1]) for k in self.keys.values()]
            ).decode(),
            "SHELFCAST_LOGGING__FORMAT": "json",
            "SHELFCAST_ROLLOUTS__ENGINE_INTERVAL_SECONDS": str(interval),
            "SHELFCAST_ROLLOUTS__LEASE_SECONDS": str(max(2.0, 4 * interval)),
        }
        args = ["server", "run", "--host", self.options.server_host, "--port", str(self.server_port)]
        self.server = ServiceProcess(
            "server",
            [*args, "--state-dir", str(self.state_dir / "server")],
            log_path=self.logs / "server.log",
            env=env,
        ).start()
        self.server.wait_http(f"{self.server_url}/readyz", timeout_seconds=60)
        self.timings.add("start_server", started)

    def kill_server(self, period: int) -> None:
        """SIGKILL the own server (after replay period ``period``) and start it again on the same port
        and state."""
        if self.server is None:
            raise SimulationError("kill_server_after_periods needs a server the simulation started")
        self.server.kill()
        log.info("simulated_server_kill", period=period)
        self._launch_server()

    def create_agents(self, data: FleetData) -> None:
        """Create and enroll one store per data store, give each agent its history, start them all."""
        started = time.monotonic()
        distrusting = {s for c in self.options.candidates for s in c.untrusted_by}
        history = data.history
        if self.options.agent_history_periods:
            import polars as pl

            dates = sorted(history["ds"].unique().to_list())[-self.options.agent_history_periods :]
            history = history.filter(pl.col("ds") >= dates[0])
        from forecasting.data.frames import write_frame

        with self.admin() as client:
            for i, store_id in enumerate(data.store_ids):
                attrs = data.attributes[store_id]
                response = client.post(
                    "/v1/stores",
                    json={"store_id": store_id, "name": f"Store {store_id}", **attrs,
                          "model_name": self.options.model_name},
                )  # fmt: skip
                check_response(response, f"create store {store_id}")
                root = self.state_dir / "agents" / store_id
                keys = [str(self.keys["main"][1])]
                if "second" in self.keys and store_id not in distrusting:
                    keys.append(str(self.keys["second"][1]))
                config = self._agent_config(store_id, root, response.json()["enrollment_token"], keys)
                agent = Agent(store_id, root, config, process=i < self.options.agent_processes)
                agent.inbox.mkdir(parents=True, exist_ok=True)
                write_frame(history.filter(history["store_id"] == store_id), agent.inbox / "history.parquet")
                self.agents[store_id] = agent
        for agent in self.agents.values():
            agent.start(self.logs)
        for agent in self.agents.values():
            agent.wait_started(120)
        self.timings.add("start_agents", started)

    def _agent_config(self, store_id: str, root: Path, enrollment: str, keys: list[str]) -> dict[str, Any]:
        o = self.options
        # Inline scoring: no scoring child per agent (45 agents share one process, one GIL). The replay
        # scores every store once a period's sales are in, so no re-scoring after sales on top.
        scoring = {
            "horizon": o.horizon,
            "threads": 1,
            "keep_runs": o.keep_runs,
            "isolation": "inline",
            "rescore_after_sales_seconds": 0.0,
        }
        tokens = {"token": o.agent_read_token, "operator_token": o.agent_operator_token}
        return {
            "api": {name: token for name, token in tokens.items() if token},
            "agent": {
                "store_id": store_id,
                "server_url": self.server_url,
                "enrollment_token": enrollment,
                "trusted_keys": keys,
                "state_dir": str(root),
                "poll_interval_seconds": o.poll_interval_seconds,
                "heartbeat_interval_seconds": o.heartbeat_interval_seconds,
                "max_backoff_seconds": 2.0,
                "request_timeout_seconds": 10.0,
            },
            "scoring": scoring,
            "logging": {"level": "warning", "format": "json"},
        }

    def each_agent(self, work: Callable[[Agent], Any], agents: list[Agent] | None = None) -> list[Any]:
        """``work`` on every agent (or on ``agents``), up to 16 at a time; the results in their order."""
        chosen = list(self.agents.values()) if agents is None else agents
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(chosen)))) as pool:
            return list(pool.map(work, chosen))

    def assignment(self, agent: Agent) -> int | None:
        """The version the store should serve now (asked with the store's own credential)."""
        import httpx

        token = agent.credential()
        if not token:
            return None
        try:
            response = httpx.get(
                f"{self.server_url}/v1/stores/{agent.store_id}/assignment",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
        except httpx.HTTPError:
            return None
        return int(response.json()["version"]) if response.status_code == 200 else None

    def converge(self, timeout_seconds: float) -> list[str]:
        """Wait until every agent serves its assigned version; the stores that did not (after the timeout)."""
        import httpx

        started = time.monotonic()
        deadline = started + timeout_seconds
        pending = list(self.agents.values())
        while pending:

            def behind(agent: Agent) -> bool:
                agent.wake()
                try:
                    served = agent.served_version()
                except (OSError, ValueError, httpx.HTTPError):  # an agent process still starting
                    return True
                return served is None or served != self.assignment(agent)

            pending = [a for a, late in zip(pending, self.each_agent(behind, pending), strict=True) if late]
            self._check_processes()
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.timings.add("converge", started)
        return sorted(a.store_id for a in pending)

    def _check_processes(self) -> None:
        if self.server is not None and not self.server.running():
            raise SimulationError(f"the server stopped unexpectedly; see {self.server.log_path}")
        for agent in self.agents.values():
            if agent.process is not None and not agent.process.running():
                raise SimulationError(
                    f"{agent.process.name} stopped unexpectedly; see {agent.process.log_path}"
                )

    def close(self) -> None:
        """Stop every agent, then the server (unless ``keep_server``)."""
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        if self.server is not None and not self.options.keep_server:
            self.server.stop()


def check_response(response: httpx.Response, what: str) -> None:
    """Raise :class:`SimulationError` naming ``what`` failed if the server answered with an error."""
    if response.status_code >= 400:
        raise SimulationError(f"could not {what}: HTTP {response.status_code} {response.text[:300]}")


def toml_document(sections: dict[str, dict[str, Any]]) -> str:
    """A TOML document of flat sections (strings, numbers, booleans, lists of those)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return msgspec.json.encode(str(value)).decode()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
