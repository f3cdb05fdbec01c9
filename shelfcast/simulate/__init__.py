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

The parts: ``options`` (what to simulate), ``sources`` (the sales as per-store histories), ``fleet``
(the server and the agents), ``clock`` (the replayed periods), ``publishing`` (training and publishing
versions), ``rollouts`` (each candidate's rollout and its outcome), ``report``, ``replay`` (the steps in
order) and ``command`` (the CLI).
"""

from shelfcast.simulate.command import log_to_file, simulate
from shelfcast.simulate.options import Candidate, SimulationError, SimulationOptions
from shelfcast.simulate.replay import Simulation, run_simulation, simulation
from shelfcast.simulate.report import RolloutResult, SimulationReport

__all__ = [
    "Candidate",
    "RolloutResult",
    "Simulation",
    "SimulationError",
    "SimulationOptions",
    "SimulationReport",
    "log_to_file",
    "run_simulation",
    "simulate",
    "simulation",
]
