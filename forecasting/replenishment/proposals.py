"""Order proposals for a store: a scored forecast, its error structure and the posted inventory.

The scoring process calls :func:`proposals` after every scoring and every inventory post; everything it
needs is in files (the run's forecasts and error structure, the exported positions and open orders), so
nothing is refitted and the serving process only reads the result.
"""

from __future__ import annotations

import polars as pl

from forecasting.replenishment.lead_time import forecast_matrix
from forecasting.replenishment.policy import POLICY_COLUMNS, PROPOSAL_SCHEMA, propose

PROPOSAL_COLUMNS = [
    "store_id",
    "item_id",
    "category",
    *[c for c in PROPOSAL_SCHEMA if c not in ("store_id", "item_id")],
    "model",
    "model_name",
    "model_version",
]


def proposals(
    forecasts: pl.DataFrame, structure: pl.DataFrame, positions: pl.DataFrame, orders: pl.DataFrame
) -> pl.DataFrame:
    """One proposal per item that has forecasts and a posted position (:data:`PROPOSAL_COLUMNS`).

    ``positions``: ``item_id, on_hand, backorders`` and the resolved policy fields; ``orders``:
    ``item_id, due_date, quantity``. Open orders count towards the inventory position when they are due
    within the item's lead time plus review period, counted in forecast periods from the first forecast
    day (days for daily forecasts, weeks for weekly ones).
    """
    if forecasts.height == 0 or positions.height == 0:
        return pl.DataFrame(schema={c: proposal_dtype(c) for c in PROPOSAL_COLUMNS})
    first_day = forecasts.select(pl.col("ds").min()).item()
    period = _period(forecasts)
    store_of = forecasts.select("store_id", "item_id", "category", "model", "model_name", "model_version")
    store_of = store_of.unique(["store_id", "item_id"], keep="first")
    cycle = pl.col("lead_time_days") + pl.col("review_period_days")
    due = (
        orders.join(positions.select("item_id", cycle.alias("_days")), on="item_id")
        .filter(pl.col("due_date") <= pl.lit(first_day) + pl.duration(days=(pl.col("_days") - 1) * period))
        .group_by("item_id")
        .agg(on_order=pl.col("quantity").sum())
    )
    inventory = (
        positions.join(due, on="item_id", how="left")
        .with_columns(pl.col("on_order").fill_null(0.0))
        .join(store_of.select("store_id", "item_id"), on="item_id")
        .select("store_id", "item_id", *POLICY_COLUMNS)
    )
    matrix = forecast_matrix(forecasts, structure)
    out = propose(matrix, inventory).join(store_of, on=["store_id", "item_id"], how="left")
    return out.select(PROPOSAL_COLUMNS)


def _period(forecasts: pl.DataFrame) -> int:
    """Days between the first two forecast dates (1 for a single date)."""
    dates = forecasts.select(pl.col("ds").unique().sort().head(2))["ds"].to_list()
    return (dates[1] - dates[0]).days if len(dates) == 2 else 1


def proposal_dtype(column: str) -> pl.DataType:
    """The type of a column of :data:`PROPOSAL_COLUMNS`."""
    if column in PROPOSAL_SCHEMA:
        dtype: pl.DataType = PROPOSAL_SCHEMA[column]
        return dtype
    return pl.Int32() if column == "model_version" else pl.Utf8()
