"""``shelfcast demo``: a central server and three store agents on loopback, end to end.

Generates three stores of synthetic sales, starts a real server and three real agent processes on free
loopback ports, trains and signs a model, publishes it as the champion, waits until every agent serves
it, then pulls forecasts over HTTP as a store's inventory system would. Everything it starts it stops,
on success, failure or Ctrl-C.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from forecasting.tables import render_table

if TYPE_CHECKING:  # httpx and the process helpers load only when the demo runs
    import httpx

    from shelfcast.procs import ServiceProcess

MODEL_NAME = "demand"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class DemoSummary:
    """What the demo prints at the end (as a table or as one JSON object)."""

    server_url: str
    model_name: str
    version: int
    stores: list[dict[str, Any]] = field(default_factory=list)
    timings_seconds: dict[str, float] = field(default_factory=dict)
    sample_forecast: list[dict[str, Any]] = field(default_factory=list)
    state_dir: str = ""


class Demo:
    """The demo's steps; ``run`` is the whole loop, ``services`` what must be stopped."""

    def __init__(self, state_dir: Path, *, stores: int, items: int, days: int, seed: int) -> None:
        self.state_dir = state_dir
        self.n_stores = stores
        self.items = items
        self.days = days
        self.seed = seed
        self.services: list[ServiceProcess] = []
        self.admin_token = secrets.token_urlsafe(24)
        self.timings: dict[str, float] = {}

    def _timed(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 3)

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def prepare_data(self) -> tuple[Path, list[str]]:
        from forecasting.frames import write_frame
        from forecasting.synthetic import generate

        started = time.monotonic()
        frame = generate(stores=self.n_stores, items=self.items, days=self.days, freq="D", seed=self.seed)
        data_dir = self.state_dir / "data"
        training = data_dir / "fleet-history.parquet"
        write_frame(frame, training)
        store_ids = sorted(frame.get_column("store_id").unique().to_list())
        for store_id in store_ids:
            inbox = self.state_dir / "agents" / store_id / "inbox"
            inbox.mkdir(parents=True, exist_ok=True)
            write_frame(frame.filter(frame["store_id"] == store_id), inbox / "history.parquet")
        self._timed("generate_data", started)
        return training, store_ids

    def make_key(self) -> tuple[Path, Path]:
        from forecasting.signing import generate_key_files

        private, public, _ = generate_key_files(self.state_dir / "keys" / "signing.key")
        return private, public

    def start_server(self, public_key: Path) -> str:
        from shelfcast.procs import ServiceProcess

        started = time.monotonic()
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = ServiceProcess(
            "server",
            [
                "server",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--state-dir",
                str(self.state_dir / "server"),
            ],
            log_path=self.state_dir / "logs" / "server.log",
            env={
                "SHELFCAST_SERVER__ADMIN_TOKEN": self.admin_token,
                "SHELFCAST_SERVER__TRUSTED_KEYS": msgspec.json.encode([str(public_key)]).decode(),
                "SHELFCAST_LOGGING__FORMAT": "json",
            },
        )
        self.services.append(server.start())
        server.wait_http(f"{url}/readyz")
        self._timed("start_server", started)
        return url

    def start_agents(self, server_url: str, store_ids: list[str], public_key: Path) -> dict[str, str]:
        import httpx

        from shelfcast.procs import ServiceProcess

        started = time.monotonic()
        urls: dict[str, str] = {}
        agents: list[ServiceProcess] = []
        with httpx.Client(base_url=server_url, headers=self._admin(), timeout=30) as client:
            for i, store_id in enumerate(store_ids):
                response = client.post(
                    "/v1/stores",
                    json={
                        "store_id": store_id,
                        "name": f"Demo store {i + 1}",
                        "region": "demo",
                        "type": "A",
                        "model_name": MODEL_NAME,
                    },
                )
                _check(response, f"create store {store_id}")
                token = response.json()["enrollment_token"]
                port = _free_port()
                agent = ServiceProcess(
                    f"agent {store_id}",
                    [
                        "agent",
                        "run",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--state-dir",
                        str(self.state_dir / "agents" / store_id),
                    ],
                    log_path=self.state_dir / "logs" / f"agent-{store_id}.log",
                    env={
                        "SHELFCAST_AGENT__STORE_ID": store_id,
                        "SHELFCAST_AGENT__SERVER_URL": server_url,
                        "SHELFCAST_AGENT__ENROLLMENT_TOKEN": token,
                        "SHELFCAST_AGENT__TRUSTED_KEYS": msgspec.json.encode([str(public_key)]).decode(),
                        "SHELFCAST_AGENT__POLL_INTERVAL_SECONDS": "1",
                        "SHELFCAST_LOGGING__FORMAT": "json",
                    },
                )
                self.services.append(agent.start())
                agents.append(agent)
                urls[store_id] = f"http://127.0.0.1:{port}"
        for agent, url in zip(agents, urls.values(), strict=True):
            agent.wait_http(f"{url}/livez")
        self._timed("start_agents", started)
        return urls

    def train(self, training: Path, signing_key: Path, version: int) -> Path:
        started = time.monotonic()
        out = self.state_dir / "models" / f"{MODEL_NAME}-v{version}"
        log_path = self.state_dir / "logs" / "train.log"
        with log_path.open("ab") as log:
            result = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
                [
                    sys.executable,
                    "-m",
                    "shelfcast",
                    "--log-format",
                    "json",
                    "train",
                    "--data",
                    str(training),
                    "--out",
                    str(out),
                    "--model-name",
                    MODEL_NAME,
                    "--version",
                    str(version),
                    "--signing-key",
                    str(signing_key),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise click.ClickException(f"training failed (exit {result.returncode}); see {log_path}")
        self._timed("train", started)
        return out

    def publish(self, server_url: str, bundle_dir: Path, version: int) -> None:
        import httpx

        from forecasting.bundle import pack_archive

        started = time.monotonic()
        archive = bundle_dir.with_suffix(".tar")
        pack_archive(bundle_dir, archive)
        with httpx.Client(base_url=server_url, headers=self._admin(), timeout=120) as client:
            response = client.post(
                f"/v1/models/{MODEL_NAME}/versions",
                content=archive.read_bytes(),
                headers={"Content-Type": "application/x-tar"},
            )
            _check(response, "upload the bundle")
            response = client.put(
                f"/v1/models/{MODEL_NAME}/aliases/champion",
                json={"version": version, "reason": "demo: first champion"},
            )
            _check(response, "set the champion alias")
        self._timed("publish", started)

    def wait_served(
        self, agent_urls: dict[str, str], version: int, timeout_seconds: float
    ) -> list[dict[str, Any]]:
        import httpx

        started = time.monotonic()
        deadline = started + timeout_seconds
        pending = dict(agent_urls)
        statuses: dict[str, dict[str, Any]] = {}
        while pending and time.monotonic() < deadline:
            for store_id, url in list(pending.items()):
                try:
                    status = httpx.get(f"{url}/v1/status", timeout=5).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if status.get("served_version") == version:
                    statuses[store_id] = status
                    del pending[store_id]
            for service in self.services:
                if not service.running():
                    raise click.ClickException(f"{service.name} stopped unexpectedly; see {service.log_path}")
            time.sleep(0.25)
        if pending:
            raise click.ClickException(
                f"agents {', '.join(sorted(pending))} did not serve version {version} within "
                f"{timeout_seconds:.0f} s; see {self.state_dir / 'logs'}"
            )
        self._timed("rollout_to_all_agents", started)
        return [{"store_id": s, "url": agent_urls[s], **statuses[s]} for s in sorted(statuses)]

    def pull_forecasts(self, agent_url: str) -> tuple[int, list[dict[str, Any]]]:
        """What an inventory system does: page through every forecast, then look at one item."""
        import httpx

        started = time.monotonic()
        rows = 0
        body: dict[str, Any] = {"rows": []}
        cursor: str | None = None
        with httpx.Client(base_url=agent_url, timeout=30) as client:
            for _ in range(10_000):  # bounded: a store has far fewer pages
                params: dict[str, Any] = {"limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                response = client.get("/v1/forecasts", params=params)
                _check(response, "pull forecasts")
                body = response.json()
                rows += len(body["rows"])
                cursor = body.get("next_cursor")
                if not cursor:
                    break
            first_item = body["rows"][0]["item_id"] if body["rows"] else None
            sample: list[dict[str, Any]] = []
            if first_item is not None:
                response = client.get(f"/v1/forecasts/{first_item}", params={"horizon": 7})
                _check(response, f"pull forecasts of item {first_item}")
                sample = response.json()["rows"]
        self.timings["pull_forecasts"] = round(
            self.timings.get("pull_forecasts", 0.0) + time.monotonic() - started, 3
        )
        return rows, sample

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def run(self, timeout_seconds: float) -> DemoSummary:
        training, store_ids = self.prepare_data()
        signing_key, public_key = self.make_key()
        server_url = self.start_server(public_key)
        agent_urls = self.start_agents(server_url, store_ids, public_key)
        version = 1
        bundle = self.train(training, signing_key, version)
        self.publish(server_url, bundle, version)
        stores = self.wait_served(agent_urls, version, timeout_seconds)
        sample: list[dict[str, Any]] = []
        for store in stores:
            store["forecast_rows_pulled"], item_rows = self.pull_forecasts(store["url"])
            sample = sample or item_rows
        return DemoSummary(
            server_url=server_url,
            model_name=MODEL_NAME,
            version=version,
            stores=stores,
            timings_seconds=self.timings,
            sample_forecast=sample,
            state_dir=str(self.state_dir),
        )


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 400:
        detail = response.text[:300]
        raise click.ClickException(f"could not {what}: HTTP {response.status_code} {detail}")


def _print_summary(summary: DemoSummary, kept: bool) -> None:
    click.echo("")
    click.echo(
        f"shelfcast demo: model {summary.model_name} v{summary.version} served by "
        f"{len(summary.stores)} stores"
    )
    click.echo(f"server  {summary.server_url}  (OpenAPI: {summary.server_url}/schema)")
    click.echo(
        render_table(
            [
                {
                    "store": s["store_id"],
                    "version": s.get("active_version"),
                    "state": s.get("state"),
                    "forecast_rows": s.get("forecast_rows_pulled"),
                    "agent_url": s["url"],
                }
                for s in summary.stores
            ]
        )
    )
    click.echo("")
    click.echo(render_table([{"step": k, "seconds": v} for k, v in summary.timings_seconds.items()]))
    if summary.sample_forecast:
        click.echo("")
        click.echo("first forecasts of one item, as an inventory system sees them:")
        columns = [
            "item_id",
            "category",
            "ds",
            "forecast",
            "forecast-lo-80",
            "forecast-hi-80",
            "forecast-lo-95",
            "forecast-hi-95",
            "model",
        ]
        click.echo(render_table(summary.sample_forecast[:7], columns))
    click.echo("")
    click.echo(f"state and logs: {summary.state_dir}")
    if kept:
        click.echo(f"try: curl '{summary.stores[0]['url']}/v1/forecasts?limit=5'")


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".shelfcast/demo"),
    show_default=True,
    help="Folder for the demo's data, models, server and agent state (emptied first).",
)
@click.option("--stores", default=3, show_default=True, help="Number of stores (one agent process each).")
@click.option("--items", default=60, show_default=True, help="Items per store.")
@click.option("--days", default=420, show_default=True, help="Days of sales history.")
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic data.")
@click.option(
    "--timeout",
    "timeout_seconds",
    default=300.0,
    show_default=True,
    help="Seconds to wait for the agents to serve the new version.",
)
@click.option("--keep-running", is_flag=True, help="Leave the server and agents up until Ctrl-C.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def demo(
    state_dir: Path,
    stores: int,
    items: int,
    days: int,
    seed: int,
    timeout_seconds: float,
    keep_running: bool,
    output: str,
) -> None:
    """Start a server and store agents on loopback, train, publish and pull forecasts over HTTP."""
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    runner = Demo(state_dir.resolve(), stores=stores, items=items, days=days, seed=seed)
    try:
        summary = runner.run(timeout_seconds)
        if output == "json":
            click.echo(msgspec.json.encode(summary).decode())
        else:
            _print_summary(summary, keep_running)
        if keep_running:
            click.echo("running; press Ctrl-C to stop everything")
            while all(s.running() for s in runner.services):
                time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("interrupted; stopping the server and agents", err=True)
        raise SystemExit(130) from None
    finally:
        runner.stop_all()
