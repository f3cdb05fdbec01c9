"""``shelfcast replenish simulate``: proof by simulation that the agents' order proposals hold their service
level with less stock than a classic policy.

The replay trains the given config on the sales before a window, starts a real server and one real agent
process per store (the parts of :mod:`shelfcast.simulate`), and then, every period of the window: the
store's inventory system posts each item's position to its agent (``POST /v1/inventory``), reads the
proposals back (``GET /v1/replenishment``) and orders them; the orders arrive after the lead time; the
period's real sales reach the agents as actuals, and what the shelf could not serve is lost. The classic
policy (point forecasts plus a normal safety stock from the backtest error) and perfect foresight are
played over the same demand by the same ledger code.

The parts: ``ledger`` (stock, orders and lost sales period by period; what a policy achieved),
``classic`` (the classic policy and its stock at a given service level), ``store_system`` (the inventory
system's side of the agent API), ``replay`` (the steps in order), ``report`` and ``command`` (the CLI).
"""

from shelfcast.replenish.command import replenish
from shelfcast.replenish.options import ReplenishOptions
from shelfcast.replenish.replay import run_replenishment
from shelfcast.replenish.report import GroupReport, ReplenishReport

__all__ = ["GroupReport", "ReplenishOptions", "ReplenishReport", "replenish", "run_replenishment"]
