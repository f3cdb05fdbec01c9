"""``shelfcast simulate``: replay a sales history period by period for a whole fleet of real agents.

The simulator splits a sales history (Walmart's 45 stores, or seeded synthetic stores) into the history
the champion is trained on and the periods it replays. It starts (or joins) a real server, trains and
publishes the champion, creates and enrolls one store per data store, and runs one real agent per store
(:class:`agent.runtime.AgentRuntime` in this process, each with its own state folder and credential, or
``shelfcast agent run`` processes). Then, for each candidate, it publishes the candidate bundle (the
champion re-signed with forecast adjustments, see ``shelfcast bundle adjust``), starts a rollout with the
plan and replays periods until the rollout ends. A period is what a week (or day) of a store's life
does to the rollout: the agents converge on their assignment, the period's sales arrive in each agent's
inbox (the agent measures the accuracy of its past forecasts and queues the reports), each agent scores
as its daily schedule would, delivers its reports, and the server's engine decides.

:func:`run_simulation` is the Python entry (the CLI, the demo and tests call it); it returns a
:class:`SimulationReport`.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
import msgspec

from forecasting.common.errors import ForecastingError
from forecasting.common.logs import get_logger

if TYPE_CHECKING:
    import httpx
    import polars as pl

    from agent.runtime import AgentRuntime
    from shelfcast.procs import ServiceProcess

log = get_logger("shelfcast.simulate")

ACTIVE = ("running", "paused", "awaiting_approval", "promoting")
Source = Literal["walmart", "synthetic"]


class SimulationError(ForecastingError):
    """The simulation could not run (a step failed; the message says which and where to look)."""


@dataclass
class Candidate:
    """A version to roll out: a bundle (the champion's by default) re-signed with forecast adjustments.

    ``multiply`` scales every forecast (1.0: a new version that forecasts like the champion; 1.3: a
    deliberately bad one). ``bundle``: any trained bundle instead of the champion's (trained on the
    history before the replay, like the champion, for a fair comparison). ``models``: the simulation
    trains the candidate itself, on the champion's history and settings with these models. ``plan``
    (a plan as a dict) or ``plan_file`` (TOML) overrides the simulation's
    plan. ``untrusted_by`` lists stores whose agents do not trust the key that signs this candidate (the
    candidate is signed with a second key the server trusts), so they cannot activate it.
    ``kill_server_after_periods``: SIGKILL the (own) server after this many periods of the rollout and
    start it again on the same state.
    """

    multiply: float = 1.0
    label: str = ""
    bundle: Path | None = None
    models: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    plan_file: Path | None = None
    untrusted_by: list[str] = field(default_factory=list)
    kill_server_after_periods: int | None = None


@dataclass
class SimulationOptions:
    """Everything a simulation needs; defaults give a small synthetic weekly fleet."""

    state_dir: Path
    source: Source = "synthetic"
    data_path: Path | None = None  # walmart: the folder with train.csv.gz and stores.csv
    stores: int | None = None  # walmart: the first N stores (default all 45); synthetic: default 12
    departments: int | list[str] = 6  # walmart: how many complete departments (or which)
    items: int = 12  # synthetic: items per store
    freq: Literal["D", "W"] = "W"  # synthetic: daily or weekly periods
    history_periods: int = 120  # synthetic: periods of history before the replay
    category_groups: dict[str, str] | None = None  # synthetic: report by these groups of categories
    periods: int = 12  # periods replayed at most (walmart: the last N weeks of the file)
    agent_history_periods: int | None = None  # history each agent starts with (default: all of it)
    seed: int = 7  # synthetic data, the waves each rollout draws, the replay noise
    replay_noise: float = 0.0  # replayed sales times lognormal noise of this coefficient of variation
    model_name: str = "demand"
    horizon: int = 4
    train_models: list[str] = field(default_factory=lambda: ["Naive", "SeasonalNaive"])
    candidates: list[Candidate] = field(default_factory=list)
    plan_file: Path | None = None
    plan: dict[str, Any] | None = None
    server_url: str = ""  # join this server instead of starting one (needs admin_token and signing_key)
    admin_token: str = ""
    signing_key: Path | None = None  # private key the server trusts (default: a new key pair)
    engine_interval_seconds: float = 0.5  # own server: how often the rollout engine decides
    engine_wait_seconds: float | None = None  # after each period (default: 3 engine intervals)
    agent_processes: int = 0  # the first N agents run as `shelfcast agent run` processes
    poll_interval_seconds: float = 2.0
    heartbeat_interval_seconds: float = 3.0  # also how often an agent delivers its queued reports
    converge_timeout_seconds: float = 30.0
    period_timeout_seconds: float = 120.0
    keep_runs: int = 1  # scoring runs an agent keeps (each reports its accuracy as actuals arrive)
    keep_server: bool = False  # leave the own server running (the caller stops `Simulation.server`)
    server_host: str = "127.0.0.1"  # own server: where it listens
    server_port: int = 0  # own server: its port (0: a free one)
    on_progress: Callable[[str], None] | None = None  # told of each step as it starts (the demo prints)
    # After a promoted rollout, move `champion` back to the first champion: every candidate is then judged
    # against the same model (the gates benchmark), at the cost of one more activation per store.
    reset_champion: bool = False


@dataclass
class RolloutResult:
    """How one candidate's rollout went."""

    rollout_id: str
    version: int
    multiply: float
    label: str
    outcome: str  # promoted | rolled_back | aborted | running
    status: str
    waves_completed: int
    waves: list[dict[str, Any]]
    periods: int
    decisions: list[dict[str, Any]]
    wape_ratios: dict[str, float | None]
    halt_reason: str = ""
    halt_numbers: dict[str, Any] = field(default_factory=dict)  # the gate values that drove the halt
    server_kills: int = 0


