"""The replenishment replay, step by step: train on the history before the window, start a real server and
one agent process per store, then review, order and sell period by period; replay the classic policy and
perfect foresight over the same demand; report."""

from __future__ import annotations

import secrets
import time
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
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
from shelfcast.replenish.options import ReplenishOptions, check_options
from shelfcast.replenish.report import ReplenishReport, build_report, write_ledgers
from shelfcast.replenish.store_system import Policy, StoreSystem
from shelfcast.simulate.options import SimulationError, SimulationOptions

if TYPE_CHECKING:
    from forecasting.common.config import TrainConfig
    from shelfcast.simulate.clock import Clock
    from shelfcast.simulate.fleet import Agent, Fleet
    from shelfcast.simulate.report import Timings

KEYS = ["store_id", "item_id"]


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
    from forecasting.data.loading import load_extract
    from forecasting.data.validation import require_usable, validate, write_reports

    options.progress(f"loading {options.data_path.name}")
    raw = load_extract(options.data_path, config.data)
    stores = sorted(raw["store_id"].unique().to_list())[: options.stores]
    raw = raw.filter(pl.col("store_id").is_in(stores))  # the chosen stores only are validated
    loaded = validate(raw, config.data, source=options.data_path.name)
    write_reports(loaded, options.state_dir / "validation")
    require_usable(loaded)
    frame = loaded.frame.select("store_id", "item_id", "category", "ds", pl.col("y").cast(pl.Float64))
    if options.items:
        firsts = (
            frame.select(KEYS)
            .unique()
            .sort(KEYS)
            .group_by("store_id", maintain_order=True)
            .head(options.items)
        )
        frame = frame.join(firsts, on=KEYS, how="semi")
    dates = sorted(frame["ds"].unique().to_list())
    if len(dates) <= options.periods:
        raise SimulationError(
            f"{options.data_path.name}: {len(dates)} dates; --periods {options.periods} leaves no history"
        )
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

    series = frame.select(*KEYS, "category").unique(KEYS).sort(KEYS)
    demand = _dense(frame, series, dates)
    orders = AgentOrders(options, fleet, Clock(data, fleet, timings), series, dates)
    agents = run_ledger(demand, options.lead_time, options.review_period, orders)
    timings.add("replay", started)
    options.progress("replaying the classic policy and perfect foresight over the same demand")
    sigma_vec = (
        series.join(sigma, on=KEYS, how="left", maintain_order="left")["sigma"].fill_null(0.0).to_numpy()
    )

    def play(levels: FloatArray) -> Ledger:
        return run_ledger(demand, options.lead_time, options.review_period, order_up_to_rule(levels))

    cover = options.lead_time + options.review_period
    classic = ladder(orders.forecast_totals, sigma_vec, cover, play)
    nominal = play(classic_levels(orders.forecast_totals, sigma_vec, options.service_level, cover))
    perfect = play(perfect_foresight_levels(demand, options.lead_time, options.review_period))
    ledgers = options.state_dir / "ledgers.parquet"
    write_ledgers(
        ledgers, series, dates, {"agents": agents, "classic": nominal, "perfect_foresight": perfect}
    )
    report = build_report(
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
    (options.state_dir / "report.json").write_bytes(msgspec.json.encode(report))
    return report


class AgentOrders:
    """The agents' order rule. At each review the previous period's sales first reach every store (the
    agents ingest them and score); then each store's inventory system posts its items' positions and
    orders what the agent proposes. The proposals' forecast totals are kept for the classic policy."""

    def __init__(
        self, options: ReplenishOptions, fleet: Fleet, clock: Clock, series: pl.DataFrame, dates: list[date]
    ) -> None:
        self.options = options
        self.fleet = fleet
        self.clock = clock
        self.dates = dates
        self.items = series["item_id"].to_list()
        self.per_store = {s: np.flatnonzero((series["store_id"] == s).to_numpy()) for s in fleet.agents}
        self.policy = Policy(options.lead_time, options.review_period, options.service_level)
        self.step = dates[1] - dates[0] if len(dates) > 1 else timedelta(days=1)
        self.forecast_totals = np.zeros((len(dates), series.height))

    def __call__(self, position: Position) -> FloatArray:
        t = position.period
        if t:
            self.clock.play_period()
        day = self.dates[0] + t * self.step
        self.options.progress(f"period {t + 1}/{len(self.dates)} ({day}): review at every store")
        due = [day + (k + 1) * self.step for k in range(self.options.lead_time)]
        order = np.zeros(len(self.items))

        def review(agent: Agent) -> None:
            rows = self.per_store[agent.store_id]
            system = StoreSystem(
                agent.url, self.fleet.options.agent_read_token, self.fleet.options.agent_operator_token,
                self.options.period_timeout_seconds,
            )  # fmt: skip
            answer = system.review(
                [self.items[i] for i in rows], position.on_hand[rows], position.open_orders[rows], due,
                self.policy, day,
            )  # fmt: skip
            order[rows] = answer.quantity
            self.forecast_totals[t, rows] = answer.demand_mean

        self.fleet.each_agent(review)
        return order


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
