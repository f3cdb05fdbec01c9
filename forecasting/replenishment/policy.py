"""Periodic-review order-up-to policy: from lead-time demand and the inventory position to an order.

An order placed now arrives after the lead time ``L`` and must cover demand until the next order can
arrive, ``L + R`` periods (``R`` the review period). With ``D`` the demand over ``L + R`` periods:

- cycle service level target ``a``: the order-up-to level ``S`` is the ``a`` quantile of ``D``, so no
  stock-out happens in the cycle with probability ``a``;
- fill rate target ``b``: ``S`` is the smallest level whose expected shortage ``E[(D - S)^+]`` is at most
  ``(1 - b)`` times the expected demand of one review period (the share of demand a cycle may miss).
  This counts the shortage carried in from the previous cycle as missed again, so it errs on the side
  of stock.

The inventory position is on hand plus what is on order and arrives within ``L + R`` periods, minus
backorders. The proposed quantity is ``S`` minus the position, rounded up to whole packs, raised to the
minimum order when it is positive, and capped so that position plus order fits the shelf (whole packs;
when the minimum order does not fit, nothing is proposed). Each proposal states the service level the
position after ordering is expected to reach (in the target's own measure) and the expected stock on
hand at the end of the lead time, when the order arrives: ``E[(position + order - D_L)^+]`` with ``D_L``
the demand over ``L`` periods.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from forecasting.replenishment.lead_time import FloatArray, ForecastMatrix, LeadTimeDemand, lead_time_demand

KEYS = ["store_id", "item_id"]
CYCLE = "cycle_service_level"
FILL_RATE = "fill_rate"
POLICY_COLUMNS = [
    "on_hand",
    "on_order",
    "backorders",
    "lead_time_days",
    "review_period_days",
    "service_metric",
    "target_service_level",
    "pack_size",
    "min_order",
    "shelf_capacity",
]
PROPOSAL_SCHEMA = pl.Schema(
    {
        "store_id": pl.Utf8,
        "item_id": pl.Utf8,
        "lead_time_days": pl.Int32,
        "review_period_days": pl.Int32,
        "service_metric": pl.Utf8,
        "target_service_level": pl.Float64,
        "demand_mean": pl.Float64,
        "demand_sd": pl.Float64,
        "order_up_to": pl.Float64,
        "inventory_position": pl.Float64,
        "proposed_quantity": pl.Float64,
        "expected_service_level": pl.Float64,
        "expected_stock_end_of_lead_time": pl.Float64,
    }
)
_BISECTIONS = 60


def order_up_to(
    demand: LeadTimeDemand, review_mean: FloatArray, fill_rate: np.ndarray[Any, Any], target: FloatArray
) -> FloatArray:
    """Order-up-to level per series: the ``target`` quantile of ``demand`` (cycle service level) or, where
    ``fill_rate``, the smallest level whose expected shortage is at most ``(1 - target) * review_mean``.
    Count laws get whole numbers."""
    level = demand.quantile(target)
    if not fill_rate.any():
        return level
    allowed = (1.0 - target) * review_mean
    lo = np.zeros_like(level)
    hi = demand.mean + 12.0 * np.sqrt(demand.variance) + 1.0
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        enough = demand.expected_shortage(mid) <= allowed
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid)
    fill_level = np.where(demand.count, np.ceil(hi - 1e-9), hi)
    result: FloatArray = np.where(fill_rate, fill_level, level)
    return result


def round_order(raw: FloatArray, pack: FloatArray, minimum: FloatArray, room: FloatArray) -> FloatArray:
    """Whole packs covering ``raw`` (0 when ``raw <= 0``), at least ``minimum`` when ordering, at most
    ``room`` (NaN: no limit); 0 when the minimum does not fit in the room."""
    packs = np.ceil(np.maximum(raw, 0.0) / pack - 1e-9)
    qty = packs * pack
    min_qty = np.ceil(minimum / pack - 1e-9) * pack
    qty = np.where(qty > 0, np.maximum(qty, min_qty), 0.0)
    limit = np.where(np.isnan(room), np.inf, np.floor(np.maximum(room, 0.0) / pack + 1e-9) * pack)
    qty = np.minimum(qty, limit)
    result: FloatArray = np.where((qty > 0) & (qty < min_qty - 1e-9), 0.0, qty)
    return result


def propose(matrix: ForecastMatrix, inventory: pl.DataFrame) -> pl.DataFrame:
    """Order proposals for the series of ``matrix`` that ``inventory`` holds a position and policy for.

    ``inventory``: ``store_id, item_id`` and :data:`POLICY_COLUMNS` (``on_order`` already limited to
    orders due within ``lead_time_days + review_period_days``; ``shelf_capacity`` null when unlimited).
    Returns :data:`PROPOSAL_SCHEMA` rows, sorted by store and item.
    """
    keys = matrix.keys.with_row_index("_row")
    joined = keys.join(inventory, on=KEYS, how="inner").sort(KEYS)
    if joined.height == 0:
        return pl.DataFrame(schema=PROPOSAL_SCHEMA)
    rows = joined["_row"].to_numpy()
    sub = ForecastMatrix(keys=joined, mean=matrix.mean[rows], sigma=matrix.sigma[rows])

    def column(name: str) -> FloatArray:
        values: FloatArray = joined[name].cast(pl.Float64).to_numpy()
        return values

    lead, review = column("lead_time_days"), column("review_period_days")
    over_cycle = lead_time_demand(sub, (lead + review).astype(np.int64))
    over_lead = lead_time_demand(sub, lead.astype(np.int64))
    review_mean = over_cycle.mean - over_lead.mean
    fill = (joined["service_metric"] == FILL_RATE).to_numpy()
    target = column("target_service_level")
    level = order_up_to(over_cycle, review_mean, fill, target)
    position = column("on_hand") + column("on_order") - column("backorders")
    room = column("shelf_capacity") - position
    qty = round_order(level - position, column("pack_size"), column("min_order"), room)
    after = position + qty
    with np.errstate(divide="ignore", invalid="ignore"):
        fill_expected = np.where(
            review_mean > 0, 1.0 - over_cycle.expected_shortage(after) / review_mean, 1.0
        )
    expected = np.where(fill, np.clip(fill_expected, 0.0, 1.0), over_cycle.cdf(after))
    return joined.select(
        *KEYS,
        "lead_time_days",
        "review_period_days",
        "service_metric",
        "target_service_level",
        demand_mean=over_cycle.mean,
        demand_sd=np.sqrt(over_cycle.variance),
        order_up_to=level,
        inventory_position=position,
        proposed_quantity=qty,
        expected_service_level=expected,
        expected_stock_end_of_lead_time=over_lead.expected_leftover(after),
    ).cast(PROPOSAL_SCHEMA)