@dataclass
class SimulationReport:
    """What a simulation did (``shelfcast simulate -o json`` prints it)."""

    server_url: str
    dashboard_url: str
    model_name: str
    source: str
    stores: list[dict[str, Any]]
    periods_replayed: int
    champion_start: int
    champion_end: int | None
    rollouts: list[RolloutResult]
    served: dict[str, list[int]]  # store -> every version it served (status polls), in order of first use
    reported: dict[str, list[int]]  # store -> versions of its "served" accuracy reports (its own record)
    timings_seconds: dict[str, float]
    state_dir: str


# -- data --------------------------------------------------------------------------------------------


@dataclass
class FleetData:
    """The canonical sales of every store, the store attributes, and where the replay begins."""

    frame: pl.DataFrame  # store_id, item_id, category, ds, y
    attributes: dict[str, dict[str, str]]  # store -> type, region, size
    periods: list[date]  # replayed dates, in order
    freq: str
    season_length: int

    @property
    def history(self) -> pl.DataFrame:
        import polars as pl

        return self.frame.filter(pl.col("ds") < self.periods[0])

    def period(self, index: int) -> pl.DataFrame:
        import polars as pl

        return self.frame.filter(pl.col("ds") == self.periods[index])

    @property
    def store_ids(self) -> list[str]:
        return sorted(self.attributes)


def load_walmart(
    folder: Path, *, stores: int | None, departments: int | list[str], periods: int
) -> FleetData:
    """Walmart weekly sales: store ``W01..W45``, department = item = category, stores.csv Type and Size.

    ``departments``: a count picks the lowest-numbered departments with a complete history in every
    chosen store (no gaps, no missing weeks), or a list names them. Type becomes the store type, Size a
    size band (small/medium/large terciles); every store is in region ``us``.
    """
    import polars as pl

    from forecasting.data.loading import read_table

    raw = read_table(folder / "train.csv.gz")
    frame = raw.select(
        pl.format("W{}", pl.col("Store").cast(pl.Int64).cast(pl.Utf8).str.zfill(2)).alias("store_id"),
        pl.col("Dept").cast(pl.Int64).cast(pl.Utf8).alias("item_id"),
        pl.col("Dept").cast(pl.Int64).cast(pl.Utf8).alias("category"),
        pl.col("Date").cast(pl.Utf8).str.to_date("%Y-%m-%d").alias("ds"),
        pl.col("Weekly_Sales").cast(pl.Float64).alias("y"),
    )
    chosen = sorted(frame["store_id"].unique().to_list())[: stores or None]
    frame = frame.filter(pl.col("store_id").is_in(chosen))
    weeks = frame["ds"].n_unique()
    if isinstance(departments, int):
        complete = (
            frame.group_by("item_id")
            .agg(pl.len().alias("rows"), pl.col("store_id").n_unique().alias("stores"))
            .filter((pl.col("rows") == weeks * len(chosen)) & (pl.col("stores") == len(chosen)))
            .sort(pl.col("item_id").cast(pl.Int64))
        )
        depts = complete["item_id"].to_list()[:departments]
    else:
        depts = [str(d) for d in departments]
    if not depts:
        raise SimulationError("no Walmart department has a complete history in the chosen stores")
    frame = frame.filter(pl.col("item_id").is_in(depts)).sort("store_id", "item_id", "ds")
    info = read_table(folder / "stores.csv").select(
        pl.format("W{}", pl.col("Store").cast(pl.Utf8).str.strip_chars().str.zfill(2)).alias("store_id"),
        pl.col("Type").cast(pl.Utf8).str.strip_chars().alias("type"),
        pl.col("Size").cast(pl.Utf8).str.strip_chars().cast(pl.Int64).alias("size"),
    )
    info = info.filter(pl.col("store_id").is_in(chosen))
    low, high = info["size"].quantile(1 / 3), info["size"].quantile(2 / 3)
    attributes = {
        r["store_id"]: {
            "type": r["type"],
            "region": "us",
            "size": "small" if r["size"] <= low else ("medium" if r["size"] <= high else "large"),
        }
        for r in info.iter_rows(named=True)
    }
    dates = sorted(frame["ds"].unique().to_list())
    return FleetData(frame, attributes, dates[-periods:], "W", 52)


