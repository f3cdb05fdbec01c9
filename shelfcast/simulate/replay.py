"""A whole simulation: its steps in order, and the entry points that run one and stop what it started."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from shelfcast.simulate.clock import Clock
from shelfcast.simulate.fleet import Agent, Fleet
from shelfcast.simulate.options import SimulationError, SimulationOptions
from shelfcast.simulate.publishing import Publisher
from shelfcast.simulate.report import SimulationReport, Timings
from shelfcast.simulate.rollouts import RolloutDriver
from shelfcast.simulate.sources import FleetData, load_fleet

if TYPE_CHECKING:
    import httpx

    from shelfcast.procs import ServiceProcess


class Simulation:
    """The steps of a simulation; :meth:`run` is the whole replay, :meth:`close` stops what it started."""

    def __init__(self, options: SimulationOptions) -> None:
        self.options = options
        self.state_dir = options.state_dir.resolve()
        self.timings = Timings()
        self.fleet = Fleet(options, self.timings)
        self.data: FleetData | None = None

    @property
    def server(self) -> ServiceProcess | None:
        """The own server's process (None when the simulation joins a server)."""
        return self.fleet.server

    @property
    def server_url(self) -> str:
        return self.fleet.server_url

    @property
    def admin_token(self) -> str:
        return self.fleet.admin_token

    @property
    def agents(self) -> dict[str, Agent]:
        """The stores' agents, by store id."""
        return self.fleet.agents

    def admin(self, timeout: float = 60.0) -> httpx.Client:
        """An HTTP client of the server with the admin token."""
        return self.fleet.admin(timeout)

    def run(self) -> SimulationReport:
        """Load the sales, start the server, train and publish the champion, start the agents, roll out
        every candidate over the replayed periods (or just replay them), and report."""
        started = time.monotonic()
        options, fleet = self.options, self.fleet
        options.progress(f"preparing {options.source} sales of {options.stores or 'every'} store(s)")
        data = self.data = load_fleet(options)
        self.timings.add("load_data", started)
        fleet.make_keys()
        fleet.start_server()
        options.progress(f"server listening on {fleet.server_url}; training the first model")
        publisher = Publisher(data, fleet, self.timings)
        clock = Clock(data, fleet, self.timings)
        driver = RolloutDriver(fleet, clock, publisher, self.timings)
        bundle = publisher.train_champion()
        champion_start = publisher.publish(bundle, champion=True, reason="simulation: first champion")
        driver.first_champion = champion_start
        options.progress(f"published v{champion_start} as champion; starting {len(data.store_ids)} agent(s)")
        fleet.create_agents(data)
        stuck = fleet.converge(max(options.converge_timeout_seconds, 120))
        if stuck:
            raise SimulationError(
                f"agents {', '.join(stuck)} never served the champion; see {self.state_dir}"
            )
        rollouts = driver.roll_candidates()
        if not options.candidates:
            while not clock.finished:
                clock.advance()
        fleet.converge(options.converge_timeout_seconds)
        self.timings.add("total", started)
        report = SimulationReport(
            server_url=fleet.server_url,
            dashboard_url=f"{fleet.server_url}/dashboard/",
            model_name=options.model_name,
            source=options.source,
            stores=[{"store_id": s, **data.attributes[s]} for s in data.store_ids],
            periods_replayed=clock.period_index,
            champion_start=champion_start,
            champion_end=driver.champion_now(),
            rollouts=rollouts,
            served={sid: a.served for sid, a in sorted(self.agents.items())},
            reported={sid: a.reported_versions() for sid, a in sorted(self.agents.items())},
            timings_seconds=self.timings.seconds
            | {f"agents_{k}": round(v, 3) for k, v in clock.agent_seconds.items()},
            state_dir=str(self.state_dir),
        )
        (self.state_dir / "report.json").write_bytes(msgspec.json.encode(report))
        return report

    def close(self) -> None:
        """Stop every agent, then the server (unless ``keep_server``)."""
        self.fleet.close()


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
