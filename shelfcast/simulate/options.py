"""What a simulation is asked to do: its options, the candidates it rolls out, and its error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from forecasting.common.errors import ForecastingError

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

    def describe(self) -> str:
        """The reason its bundle and rollout carry: the label, or what the candidate is made of."""
        if self.label:
            return self.label
        if self.models:
            return f"simulated candidate trained with {', '.join(self.models)}"
        if self.bundle is not None:
            return f"simulated candidate from bundle {self.bundle.name} x{self.multiply}"
        return f"simulated candidate x{self.multiply}"


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
    agent_read_token: str = ""  # bearer tokens of the agents' inventory API (none by default)
    agent_operator_token: str = ""
    keep_runs: int = 1  # scoring runs an agent keeps (each reports its accuracy as actuals arrive)
    keep_server: bool = False  # leave the own server running (the caller stops `Simulation.server`)
    server_host: str = "127.0.0.1"  # own server: where it listens
    server_port: int = 0  # own server: its port (0: a free one)
    on_progress: Callable[[str], None] | None = None  # told of each step as it starts (the demo prints)
    # After a promoted rollout, move `champion` back to the first champion: every candidate is then judged
    # against the same model (the gates benchmark), at the cost of one more activation per store.
    reset_champion: bool = False

    def progress(self, message: str) -> None:
        """Tell ``on_progress`` (if any) that a step starts."""
        if self.on_progress is not None:
            self.on_progress(message)