def synthetic_fleet(
    *,
    stores: int,
    items: int,
    freq: Literal["D", "W"],
    history_periods: int,
    periods: int,
    seed: int,
    category_groups: dict[str, str] | None = None,
) -> FleetData:
    """Seeded synthetic stores (``forecasting.data.synthetic``) ending before today; type by size, two
    regions."""
    import polars as pl

    from forecasting.data.synthetic import generate

    step = 7 if freq == "W" else 1
    n = history_periods + periods
    today = datetime.now().astimezone().date()
    start = today - timedelta(days=step * (n + 2))
    frame = generate(stores=stores, items=items, days=n * step, freq=freq, seed=seed, start=start)
    frame = frame.select("store_id", "item_id", "category", "ds", "y").sort("store_id", "item_id", "ds")
    if category_groups:  # e.g. departments made of several categories: more series per reported group
        frame = frame.with_columns(pl.col("category").replace(category_groups))
    # Store type by size (like a retailer's formats): the larger half of the stores by mean sales are
    # supercenters, the others markets; regions alternate. Controls of the same type are then alike.
    volume = frame.group_by("store_id").agg(pl.col("y").mean().alias("v")).sort("v", descending=True)
    ranked = volume["store_id"].to_list()
    attributes = {
        sid: {
            "type": "supercenter" if rank < (len(ranked) + 1) // 2 else "market",
            "region": ("north", "south")[int(sid.lstrip("S")) % 2],
            "size": "large" if rank < (len(ranked) + 1) // 2 else "small",
        }
        for rank, sid in enumerate(ranked)
    }
    dates = sorted(frame["ds"].unique().to_list())
    return FleetData(frame, attributes, dates[-periods:], freq, 52 if freq == "W" else 7)


def default_plan() -> dict[str, Any]:
    """Three waves (20 %, 50 %, all), one or two periods of bake, the paired gate's defaults (5 % false
    rollbacks, 5 % degradation worth stopping for, ceiling 2.0) on evidence sized for a small replay."""
    return {
        "name": "simulated canary",
        "stratify_by": ["type", "region"],
        "waves": [
            {"name": "canary", "share": 0.2, "bake_periods": 2},
            {"name": "half", "share": 0.5, "bake_periods": 1},
            {"name": "everyone", "share": 1.0, "bake_periods": 1},
        ],
        "health": {"activation_timeout_seconds": 120.0, "stale_after_seconds": 600.0},
        "accuracy": {"min_observations": 10, "min_stores": 2, "min_periods": 1},
    }


# -- agents ------------------------------------------------------------------------------------------


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
        config_file = self.root.parent / f"{self.store_id}.toml"
        config_file.write_text(_toml(self.config | {"api": {"host": "127.0.0.1", "port": port}}))
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

            status = httpx.get(f"{self.url}/v1/status", timeout=10).json()
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

        response = httpx.post(f"{self.url}/v1/score", timeout=timeout_seconds)
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


# -- the simulation ----------------------------------------------------------------------------------


