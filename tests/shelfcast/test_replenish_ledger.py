"""The replenishment ledger every replayed policy shares: arrivals after the lead time, lost sales, cycles."""

from __future__ import annotations

import numpy as np
import pytest

from shelfcast.replenish.classic import stock_at_service_level
from shelfcast.replenish.ledger import (
    Achieved,
    Position,
    achieved,
    order_up_to_rule,
    perfect_foresight_levels,
    run_ledger,
)

DEMAND = np.array([[3.0, 0.0], [1.0, 2.0], [4.0, 0.0], [0.0, 5.0], [2.0, 1.0], [5.0, 0.0], [1.0, 2.0]])


@pytest.mark.parametrize(("lead_time", "review_period"), [(1, 1), (2, 1), (3, 2)])
def test_perfect_foresight_loses_nothing_and_ends_every_period_empty_after_the_warm_up(
    lead_time: int, review_period: int
) -> None:
    """Ordering up to the next L + R periods' actual demand serves all of it and keeps nothing back."""
    levels = perfect_foresight_levels(DEMAND, lead_time, review_period)
    ledger = run_ledger(DEMAND, lead_time, review_period, order_up_to_rule(levels))
    assert ledger.lost.sum() == 0.0
    ends = ledger.end_stock[lead_time:]
    cycle_ends = ends[review_period - 1 :: review_period]
    assert (cycle_ends == 0).all()
    result = achieved(ledger)
    assert (result.achieved_cycle_service_level, result.fill_rate, result.stockout_rate) == (1.0, 1.0, 0.0)


def test_orders_arrive_after_the_lead_time_and_unserved_demand_is_lost() -> None:
    """A rule that orders 2 of each item every period from period 1: arrivals from period 1 + L on."""
    seen: list[Position] = []

    def rule(position: Position) -> np.ndarray:
        seen.append(position)
        return np.full(2, 4.0 if position.period == 0 else 2.0)

    ledger = run_ledger(DEMAND, 2, 1, rule)
    assert [p.period for p in seen] == list(range(len(DEMAND)))
    np.testing.assert_array_equal(ledger.received[:3], 0.0)
    np.testing.assert_array_equal(ledger.received[3:], 2.0)
    np.testing.assert_array_equal(ledger.start_stock[0], [4.0, 4.0])  # the opening stock
    np.testing.assert_allclose(ledger.sold + ledger.lost, DEMAND)
    assert (ledger.start_stock >= 0).all() and (ledger.end_stock >= 0).all()
    # item 0: 4 on the shelf, demand 3 then 1 then 4 with nothing arriving before period 3
    assert ledger.lost[2, 0] == 4.0 and ledger.end_stock[1, 0] == 0.0
    # at the review of period 2 the order of period 1 is open, due next period (column 0)
    np.testing.assert_array_equal(seen[2].open_orders, [[2.0, 0.0], [2.0, 0.0]])
    np.testing.assert_array_equal(seen[2].inventory_position, [2.0, 4.0])


def test_a_cycle_is_the_review_period_and_negative_demand_is_no_demand() -> None:
    """With R = 2 a cycle without any lost sale counts once; a return (negative sale) is no demand."""
    demand = np.array([[1.0], [-2.0], [1.0], [5.0], [1.0], [1.0]])
    ledger = run_ledger(demand, 1, 2, lambda p: np.array([3.0]) if p.period == 0 else np.array([1.0]))
    assert ledger.demand[1, 0] == 0.0
    result = achieved(ledger)
    assert result.cycles == 2  # periods 1-2 and 3-4 after one warm-up period; period 5 is no full cycle
    assert result.achieved_cycle_service_level == 0.5


def test_classic_stock_is_read_at_the_agents_service_level() -> None:
    """Linear between the two nearest achieved levels; the nearest end (flagged) outside the ladder."""

    def point(level: float, stock: float) -> Achieved:
        return Achieved(1, 10, level, 1.0, stock, 0.0, 1.0, 0.0)

    ladder = [point(0.8, 10.0), point(0.9, 20.0), point(1.0, 40.0)]
    assert stock_at_service_level(ladder, 0.95) == (pytest.approx(30.0), True)
    assert stock_at_service_level(ladder[:2], 0.95) == (20.0, False)
