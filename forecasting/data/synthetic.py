"""Synthetic retail sales: a seeded, vectorised generator of the canonical long frame.

``generate(stores, items, days)`` returns one row per store, item and period with the columns
``store_id, item_id, category, ds, y, is_holiday, on_promo``. The demand of a series is the product of

- a category level (units per day per item in a medium store), an item factor and a store-size multiplier;
- a weekly profile (weekend peaks, stronger for fresh food than for household goods);
- a yearly cycle whose amplitude and peak day depend on the category (beverages peak in summer, bakery at
  Christmas);
- a log-linear trend per series (item trend plus a small store tweak);
- holidays (New Year, Easter, Memorial Day, Independence Day, Labor Day, Thanksgiving, Christmas): shopping
  before the day, a dip (or a lift) on the day, scaled by the category's sensitivity;
- promotions planned centrally per item, a week at a time, lifting demand by an item-specific factor;
- day-to-day noise and counting noise: whole units with the mean and spread of Poisson-log-normal counts.

About a quarter of the items are intermittent: most days sell nothing, and a day that sells sells a lump of
``1 + Poisson`` units. Rarely a day is net negative (returns exceed sales). Ids are ``S001..`` and
``I00001..``; an item's category depends only on its number, so ``I00042`` is in the same category for
every seed and every size.

Everything is computed with numpy on blocks of series (no Python loop per series or per row). Block random
streams are derived from ``(seed, block)``, so the same arguments always give the same frame, and writing it
gives the same Parquet bytes (with the same numpy and Polars builds on the same kind of CPU: vectorised
``exp``/``log`` may differ in the last bit between instruction sets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

Freq = Literal["D", "W"]

_EPOCH = date(1970, 1, 1)
# 1970-01-01 was a Thursday: (days since epoch + 3) % 7 is the weekday with Monday = 0.
_WEEKDAY_SHIFT = 3
# Elements per block of series x days: large enough to amortise numpy call overhead, small enough for cache.
_BLOCK_ELEMENTS = 1 << 18
_INTERMITTENT_SHARE = 0.25
_PROMO_ITEM_SHARE = 0.5
_RETURN_RATE = 0.0008
# Weekday profile of a grocery store (Monday .. Sunday); categories scale its amplitude.
_WEEKLY_BASE = np.array([0.86, 0.82, 0.88, 0.95, 1.12, 1.30, 1.07])
# Streams of the seed sequence: item attributes, store attributes, blocks of series.
_ITEM_STREAM, _STORE_STREAM, _BLOCK_STREAM = 1, 2, 3


@dataclass(frozen=True)
class Category:
    """A product category and the shape of its demand."""

    name: str
    share: float  # share of the assortment (items)
    level: float  # mean units per day per item in a medium store
    weekly_amplitude: float  # 1 = the grocery weekday profile, 0 = flat
    yearly_amplitude: float
    yearly_peak_doy: int  # day of year of the yearly peak
    holiday_sensitivity: float  # exponent applied to the holiday factors
    noise_sigma: float  # log-normal day-to-day noise


CATEGORIES: tuple[Category, ...] = (
    Category("produce", 0.14, 18.0, 1.0, 0.15, 190, 1.0, 0.20),
    Category("dairy", 0.10, 14.0, 0.8, 0.05, 15, 0.8, 0.15),
    Category("bakery", 0.08, 10.0, 1.2, 0.12, 355, 1.2, 0.25),
    Category("meat_seafood", 0.08, 6.0, 1.3, 0.18, 185, 1.3, 0.25),
    Category("frozen", 0.09, 5.0, 0.7, 0.25, 200, 0.6, 0.25),
    Category("beverages", 0.11, 12.0, 1.1, 0.30, 200, 1.0, 0.20),
    Category("snacks", 0.11, 8.0, 1.2, 0.10, 35, 0.9, 0.25),
    Category("pantry", 0.12, 4.0, 0.6, 0.12, 340, 0.7, 0.20),
    Category("household", 0.07, 2.5, 0.4, 0.08, 100, 0.3, 0.30),
    Category("personal_care", 0.05, 1.5, 0.3, 0.05, 170, 0.2, 0.30),
    Category("baby", 0.02, 1.0, 0.2, 0.03, 60, 0.2, 0.35),
    Category("pet", 0.03, 1.2, 0.3, 0.04, 60, 0.2, 0.30),
)

# Store sizes: multiplier of demand and share of stores.
_STORE_SIZES = np.array([0.5, 1.0, 1.8])
_STORE_SIZE_SHARES = np.array([0.3, 0.5, 0.2])


@dataclass(frozen=True)
class Holiday:
    """A holiday and its effect on demand (a category's sensitivity scales the factors)."""

    day: date
    day_factor: float  # demand on the day itself
    pre_factor: float  # demand on each of the ``pre_days`` before it
    pre_days: int


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    r = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * r) // 451
    month, day = divmod(h + r - 7 * m + 114, 31)
    return date(year, month, day + 1)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th given weekday (Monday = 0) of a month; n = -1 is the last one."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def holidays(year: int) -> list[Holiday]:
    """The holidays of one year with their effect on demand."""
    return [
        Holiday(date(year, 1, 1), 0.7, 1.3, 1),
        Holiday(_easter(year), 0.6, 1.35, 2),
        Holiday(_nth_weekday(year, 5, 0, -1), 1.25, 1.15, 2),  # Memorial Day
        Holiday(date(year, 7, 4), 1.2, 1.4, 2),
        Holiday(_nth_weekday(year, 9, 0, 1), 1.2, 1.15, 2),  # Labor Day
        Holiday(_nth_weekday(year, 11, 3, 4), 0.5, 1.7, 3),  # Thanksgiving
        Holiday(date(year, 12, 25), 0.35, 1.6, 3),
    ]


