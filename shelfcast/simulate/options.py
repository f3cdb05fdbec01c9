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


# The simulation's own [train] settings: every version it rolls out forecasts the same horizon under the
# same model name, so a candidate cannot override them.
SIMULATION_TRAIN_SETTINGS = frozenset({"model_name", "horizon"})


def check_train_overrides(overrides: dict[str, Any], where: str) -> None:
    """Fail, naming ``where`` and the setting, unless ``overrides`` are valid ``[train]`` settings."""
    import msgspec

    from forecasting.common.config import TrainSection
    from forecasting.common.errors import ConfigError
    from forecasting.models.families import check_candidates

    known = {f.encode_name for f in msgspec.structs.fields(TrainSection)}
    for key in overrides:
        if key in SIMULATION_TRAIN_SETTINGS:
            raise SimulationError(f"{where}: train.{key} is set by the simulation, not by a candidate")
        if key not in known:
            settings = ", ".join(sorted(known))
            raise SimulationError(f"{where}: unknown training setting train.{key} (known: {settings})")
    try:
        section = msgspec.convert(overrides, TrainSection)
        check_candidates(section)
    except (msgspec.ValidationError, ConfigError) as exc:
        raise SimulationError(f"{where}: bad training settings: {exc}") from None


@dataclass
class Candidate:
    """A version to roll out: a bundle (the champion's by default) re-signed with forecast adjustments.

    ``multiply`` scales every forecast (1.0: a new version that forecasts like the champion; 1.3: a
    deliberately bad one). ``bundle``: any trained bundle instead of the champion's (trained on the
    history before the replay, like the champion, for a fair comparison). ``models``: the simulation
    trains the candidate itself, on the champion's history and settings with these models. ``train``:
    ``[train]`` settings (e.g. ``{"windows": 3, "ensemble_top_k": 3}``) laid over the champion's when the
    simulation trains the candidate (any of them, ``models`` too, makes it a trained candidate). ``plan``
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
    train: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    plan_file: Path | None = None
    untrusted_by: list[str] = field(default_factory=list)
    kill_server_after_periods: int | None = None

    def __post_init__(self) -> None:
        check_train_overrides(self.train, f"candidate {self.describe()!r}")
        if self.models and "models" in self.train:
            raise SimulationError(
                f"candidate {self.describe()!r}: models given twice (as models and as train.models)"
            )

    @property
    def trained(self) -> bool:
        """Whether the simulation trains this candidate (rather than re-signing a bundle)."""
        return bool(self.models or self.train)

    def describe(self) -> str:
        """The reason its bundle and rollout carry: the label, or what the candidate is made of."""
        if self.label:
            return self.label
        models = self.models or self.train.get("models", [])
        if self.trained:
            settings = ", ".join(f"{k}={v}" for k, v in self.train.items() if k != "models")
            made_of = f"with {', '.join(models)}" if models else "with the champion's models"
            return f"simulated candidate trained {made_of}{'; ' + settings if settings else ''}"
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
