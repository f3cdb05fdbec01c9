"""The replenishment replay, step by step: train on the history before the window, start a real server and
one agent process per store, then review, order and sell period by period; replay the classic policy and
perfect foresight over the same demand; report."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from shelfcast.replenish.classic import backtest_sigma, classic_levels, ladder
from shelfcast.replenish.ledger import (
    FloatArray,
    Ledger,
    Position,
    order_up_to_rule,
    perfect_foresight_levels,
    run_ledger,
)
from shelfcast.replenish.report import ReplenishReport, build_report, write_ledgers
from shelfcast.replenish.store_system import Policy, StoreSystem
from shelfcast.simulate.options import SimulationError, SimulationOptions

if TYPE_CHECKING:
    from forecasting.common.config import TrainConfig
    from shelfcast.simulate.fleet import Fleet
    from shelfcast.simulate.report import Timings

KEYS = ["store_id", "item_id"]


@dataclass
class ReplenishOptions:
    """What to replay: the sales, the training config, the policy and the window."""

    config_files: list[Path]
    data_path: Path
    state_dir: Path
    service_level: float = 0.95
    lead_time: int = 2  # periods of the data (days or weeks)
    review_period: int = 1
    periods: int = 13  # the last N dates every replayed series shares
    stores: int | None = None  # the first N stores (default all)
    items: int | None = None  # the first N items of each store (default all)
    period_timeout_seconds: float = 120.0
    on_progress: Callable[[str], None] | None = field(default=None, repr=False)

    def progress(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(message)


def check_options(options: ReplenishOptions) -> None:
    """Refuse a policy or window that cannot be replayed, naming the option."""
    if options.lead_time < 1:
        raise SimulationError(f"--lead-time must be at least 1 period (got {options.lead_time})")
    if options.review_period < 1:
        raise SimulationError(f"--review-period must be at least 1 period (got {options.review_period})")
    if not 0 < options.service_level < 1:
        raise SimulationError(f"--service-level must be between 0 and 1, exclusive (got {options.service_level:g})")
    if options.periods < options.lead_time + options.review_period:
        raise SimulationError(
            f"--periods ({options.periods}) must cover at least the lead time plus one review period "
            f"({options.lead_time + options.review_period}): the first lead time is warm-up"
        )


def run_replenishment(options: ReplenishOptions) -> ReplenishReport:
    """Run the whole replay and stop every process it started."""
    from forecasting.common.config import load_train_config
    from shelfcast.simulate.fleet import Fleet
    from shelfcast.simulate.report import Timings

    check_options(options)
    config = load_train_config(list(options.config_files))
    cover = options.lead_time + options.review_period
    if cover > config.train.horizon:
        raise SimulationError(
            f"lead time + review period ({cover} periods) exceeds the config's forecast horizon "
            f"({config.train.horizon}): the agents could not forecast the demand an order must cover"
        )
    frame, dates = replay_frame(options, config)
    timings = Timings()
    sim = SimulationOptions(
        state_dir=options.state_dir,
        model_name=config.train.model_name,
        horizon=config.train.horizon,
        agent_processes=frame["store_id"].n_unique(),
        poll_interval_seconds=1.0,
        heartbeat_interval_seconds=1.0,
        period_timeout_seconds=options.period_timeout_seconds,
        agent_read_token=secrets.token_urlsafe(16),
        agent_operator_token=secrets.token_urlsafe(16),
        on_progress=options.on_progress,
    )
    fleet = Fleet(sim, timings)
    try:
        return _replay(options, config, frame, dates, fleet, timings)
    finally:
        fleet.close()


def replay_frame(options: ReplenishOptions, config: TrainConfig) -> tuple[pl.DataFrame, list[date]]:
    """The validated sales of the chosen stores and items (canonical columns) whose series have history
    before the window and a row at every date of it; the window's dates."""
    from forecasting.data.validation import load_canonical, require_usable, write_reports

    options.progress(f"loading {options.data_path.name}")
    loaded = load_canonical(options.data_path, config.data)
    write_reports(loaded, options.state_dir / "validation")
    require_usable(loaded)
    frame = loaded.frame.select("store_id", "item_id", "category", "ds", pl.col("y").cast(pl.Float64))
    stores = sorted(frame["store_id"].unique().to_list())[: options.stores]
    frame = frame.filter(pl.col("store_id").is_in(stores))
    if options.items:
        firsts = (
            frame.select(KEYS).unique().sort(KEYS).group_by("store_id", maintain_order=True).head(options.items)
        )
        frame = frame.join(firsts, on=KEYS, how="semi")
    dates = sorted(frame["ds"].unique().to_list())
    if len(dates) <= options.periods:
        raise SimulationError(f"{options.data_path.name}: {len(dates)} dates; --periods {options.periods} leaves no history")
    window = dates[-options.periods :]
    complete = (
        frame.filter(pl.col("ds") >= window[0])
        .group_by(KEYS)
        .agg(pl.col("ds").n_unique().alias("n"))
        .filter(pl.col("n") == len(window))
    )
    before = frame.filter(pl.col("ds") < window[0]).select(KEYS).unique()
    frame = frame.join(complete.select(KEYS), on=KEYS, how="semi").join(before, on=KEYS, how="semi")
    if frame.height == 0:
        raise SimulationError(f"{options.data_path.name}: no series has history and every date of the window")
    return frame.sort(*KEYS, "ds"), window