@dataclass(frozen=True)
class _Calendar:
    """The daily grid the demand is simulated on."""

    day0: int  # days since the epoch of the first day
    n_days: int
    weekday: npt.NDArray[np.int64]
    years: npt.NDArray[np.float32]  # time since the first day, in years
    is_holiday: npt.NDArray[np.bool_]
    log_category_day: npt.NDArray[np.float32]  # (n_categories, n_days) log of seasonal x holiday multiplier


def _calendar(first: date, n_days: int) -> _Calendar:
    day0 = (first - _EPOCH).days
    days = np.arange(day0, day0 + n_days, dtype=np.int64)
    weekday = (days + _WEEKDAY_SHIFT) % 7
    dates = days.astype("datetime64[D]")
    doy = (dates - dates.astype("datetime64[Y]")).astype(np.int64) + 1

    holiday_factor = np.ones(n_days)
    is_holiday = np.zeros(n_days, dtype=np.bool_)
    last = first + timedelta(days=n_days - 1)
    for year in range(first.year, last.year + 2):
        for hol in holidays(year):
            idx = (hol.day - first).days
            for back in range(1, hol.pre_days + 1):
                if 0 <= idx - back < n_days:
                    holiday_factor[idx - back] *= hol.pre_factor
            if 0 <= idx < n_days:
                holiday_factor[idx] *= hol.day_factor
                is_holiday[idx] = True

    cats = CATEGORIES
    weekly_amp = np.array([c.weekly_amplitude for c in cats])[:, None]
    yearly_amp = np.array([c.yearly_amplitude for c in cats])[:, None]
    peak = np.array([c.yearly_peak_doy for c in cats])[:, None]
    sensitivity = np.array([c.holiday_sensitivity for c in cats])[:, None]
    weekly = 1.0 + weekly_amp * (_WEEKLY_BASE[weekday][None, :] - 1.0)
    yearly = 1.0 + yearly_amp * np.cos(2.0 * math.pi * (doy[None, :] - peak) / 365.25)
    log_category_day = np.log(weekly) + np.log(yearly) + sensitivity * np.log(holiday_factor)[None, :]
    return _Calendar(
        day0=day0,
        n_days=n_days,
        weekday=weekday,
        years=((days - day0) / 365.25).astype(np.float32),
        is_holiday=is_holiday,
        log_category_day=log_category_day.astype(np.float32),
    )


