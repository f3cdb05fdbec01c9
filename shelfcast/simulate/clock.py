"""The replay clock: the periods a simulation plays, each one's sales arriving at every store."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shelfcast.simulate.options import SimulationError

if TYPE_CHECKING:
    from shelfcast.simulate.fleet import Agent, Fleet
    from shelfcast.simulate.report import Timings
    from shelfcast.simulate.sources import FleetData


class Clock:
    """Where the replay is in the fleet's periods; :meth:`play_period` moves it one period on."""

    def __init__(self, data: FleetData, fleet: Fleet, timings: Timings) -> None:
        self.data = data
        self.fleet = fleet
        self.options = fleet.options
        self.timings = timings
        self.period_index = 0
        self.agent_seconds: dict[str, float] = {}  # summed over agents: waiting for ingest, score, delivery

    @property
    def finished(self) -> bool:
        """Every period has been played."""
        return self.period_index >= len(self.data.periods)

    def advance(self) -> None:
        """Let every agent converge on its assignment, then play the next period."""
        self.fleet.converge(self.options.converge_timeout_seconds)
        self.play_period()

    def play_period(self) -> None:
        """Drop the period's sales into every inbox, score once they are in, deliver the reports."""
        from forecasting.data.frames import write_frame

        index = self.period_index
        day = self.data.periods[index]
        self.options.progress(f"period {index + 1}: sales up to {day} arrive at every store")
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
        self.fleet.each_agent(one)
        self.period_index += 1
        self.timings.add("periods", started)


def _wait(check: Callable[[], bool], timeout_seconds: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            raise SimulationError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(interval)
