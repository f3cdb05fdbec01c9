"""The classic policy the agents' proposals are compared with, computed from the same forecasts.

Order-up-to level = the sum of the point forecasts over the lead time and review period (``demand_mean``
of the agents' own proposals: the same served forecasts) plus a normal safety stock
``z * sigma * sqrt(L + R)``, with ``sigma`` the series' one-period forecast error in the bundle's
backtest (the root mean squared error of the model the series was assigned, ensembles as the mean of
their members) and ``z`` the normal quantile of the target.

"At the same achieved service level": the classic policy is replayed over the same demand at a ladder of
targets, and its average stock read off, by linear interpolation, at the cycle service level the agents
achieved (:func:`stock_at_service_level`).
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import polars as pl

from forecasting.models.families import ensemble_members
from shelfcast.replenish.ledger import Achieved, FloatArray, Ledger

# Targets the classic policy is replayed at to find its stock at any achieved service level.
TARGET_LADDER = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999)


def backtest_sigma(cv: pl.DataFrame, assignment: pl.DataFrame, history: pl.DataFrame) -> pl.DataFrame:
    """``store_id, item_id, sigma``: each series' backtest RMSE of its assigned model (a series the backtest
    could not cover takes the standard deviation of its history)."""
    keys = ["store_id", "item_id"]
    parts: list[pl.DataFrame] = []
    for (label,), group in assignment.group_by("model"):
        members = [m for m in ensemble_members(str(label)) if m in cv.columns]
        if not members:
            continue
        rows = cv.join(group.select(keys), on=keys).filter(pl.all_horizontal(pl.col(members).is_not_null()))
        prediction = pl.mean_horizontal(members)
        parts.append(rows.group_by(keys).agg(sigma=((pl.col("y") - prediction) ** 2).mean().sqrt()))
    fallback = history.group_by(keys).agg(fallback=pl.col("y").std().fill_null(0.0))
    errors = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(schema={"store_id": pl.Utf8, "item_id": pl.Utf8, "sigma": pl.Float64})
    )
    return (
        fallback.join(errors, on=keys, how="left")
        .select(*keys, sigma=pl.coalesce("sigma", "fallback").fill_nan(0.0))
        .sort(keys)
    )


def classic_levels(means: FloatArray, sigma: FloatArray, target: float, cover_periods: int) -> FloatArray:
    """Order-up-to levels ``(periods, items)``: forecast total plus ``z * sigma * sqrt(L + R)``."""
    z = NormalDist().inv_cdf(target)
    levels: FloatArray = means + z * sigma[None, :] * np.sqrt(cover_periods)
    return levels


def stock_at_service_level(ladder: list[Achieved], service_level: float) -> tuple[float, bool]:
    """The average stock of the ladder's policy at ``service_level`` (linear between the two nearest
    achieved levels) and whether the level lies within the ladder's range (else the nearest end)."""
    points = sorted((a.achieved_cycle_service_level, a.average_stock) for a in ladder)
    levels = np.array([p[0] for p in points])
    stock = np.maximum.accumulate(np.array([p[1] for p in points]))
    inside = bool(levels[0] <= service_level <= levels[-1])
    return float(np.interp(service_level, levels, stock)), inside


def ladder(
    means: FloatArray,
    sigma: FloatArray,
    cover_periods: int,
    play: Callable[[FloatArray], Ledger],
) -> list[tuple[float, Ledger]]:
    """The classic policy replayed (``play`` turns levels into a ledger) at every target of the ladder."""
    return [(target, play(classic_levels(means, sigma, target, cover_periods))) for target in TARGET_LADDER]