def item_categories(item_numbers: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Index into ``CATEGORIES`` of items numbered from 1: fixed per number, spread by the category shares.

    Uses the golden-ratio sequence ``frac(n * phi)``, which fills [0, 1) evenly, against the cumulative
    shares.
    """
    shares = np.array([c.share for c in CATEGORIES])
    cumulative = np.cumsum(shares / shares.sum())
    u = np.modf(item_numbers * ((math.sqrt(5.0) - 1.0) / 2.0))[0]
    index = np.asarray(np.searchsorted(cumulative, u, side="right"), dtype=np.int64)
    return np.minimum(index, len(CATEGORIES) - 1)


def _ids(prefix: str, n: int, width: int) -> pl.Series:
    return pl.select(
        pl.concat_str(pl.lit(prefix), pl.int_range(1, n + 1).cast(pl.String).str.zfill(width))
    ).to_series()


def _generator(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


@dataclass(frozen=True)
class _Items:
    """Item attributes, shared by every store (promotions are planned centrally)."""

    category: npt.NDArray[np.int64]
    intermittent: npt.NDArray[np.bool_]
    level: npt.NDArray[np.float64]  # units per day (intermittent: expected selling days per day)
    lump: npt.NDArray[np.float64]  # an intermittent sale is 1 + Poisson(lump) units
    slope: npt.NDArray[np.float64]  # log-demand per year
    promo_lift: npt.NDArray[np.float64]
    promo_week: npt.NDArray[np.bool_]  # (items, calendar weeks touched by the grid)
    promo_day: npt.NDArray[np.bool_]  # (items, days); promotions run Monday to Sunday


def _items(rng: np.random.Generator, items: int, cal: _Calendar) -> _Items:
    category = item_categories(np.arange(1, items + 1, dtype=np.int64))
    cat_level = np.array([c.level for c in CATEGORIES])
    intermittent = rng.random(items) < _INTERMITTENT_SHARE
    level = np.where(
        intermittent,
        rng.uniform(0.03, 0.35, items),
        cat_level[category] * rng.lognormal(-0.18, 0.6, items),
    )
    lump = rng.uniform(0.0, 2.0, items)
    slope = rng.normal(0.0, 0.12, items)
    promo_rate = np.where(rng.random(items) < _PROMO_ITEM_SHARE, rng.uniform(0.04, 0.15, items), 0.0)
    promo_lift = rng.uniform(1.2, 2.5, items)
    # Calendar weeks (Monday to Sunday) touched by the grid; with freq="W" they are exactly the buckets.
    week_of_day = (np.arange(cal.n_days) + cal.weekday[0]) // 7
    promo_week = rng.random((items, int(week_of_day[-1]) + 1)) < promo_rate[:, None]
    return _Items(
        category=category,
        intermittent=intermittent,
        level=level,
        lump=lump,
        slope=slope,
        promo_lift=promo_lift,
        promo_week=promo_week,
        promo_day=promo_week[:, week_of_day],
    )


def generate(
    stores: int,
    items: int,
    days: int,
    freq: Freq = "D",
    seed: int = 0,
    start: date = date(2023, 1, 1),
) -> pl.DataFrame:
    """A canonical sales frame for ``stores`` x ``items`` series over ``days`` days.

    ``freq="D"``: one row per day from ``start``. ``freq="W"``: ``days // 7`` (at least 1) weekly buckets,
    each the sum of seven days, labelled by its Monday (the first Monday on or after ``start``).
    Rows are sorted by ``store_id, item_id, ds``.
    """
    if stores < 1 or items < 1 or days < 1:
        raise ValueError(f"stores, items and days must be >= 1 (got {stores}, {items}, {days})")
    if freq not in ("D", "W"):
        raise ValueError(f"freq must be 'D' or 'W' (got {freq!r})")
    weekly = freq == "W"
    if weekly:
        first = start + timedelta(days=(7 - start.weekday()) % 7)
        n_out = max(1, days // 7)
        n_days = 7 * n_out
    else:
        first, n_days, n_out = start, days, days
    cal = _calendar(first, n_days)
    item = _items(_generator(seed, _ITEM_STREAM), items, cal)

    rng = _generator(seed, _STORE_STREAM)
    store_size = _STORE_SIZES[rng.choice(len(_STORE_SIZES), stores, p=_STORE_SIZE_SHARES)]
    store_size = store_size * rng.lognormal(0.0, 0.1, stores)
    store_slope = rng.normal(0.0, 0.04, stores)

    # Series attributes (store-major order: series k is store k // items, item k % items).
    n_series = stores * items
    s_store = np.repeat(np.arange(stores), items)
    s_item = np.tile(np.arange(items), stores)
    s_level = item.level[s_item] * store_size[s_store]
    s_slope = item.slope[s_item] + store_slope[s_store]
    s_cat = item.category[s_item]
    s_sigma = np.array([c.noise_sigma for c in CATEGORIES])[s_cat]

    y = np.empty((n_series, n_out), dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // n_days)
    for number, lo in enumerate(range(0, n_series, block)):
        rows = slice(lo, min(lo + block, n_series))
        y[rows] = _simulate_block(
            _generator(seed, _BLOCK_STREAM, number),
            cal,
            level=s_level[rows],
            slope=s_slope[rows],
            cat=s_cat[rows],
            sigma=s_sigma[rows],
            is_intermittent=item.intermittent[s_item[rows]],
            lump=item.lump[s_item[rows]],
            promo=item.promo_day[s_item[rows]],
            promo_lift=item.promo_lift[s_item[rows]],
            weekly=weekly,
        )

    step = 7 if weekly else 1
    holiday_out = cal.is_holiday.reshape(n_out, 7).any(axis=1) if weekly else cal.is_holiday
    promo_out = item.promo_week if weekly else item.promo_day

    # Rows: store-major, then item, then ds; row r is store r // (items * n_out), item r // n_out % items.
    row = pl.int_range(n_series * n_out, dtype=pl.UInt32)
    item_of_row = row // n_out % items
    item_category = pl.Series([c.name for c in CATEGORIES]).gather(item.category)
    keys = pl.select(
        store_id=pl.lit(_ids("S", stores, 3)).gather(row // (items * n_out)),
        item_id=pl.lit(_ids("I", items, 5)).gather(item_of_row),
        category=pl.lit(item_category).gather(item_of_row),
        ds=(pl.lit(cal.day0, dtype=pl.Int32) + (row % n_out * step).cast(pl.Int32)).cast(pl.Date),
    )
    return keys.with_columns(
        y=pl.Series(y.reshape(-1)),
        is_holiday=pl.Series(np.tile(holiday_out, n_series)),
        on_promo=pl.Series(np.tile(promo_out.reshape(-1), stores)),
    )


def _simulate_block(
    rng: np.random.Generator,
    cal: _Calendar,
    *,
    level: npt.NDArray[np.float64],
    slope: npt.NDArray[np.float64],
    cat: npt.NDArray[np.int64],
    sigma: npt.NDArray[np.float64],
    is_intermittent: npt.NDArray[np.bool_],
    lump: npt.NDArray[np.float64],
    promo: npt.NDArray[np.bool_],
    promo_lift: npt.NDArray[np.float64],
    weekly: bool,
) -> npt.NDArray[np.float64]:
    """Sales of a block of series over the daily grid (summed to weeks when ``weekly``).

    Regular series: the expected demand ``m`` (level x season x holidays x trend x promotion) times log-normal
    noise whose variance matches a Poisson-log-normal count (``sigma^2`` of day-to-day noise plus ``1/m`` of
    counting noise), stochastically rounded to whole units: the mean is exactly ``m`` and the spread is that
    of over-dispersed counts, at a fraction of the cost of drawing Poisson variates.
    Intermittent series: a day sells with probability ``1 - exp(-m)``, and then ``1 + Poisson(lump)`` units.
    """
    n, t = level.shape[0], cal.n_days
    f32 = np.float32  # float32 arithmetic: SIMD exp/log, ample precision for unit counts
    log_m = cal.log_category_day[cat]
    log_m += np.log(level).astype(f32)[:, None]
    log_m += slope.astype(f32)[:, None] * cal.years[None, :]
    np.add(log_m, np.log(promo_lift).astype(f32)[:, None], out=log_m, where=promo)

    sales = np.empty((n, t), dtype=np.float64)
    regular = ~is_intermittent
    if regular.any():
        lm = log_m[regular] if not regular.all() else log_m
        s2 = np.exp(-lm)
        s2 += np.exp(sigma[regular] ** 2).astype(f32)[:, None]
        np.log(s2, out=s2)
        x = rng.standard_normal(lm.shape, dtype=f32)
        x *= np.sqrt(s2)
        x += lm
        s2 *= f32(0.5)
        x -= s2
        np.exp(x, out=x)
        x += rng.random(lm.shape, dtype=f32)
        sales[regular] = np.floor(x, out=x)
    if is_intermittent.any():
        m = np.exp(log_m[is_intermittent]).astype(np.float64)
        sells = rng.random(m.shape) < -np.expm1(-m)
        lumps = np.broadcast_to(lump[is_intermittent][:, None], m.shape)[sells]
        sold = np.zeros(m.shape)
        sold[sells] = 1.0 + rng.poisson(lumps)
        sales[is_intermittent] = sold

    if weekly:
        sales = sales.reshape(n, t // 7, 7).sum(axis=2)
    # Rare net returns: a period whose returns exceed its sales.
    flat = sales.reshape(-1)
    n_returns = int(rng.binomial(flat.size, _RETURN_RATE))
    if n_returns:
        where = rng.integers(0, flat.size, n_returns)
        flat[where] = -(1.0 + rng.poisson(0.7, n_returns))
    return sales
