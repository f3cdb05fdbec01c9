"""The stock of a set of items under lost sales and a fixed lead time, period by period, and what it achieved.

One piece of code serves every policy the replay compares: :func:`run_ledger` plays the demand of every
period against an order rule (the agents' proposals, the classic policy, perfect foresight) and returns
the :class:`Ledger` of what happened. Within a period, in order:

1. the order placed ``lead_time`` periods ago arrives and goes on the shelf;
2. on a review period (every ``review_period`` periods from the first) the rule sees the position (on
   hand, and the open orders with their due periods) and orders; the order is due ``lead_time`` periods
   later. At period 0 the shelf is empty and what the rule orders is the opening stock, on the shelf at
   once: every policy starts from its own order-up-to level;
3. the period's demand is served from the shelf; what the shelf cannot serve is lost (censored demand).

The first ``lead_time`` periods are warm-up (the opening stock alone serves them) and are not measured.
A cycle is the ``review_period`` periods one order covers once it has arrived; the cycle service level is
the share of cycles without a lost sale, the fill rate the share of demand served, the average stock the
mean of the stock at the start of a period (after the arrival) and at its end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class Position:
    """What a rule sees at a review: stock on hand and open orders by the period they are due."""

    period: int
    on_hand: FloatArray  # (items,)
    open_orders: FloatArray  # (items, lead_time): column k is due at period + k + 1

    @property
    def inventory_position(self) -> FloatArray:
        position: FloatArray = self.on_hand + self.open_orders.sum(axis=1)
        return position


OrderRule = Callable[[Position], FloatArray]


@dataclass(frozen=True)
class Ledger:
    """Per period and item (``(periods, items)`` arrays): what arrived, was on the shelf, sold and lost."""

    demand: FloatArray
    received: FloatArray
    start_stock: FloatArray
    sold: FloatArray
    lost: FloatArray
    end_stock: FloatArray
    ordered: FloatArray
    lead_time: int
    review_period: int


def run_ledger(demand: FloatArray, lead_time: int, review_period: int, rule: OrderRule) -> Ledger:
    """Play ``demand`` (``(periods, items)``, negative values count as no demand) against ``rule``."""
    if lead_time < 1 or review_period < 1:
        raise ValueError(f"lead time ({lead_time}) and review period ({review_period}) must be at least 1")
    demand = np.maximum(np.asarray(demand, dtype=np.float64), 0.0)
    periods, items = demand.shape
    arrays = {
        name: np.zeros((periods, items)) for name in ("received", "start", "sold", "lost", "end", "ordered")
    }
    on_hand = np.zeros(items)
    pipeline = np.zeros((items, lead_time))  # column k arrives at the start of the period k + 1 from now
    for t in range(periods):
        if t:
            arrived = pipeline[:, 0].copy()
            pipeline = np.concatenate([pipeline[:, 1:], np.zeros((items, 1))], axis=1)
            on_hand = on_hand + arrived
            arrays["received"][t] = arrived
        if t % review_period == 0:
            order = np.maximum(np.asarray(rule(Position(t, on_hand.copy(), pipeline.copy())), float), 0.0)
            arrays["ordered"][t] = order
            if t == 0:
                on_hand = on_hand + order  # the opening stock
            else:
                pipeline[:, lead_time - 1] += order
        arrays["start"][t] = on_hand
        sold = np.minimum(on_hand, demand[t])
        arrays["sold"][t] = sold
        arrays["lost"][t] = demand[t] - sold
        on_hand = on_hand - sold
        arrays["end"][t] = on_hand
    return Ledger(
        demand=demand,
        received=arrays["received"],
        start_stock=arrays["start"],
        sold=arrays["sold"],
        lost=arrays["lost"],
        end_stock=arrays["end"],
        ordered=arrays["ordered"],
        lead_time=lead_time,
        review_period=review_period,
    )


def order_up_to_rule(levels: FloatArray, whole: bool = True) -> OrderRule:
    """The rule ordering up to ``levels[period]`` (``(periods, items)``), in whole units when ``whole``."""

    def rule(position: Position) -> FloatArray:
        raw = levels[position.period] - position.inventory_position
        order: FloatArray = np.maximum(np.ceil(raw - 1e-9) if whole else raw, 0.0)
        return order

    return rule


def perfect_foresight_levels(demand: FloatArray, lead_time: int, review_period: int) -> FloatArray:
    """Order-up-to levels that know the future: the demand of the ``lead_time + review_period`` periods
    from each one (fewer at the end of the replay). No sale is lost and nothing is left over after the
    warm-up: the bound no forecast can beat with these lead times."""
    demand = np.maximum(demand, 0.0)
    cumulative = np.vstack([np.zeros((1, demand.shape[1])), np.cumsum(demand, axis=0)])
    periods = demand.shape[0]
    ends = np.minimum(np.arange(periods) + lead_time + review_period, periods)
    levels: FloatArray = cumulative[ends] - cumulative[np.arange(periods)]
    return levels


@dataclass(frozen=True)
class Achieved:
    """What a policy achieved over the measured periods of a set of items."""

    items: int
    cycles: int
    achieved_cycle_service_level: float
    fill_rate: float
    average_stock: float
    stockout_rate: float
    demand: float
    lost_demand: float


def achieved(ledger: Ledger, columns: np.ndarray[Any, Any] | None = None) -> Achieved:
    """Service and stock of the items ``columns`` (all by default) after the warm-up."""
    cols = np.arange(ledger.demand.shape[1]) if columns is None else np.asarray(columns)
    first = ledger.lead_time
    lost = ledger.lost[first:, cols]
    demand = ledger.demand[first:, cols]
    stock = 0.5 * (ledger.start_stock[first:, cols] + ledger.end_stock[first:, cols])
    measured = lost.shape[0] - lost.shape[0] % ledger.review_period
    cycles = lost[:measured].reshape(-1, ledger.review_period, len(cols)).sum(axis=1)
    total_demand = float(demand.sum())
    return Achieved(
        items=len(cols),
        cycles=int(cycles.size),
        achieved_cycle_service_level=float((cycles <= 1e-9).mean()) if cycles.size else float("nan"),
        fill_rate=1.0 - float(lost.sum()) / total_demand if total_demand > 0 else 1.0,
        average_stock=float(stock.mean()) if stock.size else float("nan"),
        stockout_rate=float((lost > 1e-9).mean()) if lost.size else float("nan"),
        demand=total_demand,
        lost_demand=float(lost.sum()),
    )
