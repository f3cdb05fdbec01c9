"""What a replenishment replay reports, overall and per category, as JSON or a table; and the ledgers it
leaves behind (every item's stock, sales, lost sales and orders per period and policy)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import polars as pl

from shelfcast.replenish.classic import stock_at_service_level
from shelfcast.replenish.ledger import Achieved, Ledger, achieved

if TYPE_CHECKING:
    from shelfcast.replenish.options import ReplenishOptions


class PolicyFigures(msgspec.Struct, kw_only=True):
    """What one policy achieved after the warm-up."""

    achieved_cycle_service_level: float
    fill_rate: float
    average_stock: float
    stockout_rate: float
    lost_demand: float


class GroupReport(msgspec.Struct, kw_only=True):
    """The agents' proposals on a group of items, next to the classic policy and perfect foresight.

    ``classic_average_stock`` is the classic policy's average stock at the cycle service level the agents
    achieved (``classic_in_range`` False: that level is outside what its ladder of targets reached, and
    the nearest end is given); ``classic_at_target`` the classic policy at the target itself.
    """

    items: int
    cycles: int
    achieved_cycle_service_level: float
    fill_rate: float
    average_stock: float
    classic_average_stock: float
    stock_vs_classic_ratio: float
    classic_in_range: bool
    stockout_rate: float
    demand: float
    lost_demand: float  # censored demand: sales beyond the stock on the shelf
    classic_at_target: PolicyFigures
    perfect_foresight: PolicyFigures


class ReplenishReport(GroupReport, kw_only=True):
    """The whole replay: the policy, the window, the overall figures (fields of :class:`GroupReport`) and
    the same figures per category."""

    target_service_level: float
    lead_time: int
    review_period: int
    freq: str
    first_period: date
    last_period: date
    periods: int
    warmup_periods: int
    stores: list[str]
    categories: dict[str, GroupReport]
    ledgers: str
    seconds: dict[str, float]


def _figures(a: Achieved) -> PolicyFigures:
    return PolicyFigures(
        achieved_cycle_service_level=a.achieved_cycle_service_level,
        fill_rate=a.fill_rate,
        average_stock=a.average_stock,
        stockout_rate=a.stockout_rate,
        lost_demand=a.lost_demand,
    )


def _group(
    columns: np.ndarray[Any, Any] | None,
    agents: Ledger,
    classic: list[tuple[float, Ledger]],
    classic_at_target: Ledger,
    perfect: Ledger,
) -> dict[str, Any]:
    mine = achieved(agents, columns)
    stock, inside = stock_at_service_level(
        [achieved(ledger, columns) for _, ledger in classic], mine.achieved_cycle_service_level
    )
    return {
        "items": mine.items,
        "cycles": mine.cycles,
        "achieved_cycle_service_level": mine.achieved_cycle_service_level,
        "fill_rate": mine.fill_rate,
        "average_stock": mine.average_stock,
        "classic_average_stock": stock,
        "stock_vs_classic_ratio": mine.average_stock / stock if stock > 0 else float("nan"),
        "classic_in_range": inside,
        "stockout_rate": mine.stockout_rate,
        "demand": mine.demand,
        "lost_demand": mine.lost_demand,
        "classic_at_target": _figures(achieved(classic_at_target, columns)),
        "perfect_foresight": _figures(achieved(perfect, columns)),
    }


def build_report(
    *,
    options: ReplenishOptions,
    series: pl.DataFrame,
    agents: Ledger,
    classic: list[tuple[float, Ledger]],
    classic_at_target: Ledger,
    perfect: Ledger,
    freq: str,
    dates: list[date],
    ledgers: Path,
    seconds: dict[str, float],
) -> ReplenishReport:
    """The report of a finished replay; ``series``: ``store_id, item_id, category`` in ledger order."""
    category = series["category"].to_numpy()
    per_category = {
        str(name): GroupReport(
            **_group(np.flatnonzero(category == name), agents, classic, classic_at_target, perfect)
        )
        for name in sorted(set(category.tolist()))
    }
    return ReplenishReport(
        **_group(None, agents, classic, classic_at_target, perfect),
        target_service_level=options.service_level,
        lead_time=options.lead_time,
        review_period=options.review_period,
        freq=freq,
        first_period=dates[0],
        last_period=dates[-1],
        periods=len(dates),
        warmup_periods=options.lead_time,
        stores=sorted(series["store_id"].unique().to_list()),
        categories=per_category,
        ledgers=str(ledgers),
        seconds=seconds,
    )


def write_ledgers(path: Path, series: pl.DataFrame, dates: list[date], ledgers: dict[str, Ledger]) -> None:
    """One row per policy, item and period: ``policy, store_id, item_id, category, period, ds, received,
    start_stock, demand, sold, lost, end_stock, ordered``."""
    frames = []
    n, t = series.height, len(dates)
    for name, ledger in ledgers.items():
        frames.append(
            pl.DataFrame(
                {
                    "policy": [name] * (n * t),
                    "store_id": np.repeat(series["store_id"].to_numpy(), t),
                    "item_id": np.repeat(series["item_id"].to_numpy(), t),
                    "category": np.repeat(series["category"].to_numpy(), t),
                    "period": np.tile(np.arange(t), n),
                    "ds": dates * n,
                    **{
                        column: getattr(ledger, attr).T.reshape(-1)
                        for column, attr in (
                            ("received", "received"),
                            ("start_stock", "start_stock"),
                            ("demand", "demand"),
                            ("sold", "sold"),
                            ("lost", "lost"),
                            ("end_stock", "end_stock"),
                            ("ordered", "ordered"),
                        )
                    },
                }
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.concat(frames).write_parquet(path)


def render_report(report: ReplenishReport) -> str:
    """The command's table: overall and per category, the agents next to classic and perfect foresight."""
    from forecasting.common.tables import render_table

    def row(name: str, g: GroupReport) -> dict[str, Any]:
        return {
            "group": name,
            "items": g.items,
            "csl": f"{g.achieved_cycle_service_level:.3f}",
            "fill_rate": f"{g.fill_rate:.3f}",
            "stockouts": f"{g.stockout_rate:.3f}",
            "avg_stock": f"{g.average_stock:,.1f}",
            "classic_same_csl": f"{g.classic_average_stock:,.1f}" + ("" if g.classic_in_range else "*"),
            "ratio": f"{g.stock_vs_classic_ratio:.2f}",
            "classic@target_csl": f"{g.classic_at_target.achieved_cycle_service_level:.3f}",
            "classic@target_stock": f"{g.classic_at_target.average_stock:,.1f}",
            "perfect_stock": f"{g.perfect_foresight.average_stock:,.1f}",
            "lost": f"{g.lost_demand:,.0f}",
        }

    rows = [row("overall", report), *(row(k, v) for k, v in report.categories.items())]
    unit = "weeks" if report.freq == "W" else "periods" if report.freq != "D" else "days"
    lines = [
        f"{len(report.stores)} stores, {report.items} items; {report.first_period} .. {report.last_period} "
        f"({report.periods} periods, the first {report.warmup_periods} warm-up); lead time "
        f"{report.lead_time} {unit}, review every {report.review_period}; target cycle service level "
        f"{report.target_service_level:g}",
        render_table(rows),
        "classic_same_csl: the classic policy's average stock at the agents' achieved cycle service level"
        " (* outside the levels it reached: nearest end); ratio = avg_stock / classic_same_csl",
        f"ledgers: {report.ledgers}",
    ]
    return "\n".join(lines)
