"""Where a simulation's sales come from: Walmart's weekly file or seeded synthetic stores, as per-store
histories and the periods the replay plays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from shelfcast.simulate.options import SimulationError, SimulationOptions

if TYPE_CHECKING:
    import polars as pl


@dataclass
class FleetData:
    """The canonical sales of every store, the store attributes, and where the replay begins."""

    frame: pl.DataFrame  # store_id, item_id, category, ds, y
    attributes: dict[str, dict[str, str]]  # store -> type, region, size
    periods: list[date]  # replayed dates, in order
    freq: str
    season_length: int

    @property
    def history(self) -> pl.DataFrame:
        import polars as pl

        return self.frame.filter(pl.col("ds") < self.periods[0])

    def period(self, index: int) -> pl.DataFrame:
        import polars as pl

        return self.frame.filter(pl.col("ds") == self.periods[index])

    @property
    def store_ids(self) -> list[str]:
        return sorted(self.attributes)


def load_fleet(options: SimulationOptions) -> FleetData:
    """The fleet's sales from the options' source, the replayed periods with the options' noise."""
    o = options
    if o.source == "walmart":
        if o.data_path is None:
            raise SimulationError("the walmart source needs data_path (the folder with train.csv.gz)")
        data = load_walmart(o.data_path, stores=o.stores, departments=o.departments, periods=o.periods)
    else:
        data = synthetic_fleet(
            stores=o.stores or 12, items=o.items, freq=o.freq, history_periods=o.history_periods,
            periods=o.periods, seed=o.seed, category_groups=o.category_groups,
        )  # fmt: skip
    return with_replay_noise(data, o.replay_noise, o.seed)


def load_walmart(
    folder: Path, *, stores: int | None, departments: int | list[str], periods: int
) -> FleetData:
    """Walmart weekly sales: store ``W01..W45``, department = item = category, stores.csv Type and Size.

    ``departments``: a count picks the lowest-numbered departments with a complete history in every
    chosen store (no gaps, no missing weeks), or a list names them. Type becomes the store type, Size a
    size band (small/medium/large terciles); every store is in region ``us``.
    """
    import polars as pl

    from forecasting.data.loading import read_table

    raw = read_table(folder / "train.csv.gz")
    frame = raw.select(
        pl.format("W{}", pl.col("Store").cast(pl.Int64).cast(pl.Utf8).str.zfill(2)).alias("store_id"),
        pl.col("Dept").cast(pl.Int64).cast(pl.Utf8).alias("item_id"),
        pl.col("Dept").cast(pl.Int64).cast(pl.Utf8).alias("category"),
        pl.col("Date").cast(pl.Utf8).str.to_date("%Y-%m-%d").alias("ds"),
        pl.col("Weekly_Sales").cast(pl.Float64).alias("y"),
    )
    chosen = sorted(frame["store_id"].unique().to_list())[: stores or None]
    frame = frame.filter(pl.col("store_id").is_in(chosen))
    weeks = frame["ds"].n_unique()
    if isinstance(departments, int):
        complete = (
            frame.group_by("item_id")
            .agg(pl.len().alias("rows"), pl.col("store_id").n_unique().alias("stores"))
            .filter((pl.col("rows") == weeks * len(chosen)) & (pl.col("stores") == len(chosen)))
            .sort(pl.col("item_id").cast(pl.Int64))
        )
        depts = complete["item_id"].to_list()[:departments]
    else:
        depts = [str(d) for d in departments]
    if not depts:
        raise SimulationError("no Walmart department has a complete history in the chosen stores")
    frame = frame.filter(pl.col("item_id").is_in(depts)).sort("store_id", "item_id", "ds")
    info = read_table(folder / "stores.csv").select(
        pl.format("W{}", pl.col("Store").cast(pl.Utf8).str.strip_chars().str.zfill(2)).alias("store_id"),
        pl.col("Type").cast(pl.Utf8).str.strip_chars().alias("type"),
        pl.col("Size").cast(pl.Utf8).str.strip_chars().cast(pl.Int64).alias("size"),
    )
    info = info.filter(pl.col("store_id").is_in(chosen))
    low, high = info["size"].quantile(1 / 3), info["size"].quantile(2 / 3)
    attributes = {
        r["store_id"]: {
            "type": r["type"],
            "region": "us",
            "size": "small" if r["size"] <= low else ("medium" if r["size"] <= high else "large"),
        }
        for r in info.iter_rows(named=True)
    }
    dates = sorted(frame["ds"].unique().to_list())
    return FleetData(frame, attributes, dates[-periods:], "W", 52)


def synthetic_fleet(
    *,
    stores: int,
    items: int,
    freq: Literal["D", "W"],
    history_periods: int,
    periods: int,
    seed: int,
    category_groups: dict[str, str] | None = None,
) -> FleetData:
    """Seeded synthetic stores (``forecasting.data.synthetic``) ending before today; type by size, two
    regions."""
    import polars as pl

    from forecasting.data.synthetic import generate

    step = 7 if freq == "W" else 1
    n = history_periods + periods
    today = datetime.now().astimezone().date()
    start = today - timedelta(days=step * (n + 2))
    frame = generate(stores=stores, items=items, days=n * step, freq=freq, seed=seed, start=start)
    frame = frame.select("store_id", "item_id", "category", "ds", "y").sort("store_id", "item_id", "ds")
    if category_groups:  # e.g. departments made of several categories: more series per reported group
        frame = frame.with_columns(pl.col("category").replace(category_groups))
    # Store type by size (like a retailer's formats): the larger half of the stores by mean sales are
    # supercenters, the others markets; regions alternate. Controls of the same type are then alike.
    volume = frame.group_by("store_id").agg(pl.col("y").mean().alias("v")).sort("v", descending=True)
    ranked = volume["store_id"].to_list()
    attributes = {
        sid: {
            "type": "supercenter" if rank < (len(ranked) + 1) // 2 else "market",
            "region": ("north", "south")[int(sid.lstrip("S")) % 2],
            "size": "large" if rank < (len(ranked) + 1) // 2 else "small",
        }
        for rank, sid in enumerate(ranked)
    }
    dates = sorted(frame["ds"].unique().to_list())
    return FleetData(frame, attributes, dates[-periods:], freq, 52 if freq == "W" else 7)


def with_replay_noise(data: FleetData, noise: float, seed: int) -> FleetData:
    """The fleet's replayed periods times lognormal noise (mean 1, coefficient of variation ``noise``).

    Each seed gives the same history and another draw of the weeks the rollouts see, so seeded replays
    differ the way one season differs from another; 0 keeps the data as it is.
    """
    if noise <= 0:
        return data
    import numpy as np
    import polars as pl

    sigma = float(np.sqrt(np.log1p(noise**2)))
    replayed = data.frame.select((pl.col("ds") >= data.periods[0]).alias("r"))["r"].to_numpy()
    rng = np.random.default_rng(seed)
    factor = np.where(replayed, np.exp(rng.normal(-(sigma**2) / 2, sigma, data.frame.height)), 1.0)
    frame = data.frame.with_columns(pl.col("y") * pl.Series(factor))
    return FleetData(frame, data.attributes, data.periods, data.freq, data.season_length)