def _replay(
    options: ReplenishOptions,
    config: TrainConfig,
    frame: pl.DataFrame,
    dates: list[date],
    fleet: Fleet,
    timings: Timings,
) -> ReplenishReport:
    from shelfcast.simulate.clock import Clock
    from shelfcast.simulate.publishing import Publisher
    from shelfcast.simulate.sources import FleetData

    started = time.monotonic()
    stores = sorted(frame["store_id"].unique().to_list())
    data = FleetData(frame, {s: {} for s in stores}, dates, config.data.freq, config.train.season_length)
    fleet.make_keys()
    fleet.start_server()
    options.progress(f"training {config.train.model_name} on the history before {dates[0]}")
    bundle, sigma = _train(config, data.history, fleet)
    Publisher(data, fleet, timings).publish(bundle, champion=True, reason="replenishment replay")
    options.progress(f"starting {len(stores)} agent processes")
    fleet.create_agents(data)
    late = fleet.converge(fleet.options.converge_timeout_seconds * 4)
    if late:
        raise SimulationError(f"stores {', '.join(late)} did not activate the model; see {fleet.logs}")

    series = frame.select(KEYS + ["category"]).unique(KEYS).sort(KEYS)
    demand_matrix = _dense(frame, series, dates)
    policy = Policy(options.lead_time, options.review_period, options.service_level)
    means = np.zeros_like(demand_matrix)
    agent_levels = np.full_like(demand_matrix, np.nan)
    clock = Clock(data, fleet, timings)
    per_store = {s: np.flatnonzero((series["store_id"] == s).to_numpy()) for s in stores}
    items = series["item_id"].to_list()
    step = dates[1] - dates[0] if len(dates) > 1 else timedelta(days=1)

    def agent_rule(position: Position) -> FloatArray:
        t = position.period
        if t:
            clock.play_period()  # the sales of the previous period reach every store
        options.progress(f"period {t + 1}/{len(dates)} ({dates[0] + t * step}): review at every store")
        due = [dates[0] + (t + k + 1) * step for k in range(options.lead_time)]
        order = np.zeros(len(items))

        def review(store_id: str) -> None:
            rows = per_store[store_id]
            agent = fleet.agents[store_id]
            system = StoreSystem(
                agent.url, fleet.options.agent_read_token, fleet.options.agent_operator_token,
                options.period_timeout_seconds,
            )  # fmt: skip
            answer = system.review(
                [items[i] for i in rows], position.on_hand[rows], position.open_orders[rows], due, policy,
                dates[0] + t * step,
            )  # fmt: skip
            order[rows] = answer.quantity
            means[t, rows] = answer.demand_mean
            agent_levels[t, rows] = answer.order_up_to

        fleet.each_agent(lambda agent: review(agent.store_id))
        return order

    agents = run_ledger(demand_matrix, options.lead_time, options.review_period, agent_rule)
    timings.add("replay", started)
    options.progress("replaying the classic policy and perfect foresight over the same demand")
    sigma_vec = series.join(sigma, on=KEYS, how="left", maintain_order="left")["sigma"].fill_null(0.0).to_numpy()

    def play(levels: FloatArray) -> Ledger:
        return run_ledger(demand_matrix, options.lead_time, options.review_period, order_up_to_rule(levels))

    classic = ladder(means, sigma_vec, options.lead_time + options.review_period, play)
    perfect = play(perfect_foresight_levels(demand_matrix, options.lead_time, options.review_period))
    ledgers = options.state_dir / "ledgers.parquet"
    cover = options.lead_time + options.review_period
    nominal = play(classic_levels(means, sigma_vec, options.service_level, cover))
    write_ledgers(ledgers, series, dates, {"agents": agents, "classic": nominal, "perfect_foresight": perfect})
    return build_report(
        options=options,
        series=series,
        agents=agents,
        classic=classic,
        classic_at_target=nominal,
        perfect=perfect,
        freq=config.data.freq,
        dates=dates,
        ledgers=ledgers,
        seconds=timings.seconds,
    )


def _dense(frame: pl.DataFrame, series: pl.DataFrame, dates: list[date]) -> FloatArray:
    """Demand ``(periods, series)`` in the order of ``series`` (every series has every date)."""
    window = frame.filter(pl.col("ds") >= dates[0]).sort(*KEYS, "ds")
    ordered = series.select(KEYS).join(window, on=KEYS, how="left", maintain_order="left")
    matrix: FloatArray = ordered["y"].to_numpy().astype(np.float64).reshape(series.height, len(dates)).T
    return matrix


def _train(config: TrainConfig, history: pl.DataFrame, fleet: Fleet) -> tuple[Path, pl.DataFrame]:
    """Train on ``history`` with ``config`` and sign the bundle as version 1; each series' backtest sigma."""
    from forecasting.training.pipeline import train, write_run

    started = time.monotonic()
    out = fleet.state_dir / "models" / f"{config.train.model_name}-v1"
    result = train(history, config)
    write_run(result, out, signing_key=fleet.keys["main"][0], version=1)
    fleet.timings.add("train", started)
    return out, backtest_sigma(result.backtest.cv, result.assignment, history)
