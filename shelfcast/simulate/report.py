"""What a simulation reports: each rollout's result, the whole replay's report, its timings and the
summary the command prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


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


class Timings:
    """Seconds spent per step of a simulation, summed over the step's repeats."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, started: float) -> None:
        """Add the time since ``started`` (a ``time.monotonic()`` reading) to step ``name``."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 3)


def render_summary(report: SimulationReport) -> str:
    """The command's table summary: the fleet and champion, every rollout, the timings, the state folder."""
    from forecasting.common.tables import render_table

    lines = [
        f"{len(report.stores)} stores, {report.periods_replayed} periods replayed; "
        f"champion v{report.champion_start} -> v{report.champion_end}"
    ]
    if report.rollouts:
        lines.append(
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
    lines.append(render_table([{"step": k, "seconds": v} for k, v in report.timings_seconds.items()]))
    lines.append(f"state and logs: {report.state_dir}")
    return "\n".join(lines)