class Simulation:
    """The steps of a simulation; :meth:`run` is the whole replay, :meth:`close` stops what it started."""

    def __init__(self, options: SimulationOptions) -> None:
        self.options = options
        self.state_dir = options.state_dir.resolve()
        self.logs = self.state_dir / "logs"
        self.server: ServiceProcess | None = None
        self.server_port = 0
        self.server_url = options.server_url.rstrip("/")
        self.admin_token = options.admin_token or secrets.token_urlsafe(24)
        self.agents: dict[str, Agent] = {}
        self.timings: dict[str, float] = {}
        self.agent_seconds: dict[str, float] = {}  # summed over agents: waiting for ingest, score, delivery
        self.keys: dict[str, tuple[Path, Path]] = {}
        self.period_index = 0
        self.champion = 1
        self.next_version = 1
        self.champion_bundle: Path | None = None
        self.first_champion: int | None = None
        self.data: FleetData | None = None

    # - setup -

    def _timed(self, name: str, started: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - started, 3)

    def admin(self, timeout: float = 60.0) -> httpx.Client:
        import httpx

        return httpx.Client(
            base_url=self.server_url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=timeout
        )

    def load_data(self) -> FleetData:
        started = time.monotonic()
        o = self.options
        if o.source == "walmart":
            if o.data_path is None:
                raise SimulationError("the walmart source needs data_path (the folder with train.csv.gz)")
            data = load_walmart(o.data_path, stores=o.stores, departments=o.departments, periods=o.periods)
            data = with_replay_noise(data, o.replay_noise, o.seed)
        else:
            data = synthetic_fleet(
                stores=o.stores or 12, items=o.items, freq=o.freq, history_periods=o.history_periods,
                periods=o.periods, seed=o.seed, category_groups=o.category_groups,
            )  # fmt: skip
            data = with_replay_noise(data, o.replay_noise, o.seed)
        self.data = data
        self._timed("load_data", started)
        return data

    def make_keys(self) -> None:
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
        self._timed("start_server", started)

    def kill_server(self) -> None:
        """SIGKILL the own server and start it again on the same port and state."""
        if self.server is None:
            raise SimulationError("kill_server_after_periods needs a server the simulation started")
        self.server.kill()
        log.info("simulated_server_kill", period=self.period_index)
        self._launch_server()

    def train(self) -> Path:
        """Train and sign the first champion on the history before the replay."""
        started = time.monotonic()
        self.next_version = self._first_free_version()
        version = self.next_version
        out = self._train(list(self.options.train_models), version)
        self.next_version = version + 1
        self.champion_bundle = out
        self._timed("train", started)
        return out

    def _train(self, models: list[str], version: int) -> Path:
        """``shelfcast train`` of ``models`` on the history before the replay, signed as ``version``."""
        assert self.data is not None
        from forecasting.data.frames import write_frame

        data_dir = self.state_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        history = data_dir / "history.parquet"
        if not history.exists():
            write_frame(self.data.history, history)
        config = data_dir / f"train-v{version}.toml"
        config.write_text(
            _toml(
                {
                    "data": {"freq": self.data.freq, "negative_values": "keep", "fill_gaps": "zero"},
                    "train": {
                        "model_name": self.options.model_name,
                        "horizon": self.options.horizon,
                        "season_length": self.data.season_length,
                        "models": models,
                        "fallback": "Naive",
                        "windows": 1,
                        "metric": "mae",
                        "select_by": "category",
                    },
                }
            )
        )
        out = self.state_dir / "models" / f"{self.options.model_name}-v{version}"
        log_path = self.logs / "train.log"
        with log_path.open("ab") as fh:
            result = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
                [
                    sys.executable, "-m", "shelfcast", "--log-format", "json", "train",
                    "--config", str(config), "--data", str(history), "--out", str(out),
                    "--model-name", self.options.model_name, "--version", str(version),
                    "--signing-key", str(self.keys["main"][0]),
                ],
                stdout=fh, stderr=subprocess.STDOUT, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise SimulationError(f"training failed (exit {result.returncode}); see {log_path}")
        return out

    def _first_free_version(self) -> int:
        with self.admin() as client:
            response = client.get(f"/v1/models/{self.options.model_name}/versions")
        if response.status_code != 200:
            return 1
        items = response.json().get("items", [])
        return max([int(i["version"]) for i in items], default=0) + 1

    def publish(self, bundle_dir: Path, *, champion: bool, reason: str) -> int:
        from forecasting.bundle.format import pack_archive, read_manifest

        started = time.monotonic()
        version = read_manifest(bundle_dir).version
        archive = bundle_dir.with_suffix(".tar")
        pack_archive(bundle_dir, archive)
        record = bundle_dir.parent / f"{bundle_dir.name}.run" / "run.json"
        with self.admin(timeout=300) as client:
            if record.is_file():  # the training run, so the version's lineage names it
                registered = client.post(
                    "/v1/runs", content=record.read_bytes(), headers={"Content-Type": "application/json"}
                )
                if registered.status_code != 409:
                    _check(registered, f"register the run of {bundle_dir.name}")
            response = client.post(
                f"/v1/models/{self.options.model_name}/versions",
                content=archive.read_bytes(),
                headers={"Content-Type": "application/x-tar"},
            )
            _check(response, f"upload {bundle_dir.name}")
            if champion:
                response = client.put(
                    f"/v1/models/{self.options.model_name}/aliases/champion",
                    json={"version": version, "reason": reason},
                )
                _check(response, "set the champion alias")
        self._timed("publish", started)
        return version

    def create_agents(self) -> None:
        assert self.data is not None
        started = time.monotonic()
        distrusting = {s for c in self.options.candidates for s in c.untrusted_by}
        history = self.data.history
        if self.options.agent_history_periods:
            import polars as pl

            dates = sorted(history["ds"].unique().to_list())[-self.options.agent_history_periods :]
            history = history.filter(pl.col("ds") >= dates[0])
        from forecasting.data.frames import write_frame

        with self.admin() as client:
            for i, store_id in enumerate(self.data.store_ids):
                attrs = self.data.attributes[store_id]
                response = client.post(
                    "/v1/stores",
                    json={"store_id": store_id, "name": f"Store {store_id}", **attrs,
                          "model_name": self.options.model_name},
                )  # fmt: skip
                _check(response, f"create store {store_id}")
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
        self._timed("start_agents", started)

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
        return {
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

    # - the replay -

    def each_agent(self, work: Callable[[Agent], Any], agents: list[Agent] | None = None) -> list[Any]:
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
        self._timed("converge", started)
        return sorted(a.store_id for a in pending)

    def _check_processes(self) -> None:
        if self.server is not None and not self.server.running():
            raise SimulationError(f"the server stopped unexpectedly; see {self.server.log_path}")
        for agent in self.agents.values():
            if agent.process is not None and not agent.process.running():
                raise SimulationError(
                    f"{agent.process.name} stopped unexpectedly; see {agent.process.log_path}"
                )

    def play_period(self) -> None:
        """Drop the period's sales into every inbox, score once they are in, deliver the reports."""
        assert self.data is not None
        from forecasting.data.frames import write_frame

        index = self.period_index
        day = self.data.periods[index]
        self.progress(f"period {index + 1}: sales up to {day} arrive at every store")
        sales = self.data.period(index)
        timeout = self.options.period_timeout_seconds

        def one(agent: Agent) -> None:
            name = f"sales-{day.isoformat()}.parquet"
            write_frame(sales.filter(sales["store_id"] == agent.store_id), agent.inbox / name)
            agent.wake()
            t0 = time.monotonic()
            _wait(lambda: not (agent.inbox / name).exists(), timeout, f"{agent.store_id} to ingest {name}")
            t1 = time.monotonic()
            agent.score(timeout)
            t2 = time.monotonic()
            _wait(agent.outbox_empty, timeout, f"{agent.store_id} to deliver reports", interval=0.5)
            t3 = time.monotonic()
            for key, seconds in (("ingest", t1 - t0), ("score", t2 - t1), ("deliver", t3 - t2)):
                self.agent_seconds[key] = self.agent_seconds.get(key, 0.0) + seconds

        started = time.monotonic()
        self.each_agent(one)
        self.period_index += 1
        self._timed("periods", started)

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        with self.admin() as client:
            response = client.get(f"/v1/rollouts/{rollout_id}")
        _check(response, f"read rollout {rollout_id}")
        body: dict[str, Any] = response.json()
        return body

    def candidate_bundle(self, candidate: Candidate) -> tuple[Path, int]:
        """The candidate's signed bundle and version: trained, or a given bundle / the champion re-signed."""
        assert self.champion_bundle is not None
        from forecasting.bundle.format import read_manifest
        from forecasting.commands.bundle import adjust_bundle

        if candidate.models and candidate.bundle is None and not candidate.untrusted_by:
            version = self.next_version
            self.next_version += 1
            started = time.monotonic()
            trained = self._train(candidate.models, version)
            self._timed("train_candidates", started)
            if candidate.multiply == 1.0:
                return trained, version
            source = trained
        else:
            source = candidate.bundle or self.champion_bundle
        version = max(self.next_version, read_manifest(source).version + 1)
        self.next_version = version + 1
        key = self.keys["second" if candidate.untrusted_by else "main"][0]
        bundle = adjust_bundle(
            source,
            self.state_dir / "models" / f"{self.options.model_name}-v{version}",
            version=version,
            signing_key=key,
            multiply=candidate.multiply,
            reason=_describe(candidate),
        )
        return bundle, version

    def start_rollout(self, candidate: Candidate) -> tuple[str, int]:
        bundle, version = self.candidate_bundle(candidate)
        self.publish(bundle, champion=False, reason="")
        plan = self._plan(candidate)
        with self.admin() as client:
            response = client.post(
                "/v1/rollouts",
                json={"model_name": self.options.model_name, "version": version, "plan": plan,
                      "reason": _describe(candidate)},
            )  # fmt: skip
        _check(response, f"start the rollout of v{version}")
        rollout_id: str = response.json()["rollout"]["rollout_id"]
        log.info(
            "simulated_rollout_started", rollout_id=rollout_id, version=version, multiply=candidate.multiply
        )
        return rollout_id, version

    def _plan(self, candidate: Candidate) -> dict[str, Any]:
        """The candidate's plan; its waves are drawn from the simulation's seed unless the plan seeds them."""
        if candidate.plan is not None:
            plan = dict(candidate.plan)
        elif candidate.plan_file is not None:
            plan = _read_plan(candidate.plan_file)
        elif self.options.plan is not None:
            plan = dict(self.options.plan)
        elif self.options.plan_file is not None:
            plan = _read_plan(self.options.plan_file)
        else:
            plan = default_plan()
        index = self.options.candidates.index(candidate) if candidate in self.options.candidates else 0
        plan.setdefault("seed", f"{self.options.seed}-{index}")
        return plan

    def roll(self, candidate: Candidate) -> RolloutResult:
        assert self.data is not None
        started = time.monotonic()
        rollout_id, version = self.start_rollout(candidate)
        periods = 0
        wait = self.options.engine_wait_seconds
        if wait is None:
            wait = 3 * self.options.engine_interval_seconds
        body = self.rollout_status(rollout_id)
        while body["rollout"]["status"] in ACTIVE and self.period_index < len(self.data.periods):
            self.converge(self.options.converge_timeout_seconds)
            self.play_period()
            periods += 1
            if candidate.kill_server_after_periods == periods:
                self.kill_server()
            time.sleep(wait)
            body = self.rollout_status(rollout_id)
        deadline = time.monotonic() + 10 * max(wait, 0.5)
        while body["rollout"]["status"] == "promoting" and time.monotonic() < deadline:
            time.sleep(0.2)
            body = self.rollout_status(rollout_id)
        self._timed(f"rollout_v{version}", started)
        result = _result(body, version, candidate, periods)
        result.server_kills = int(
            candidate.kill_server_after_periods is not None and periods >= candidate.kill_server_after_periods
        )
        if result.outcome == "promoted":
            self.champion = version
            if self.options.reset_champion and self.first_champion is not None:
                self._move_champion(self.first_champion, f"simulation: back to v{self.first_champion}")
        return result

    def _move_champion(self, version: int, reason: str) -> None:
        with self.admin() as client:
            response = client.put(
                f"/v1/models/{self.options.model_name}/aliases/champion",
                json={"version": version, "reason": reason},
            )
        _check(response, f"move the champion back to v{version}")
        self.champion = version
        self.converge(self.options.converge_timeout_seconds)

    def champion_now(self) -> int | None:
        with self.admin() as client:
            response = client.get(f"/v1/models/{self.options.model_name}/aliases/champion")
        return int(response.json()["version"]) if response.status_code == 200 else None

    def progress(self, message: str) -> None:
        if self.options.on_progress is not None:
            self.options.on_progress(message)

    def run(self) -> SimulationReport:
        started = time.monotonic()
        self.progress(f"preparing {self.options.source} sales of {self.options.stores or 'every'} store(s)")
        data = self.load_data()
        self.make_keys()
        self.start_server()
        self.progress(f"server listening on {self.server_url}; training the first model")
        bundle = self.train()
        self.champion = self.publish(bundle, champion=True, reason="simulation: first champion")
        champion_start = self.first_champion = self.champion
        self.progress(f"published v{self.champion} as champion; starting {len(data.store_ids)} agent(s)")
        self.create_agents()
        stuck = self.converge(max(self.options.converge_timeout_seconds, 120))
        if stuck:
            raise SimulationError(
                f"agents {', '.join(stuck)} never served the champion; see {self.state_dir}"
            )
        rollouts: list[RolloutResult] = []
        for candidate in self.options.candidates:
            if self.period_index >= len(data.periods):
                log.warning(
                    "simulation_out_of_periods", candidates_left=len(self.options.candidates) - len(rollouts)
                )
                break
            self.progress(f"rolling out a candidate ({candidate.label or candidate.multiply})")
            rollouts.append(self.roll(candidate))
            done = rollouts[-1]
            self.progress(
                f"rollout of v{done.version}: {done.outcome} after {done.waves_completed} wave(s), "
                f"{done.periods} period(s)"
            )
            if rollouts[-1].outcome == "running":
                break  # the replay ran out of periods with the rollout still going (it stays active)
        if not self.options.candidates:
            while self.period_index < len(data.periods):
                self.converge(self.options.converge_timeout_seconds)
                self.play_period()
        self.converge(self.options.converge_timeout_seconds)
        self._timed("total", started)
        report = SimulationReport(
            server_url=self.server_url,
            dashboard_url=f"{self.server_url}/dashboard/",
            model_name=self.options.model_name,
            source=self.options.source,
            stores=[{"store_id": s, **data.attributes[s]} for s in data.store_ids],
            periods_replayed=self.period_index,
            champion_start=champion_start,
            champion_end=self.champion_now(),
            rollouts=rollouts,
            served={sid: a.served for sid, a in sorted(self.agents.items())},
            reported={sid: a.reported_versions() for sid, a in sorted(self.agents.items())},
            timings_seconds=self.timings
            | {f"agents_{k}": round(v, 3) for k, v in self.agent_seconds.items()},
            state_dir=str(self.state_dir),
        )
        (self.state_dir / "report.json").write_bytes(msgspec.json.encode(report))
        return report

    def close(self) -> None:
        """Stop every agent, then the server (unless ``keep_server``)."""
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        if self.server is not None and not self.options.keep_server:
            self.server.stop()


def run_simulation(options: SimulationOptions) -> SimulationReport:
    """Run a whole simulation and stop everything it started (the server too, unless ``keep_server``)."""
    simulation = Simulation(options)
    try:
        return simulation.run()
    finally:
        simulation.close()


@contextlib.contextmanager
def simulation(options: SimulationOptions) -> Iterator[Simulation]:
    """A simulation whose agents and server stay up inside the block (tests look around, then it stops)."""
    sim = Simulation(options)
    try:
        yield sim
    finally:
        sim.close()


# -- helpers -----------------------------------------------------------------------------------------


def _result(body: dict[str, Any], version: int, candidate: Candidate, periods: int) -> RolloutResult:
    status = body["rollout"]["status"]
    outcome = {"promoted": "promoted", "rolled_back": "rolled_back", "aborted": "aborted"}.get(
        status, "running"
    )
    serve_waves = [w for w in body["waves"] if w["kind"] != "shadow"]
    done = len(serve_waves) if status == "promoted" else sum(1 for w in serve_waves if w["state"] == "done")
    decisions = [
        {"action": d["action"], "reason": d["reason"], "step": d["step"], "decided_at": d["decided_at"]}
        for d in body["decisions"]
    ]
    ratios: dict[str, float | None] = {}
    halt = ""
    halt_numbers: dict[str, Any] = {}
    for d in body["decisions"]:
        categories = (d.get("numbers") or {}).get("accuracy", {}).get("categories") or {}
        if categories:
            ratios = {c: v.get("wape_ratio") for c, v in sorted(categories.items())}
        if d["action"] == "halt":
            halt, halt_numbers = d["reason"], d.get("numbers") or {}
    return RolloutResult(
        rollout_id=body["rollout"]["rollout_id"],
        version=version,
        multiply=candidate.multiply,
        label=candidate.label,
        outcome=outcome,
        status=status,
        waves_completed=done,
        waves=[
            {"name": w["name"], "kind": w["kind"], "state": w["state"], "stores": w["stores"]}
            for w in body["waves"]
        ],
        periods=periods,
        decisions=decisions,
        wape_ratios=ratios,
        halt_reason=halt,
        halt_numbers=halt_numbers,
    )


def _describe(candidate: Candidate) -> str:
    if candidate.label:
        return candidate.label
    if candidate.models:
        return f"simulated candidate trained with {', '.join(candidate.models)}"
    if candidate.bundle is not None:
        return f"simulated candidate from bundle {candidate.bundle.name} x{candidate.multiply}"
    return f"simulated candidate x{candidate.multiply}"


def with_replay_noise(data: FleetData, noise: float, seed: int) -> FleetData:
    """The fleet's replayed periods times lognormal noise (mean 1, coefficient of variation ``noise``).

    Each seed gives the same history and another draw of the weeks the rollouts see, so seeded replays
    differ the way one season differs from another; 0 keeps the data as it is.
    """
    if noise <= 0:
        return data
    import numpy as np
    import polars as pl

    sigma = float(np.sqrt(np.log1p(noise**2)))
    replayed = data.frame.select((pl.col("ds") >= data.periods[0]).alias("r"))["r"].to_numpy()
    rng = np.random.default_rng(seed)
    factor = np.where(replayed, np.exp(rng.normal(-(sigma**2) / 2, sigma, data.frame.height)), 1.0)
    frame = data.frame.with_columns(pl.col("y") * pl.Series(factor))
    return FleetData(frame, data.attributes, data.periods, data.freq, data.season_length)


def _read_plan(path: Path) -> dict[str, Any]:
    try:
        plan = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SimulationError(f"{path}: {exc}") from None
    plan.pop("model_name", None)
    plan.pop("version", None)
    return plan


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 400:
        raise SimulationError(f"could not {what}: HTTP {response.status_code} {response.text[:300]}")


def _wait(check: Callable[[], bool], timeout_seconds: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            raise SimulationError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(interval)


def _toml(sections: dict[str, dict[str, Any]]) -> str:
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


# -- command line ------------------------------------------------------------------------------------


def log_to_file(path: Path, level: str = "info") -> None:
    """Send this process's structlog lines (the in-process agents' too) to ``path`` as JSON lines.

    For the commands that run many agents in one process: their logs would drown the summary on stdout.
    """
    import logging

    import structlog

    path.parent.mkdir(parents=True, exist_ok=True)
    stream = path.open("a", encoding="utf-8")  # stays open for the rest of the process
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _candidate(value: str) -> Candidate:
    """``1.3`` or ``1.3:LABEL``: a candidate whose forecasts are the champion's times the factor."""
    factor, _, label = value.partition(":")
    try:
        return Candidate(multiply=float(factor), label=label)
    except ValueError:
        raise click.BadParameter(f"expected FACTOR[:LABEL], e.g. 1.0 or 1.3:bad, got {value!r}") from None


def _candidate_bundle(value: str) -> Candidate:
    """``DIR`` or ``DIR:LABEL``: a trained bundle rolled out as it forecasts."""
    folder, _, label = value.partition(":")
    path = Path(folder)
    if not (path / "manifest.json").is_file():
        raise click.BadParameter(f"{folder!r} is not a bundle folder (no manifest.json)")
    return Candidate(bundle=path, label=label)


def _candidate_models(value: str) -> Candidate:
    """``MODEL[,MODEL...][:LABEL]``: a candidate the simulation trains on the champion's history."""
    models, _, label = value.partition(":")
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise click.BadParameter(f"expected MODEL[,MODEL...][:LABEL], e.g. Naive:worse, got {value!r}")
    return Candidate(models=names, label=label)


@click.command("simulate")
@click.option("--source", type=click.Choice(["synthetic", "walmart"]), default="synthetic", show_default=True)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="walmart: the folder holding train.csv.gz and stores.csv.",
)
@click.option("--stores", type=int, default=None, help="Stores (walmart: the first N of 45; synthetic: 12).")
@click.option("--departments", type=int, default=6, show_default=True, help="walmart: complete departments.")
@click.option("--items", type=int, default=12, show_default=True, help="synthetic: items per store.")
@click.option(
    "--freq", type=click.Choice(["D", "W"]), default="W", show_default=True, help="synthetic periods."
)
@click.option("--periods", type=int, default=12, show_default=True, help="Periods replayed at most.")
@click.option("--horizon", type=int, default=4, show_default=True, help="Periods each scoring forecasts.")
@click.option(
    "--agent-history",
    type=int,
    default=None,
    help="Periods of history each agent starts with (default: all).",
)
@click.option(
    "--seed",
    type=int,
    default=7,
    show_default=True,
    help="Seed of the synthetic data, of each rollout's wave draw and of the replay noise.",
)
@click.option(
    "--replay-noise",
    type=float,
    default=0.0,
    show_default=True,
    help="Replayed sales times seeded lognormal noise of this coefficient of variation (0: as they are).",
)
@click.option("--model-name", default="demand", show_default=True)
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    help="FACTOR[:LABEL]: roll out the champion re-signed with forecasts x FACTOR (repeatable, in order).",
)
@click.option(
    "--candidate-bundle",
    "candidate_bundles",
    multiple=True,
    help="DIR[:LABEL]: roll out a trained bundle (repeatable; after the --candidate ones).",
)
@click.option(
    "--candidate-models",
    "candidate_models",
    multiple=True,
    help="MODEL[,MODEL...][:LABEL]: roll out a candidate trained like the champion with these models "
    "(repeatable; after the --candidate-bundle ones).",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rollout plan (TOML); default: three waves 20/50/100 % with short bakes.",
)
@click.option("--agent-processes", type=int, default=0, show_default=True, help="Agents run as processes.")
@click.option("--engine-interval", type=float, default=0.5, show_default=True, help="Own server: seconds.")
@click.option("--server-url", default="", help="Join this server instead of starting one.")
@click.option("--admin-token", envvar="SHELFCAST_TOKEN", default="", help="Admin token of --server-url.")
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Private key the joined server trusts (default: a new key pair, trusted by the own server).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".shelfcast/simulate"),
    show_default=True,
    help="Folder for data, models, server and agent state (emptied first).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def simulate(
    source: str,
    data_path: Path | None,
    stores: int | None,
    departments: int,
    items: int,
    freq: str,
    periods: int,
    horizon: int,
    agent_history: int | None,
    seed: int,
    replay_noise: float,
    model_name: str,
    candidates: tuple[str, ...],
    candidate_bundles: tuple[str, ...],
    candidate_models: tuple[str, ...],
    plan_file: Path | None,
    agent_processes: int,
    engine_interval: float,
    server_url: str,
    admin_token: str,
    signing_key: Path | None,
    state_dir: Path,
    output: str,
) -> None:
    """Replay a sales history period by period for a fleet of real agents and a real server.

    Each --candidate is rolled out in turn with the plan; the summary shows every rollout's outcome.
    """
    import shutil

    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    log_to_file(state_dir / "logs" / "simulate.log")
    options = SimulationOptions(
        state_dir=state_dir,
        source=source,  # type: ignore[arg-type]
        data_path=data_path,
        stores=stores,
        departments=departments,
        items=items,
        freq=freq,  # type: ignore[arg-type]
        periods=periods,
        horizon=horizon,
        agent_history_periods=agent_history,
        seed=seed,
        replay_noise=replay_noise,
        model_name=model_name,
        candidates=[
            *(_candidate(c) for c in candidates),
            *(_candidate_bundle(c) for c in candidate_bundles),
            *(_candidate_models(c) for c in candidate_models),
        ],
        plan_file=plan_file,
        agent_processes=agent_processes,
        engine_interval_seconds=engine_interval,
        server_url=server_url,
        admin_token=admin_token,
        signing_key=signing_key,
    )
    report = run_simulation(options)
    if output == "json":
        click.echo(msgspec.json.encode(report).decode())
        return
    from forecasting.common.tables import render_table

    click.echo(
        f"{len(report.stores)} stores, {report.periods_replayed} periods replayed; "
        f"champion v{report.champion_start} -> v{report.champion_end}"
    )
    if report.rollouts:
        click.echo(
            render_table(
                [
                    {
                        "version": r.version,
                        "forecasts": r.label or f"x{r.multiply}",
                        "outcome": r.outcome,
                        "waves_completed": f"{r.waves_completed}/{len(r.waves)}",
                        "periods": r.periods,
                        "wape_ratios": ", ".join(f"{c}: {v}" for c, v in r.wape_ratios.items()),
                        "rollout": r.rollout_id,
                    }
                    for r in report.rollouts
                ]
            )
        )
    click.echo(render_table([{"step": k, "seconds": v} for k, v in report.timings_seconds.items()]))
    click.echo(f"state and logs: {report.state_dir}")
