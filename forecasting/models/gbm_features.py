"""Features of the global gradient-boosting model, one computation for training and for the edge.

:func:`feature_block` reads, for each origin, only the values its features need (at most the last
:func:`lookback` periods of the series: the longest lag, window, or the season plus the centred
year-earlier window) and the calendar of the target dates, by array lookups into the series' rows (no
joins over the history). :func:`make_features` wraps it in a frame for training and backtests; the edge
(:func:`forecasting.models.onnx_model.forecast_global`) scores its matrix directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from forecasting.common.config import TrainSection

HOLIDAY_WEIGHT = 5.0
STEP = {"D": "1d", "W": "1w", "H": "1h"}
DEFAULT_LAGS = {"W": [1, 2, 4, 13, 26, 51, 52, 53, 104], "D": [1, 7, 14, 28, 364], "H": [1, 24, 48, 168]}
DEFAULT_SEASON = {"W": 52, "D": 7, "H": 24}
HOLIDAY_FEATURES = ["holiday", "holiday_prev", "holiday_next"]
FLAGS = ("is_holiday", "on_promo")


@dataclass(frozen=True)
class FeatureSpec:
    """Everything ``make_features`` needs besides the history (kept in the bundle as JSON params)."""

    freq: str
    horizon: int
    season_length: int
    lags: list[int]
    windows: list[int]
    static_columns: list[str] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)
    holiday: bool = False  # holiday flags of the target period and of the periods either side
    dynamic_columns: list[str] = field(default_factory=list)  # per-period covariates of the target date

    @property
    def feature_names(self) -> list[str]:
        """Model input columns, in order."""
        return [
            "h",
            *[f"lag_{lag}" for lag in self.lags],
            *[f"mean_{w}" for w in self.windows],
            "year_mean",
            "calendar",
            "calendar2",
            "category_code",
            "log_scale",
            *[f"static_{c}" for c in self.static_columns],
            *(HOLIDAY_FEATURES if self.holiday else []),
            *[f"exog_{c}" for c in self.dynamic_columns],
        ]

    def to_params(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {
            "freq": self.freq,
            "horizon": self.horizon,
            "season_length": self.season_length,
            "lags": self.lags,
            "windows": self.windows,
            "static_columns": self.static_columns,
            "categories": self.categories,
            "holiday": self.holiday,
            "dynamic_columns": self.dynamic_columns,
            "feature_names": self.feature_names,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_params`."""
        return cls(
            freq=str(params["freq"]),
            horizon=int(params["horizon"]),
            season_length=int(params["season_length"]),
            lags=[int(v) for v in params["lags"]],
            windows=[int(v) for v in params["windows"]],
            static_columns=[str(c) for c in params.get("static_columns", [])],
            categories={str(k): int(v) for k, v in params.get("categories", {}).items()},
            holiday=bool(params.get("holiday", False)),
            dynamic_columns=[str(c) for c in params.get("dynamic_columns", [])],
        )


def make_spec(frame: pl.DataFrame, cfg: TrainSection, freq: str, horizon: int) -> FeatureSpec:
    """Feature spec for ``frame`` from config (lags default per frequency). A numeric column constant in
    every series is static; any other numeric column (``[data] exogenous``, ``features_columns``) and the
    promotion flag are dynamic covariates of the target date; ``is_holiday`` adds the holiday flags."""
    season = cfg.season_length if cfg.season_length > 1 else DEFAULT_SEASON.get(freq, 1)
    lags = sorted(set(cfg.gbm_lags or DEFAULT_LAGS.get(freq, [1, season])))
    numeric = [
        c
        for c, t in frame.schema.items()
        if c not in {"store_id", "item_id", "category", "ds", "y", *FLAGS} and t.is_numeric()
    ]
    distinct = frame.group_by("store_id", "item_id").agg(pl.col(numeric).n_unique()) if numeric else None
    static = [c for c in numeric if distinct is not None and distinct.get_column(c).max() == 1]
    dynamic = [
        *(["on_promo"] if "on_promo" in frame.columns else []),
        *(c for c in numeric if c not in static),
    ]
    cats = sorted(frame["category"].unique().to_list())
    return FeatureSpec(
        freq=freq,
        horizon=horizon,
        season_length=season,
        lags=lags,
        windows=sorted({4, season} if season > 4 else {season, 2 * season}),
        static_columns=static,
        categories={c: i for i, c in enumerate(cats)},
        holiday="is_holiday" in frame.columns,
        dynamic_columns=dynamic,
    )


KEYS = ["store_id", "item_id"]
_SLICE_ROWS = 1 << 20

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SeriesIndex:
    """A history sorted by series and date: one contiguous block of rows per series.

    ``t`` (an origin's index into its series) is a row's position inside its block, so a gap in the
    dates counts as nothing: the row before is one period back.
    """

    frame: pl.DataFrame  # the history's rows, sorted by store_id, item_id, ds
    offsets: IntArray  # first row of each series, then the number of rows (n_series + 1 values)
    y: FloatArray  # frame["y"] as float64, NaN where missing

    @property
    def n_series(self) -> int:
        """Number of series."""
        return len(self.offsets) - 1

    @property
    def lengths(self) -> IntArray:
        """Rows of each series."""
        return np.diff(self.offsets)

    def keys(self) -> pl.DataFrame:
        """``store_id, item_id`` of each series, in order."""
        return self.frame.select(KEYS).gather(pl.Series(self.offsets[:-1]))


def index_series(history: pl.DataFrame) -> SeriesIndex:
    """Index ``history`` by series; a frame already sorted by series and date is used as it is."""
    frame = history
    offsets = _sorted_offsets(frame)
    if offsets is None:
        frame = history.sort([*KEYS, "ds"], maintain_order=True)
        offsets = _run_offsets(frame)
    y = frame.get_column("y").cast(pl.Float64).to_numpy()
    return SeriesIndex(frame=frame, offsets=offsets, y=np.asarray(y, dtype=np.float64))


def _run_offsets(frame: pl.DataFrame) -> IntArray:
    """Rows where a new run of equal keys begins, plus the row count (compared slice by slice, which keeps
    the work in cache)."""
    n = frame.height
    starts = [np.zeros(min(n, 1), dtype=np.int64)]
    for a in range(0, n, _SLICE_ROWS):
        lead = 1 if a else 0  # the slice's first row is compared with the row before it
        part = frame.slice(a - lead, _SLICE_ROWS + lead)
        changed = np.zeros(part.height - 1, dtype=bool)
        for k in KEYS:
            col = part.get_column(k)
            changed |= col.slice(1).ne_missing(col.slice(0, part.height - 1)).to_numpy()
        starts.append(np.flatnonzero(changed).astype(np.int64) + a + 1 - lead)
    return np.concatenate([*starts, np.array([n], dtype=np.int64)])


def _sorted_offsets(frame: pl.DataFrame) -> IntArray | None:
    """The series offsets of ``frame`` when it is sorted by series and date (None otherwise)."""
    if any(frame.get_column(c).null_count() for c in (*KEYS, "ds")):
        return None
    offsets = _run_offsets(frame)
    keys = frame.select(KEYS).gather(pl.Series(offsets[:-1]))
    if keys.height > 1:
        prev, cur = keys.slice(0, keys.height - 1), keys.slice(1)
        s_prev, s_cur = prev.get_column("store_id"), cur.get_column("store_id")
        i_prev, i_cur = prev.get_column("item_id"), cur.get_column("item_id")
        if not bool(((s_cur > s_prev) | ((s_cur == s_prev) & (i_cur > i_prev))).all()):
            return None
    ds = frame.get_column("ds").to_physical().to_numpy()
    backwards = np.flatnonzero(ds[1:] < ds[:-1]) + 1
    if len(backwards) and not np.isin(backwards, offsets[:-1]).all():
        return None
    return offsets


@dataclass(frozen=True)
class FeatureBlock:
    """Feature rows of some origins: one row per (origin, horizon), origin-major, horizon ascending."""

    x: npt.NDArray[np.float32]  # model inputs, columns of ``FeatureSpec.feature_names``, NaN = missing
    origin: IntArray  # row of the sorted history at each row's origin
    horizon: IntArray
    scale: FloatArray
    target_ds: pl.Series  # date each row forecasts
    target: IntArray | None  # row of the sorted history holding the target (``with_target`` only)


def level_scale(values: FloatArray, start: IntArray, pos: IntArray, season: int) -> FloatArray:
    """The level that scales a series at position ``pos`` (``start``: its first position): the mean absolute
    value of its last ``season`` periods up to ``pos``, plus 1 (so an all-zero series scales by 1)."""
    return _range_mean(values, np.maximum(start, pos - season + 1), pos, season, absolute=True) + 1.0


def _range_mean(
    values: FloatArray, first: IntArray, last: IntArray, width: int, *, absolute: bool = False
) -> FloatArray:
    """Mean of ``values[first..last]`` (inclusive, at most ``width`` values; of their absolute values with
    ``absolute``) ignoring NaN; NaN if none. Reads only those values, never the whole array."""
    total = np.zeros(len(first))
    count = np.zeros(len(first))
    for k in range(width):
        i = first + k
        ok = i <= last
        v = values[np.where(ok, i, first)]
        if absolute:
            v = np.abs(v)
        good = ok & ~np.isnan(v)
        total += np.where(good, v, 0.0)
        count += good
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def feature_block(
    index: SeriesIndex,
    spec: FeatureSpec,
    series: IntArray,
    t: IntArray,
    horizon: int,
    *,
    with_target: bool = False,
) -> FeatureBlock:
    """Feature rows for origins ``(series[i], t[i])`` and horizons ``1..horizon``.

    Every value is read back from the origin (lags, window means, scale, the year-earlier window) or is
    the calendar of the target date, so only the last ``lookback(spec)`` periods before an origin matter.
    With ``with_target``, rows whose target lies beyond the series are left out.
    """
    y = index.y
    start = index.offsets[:-1][series]
    last = index.offsets[1:][series] - 1
    pos = start + t
    s = spec.season_length
    steps = np.arange(1, horizon + 1, dtype=np.int64)
    row_origin = np.repeat(np.arange(len(pos), dtype=np.int64), horizon)
    h = np.tile(steps, len(pos))
    target: IntArray | None = None
    if with_target:
        keep = pos[row_origin] + h <= last[row_origin]
        row_origin, h = row_origin[keep], h[keep]
        target = pos[row_origin] + h
    scale_o = level_scale(y, start, pos, s)
    p, first, scale = pos[row_origin], start[row_origin], scale_o[row_origin]
    names = spec.feature_names
    x = np.empty((len(h), len(names)), dtype=np.float32)
    col = iter(range(len(names)))
    x[:, next(col)] = h
    for lag in spec.lags:
        i = p + h - lag
        ok = (h <= lag) & (i >= first)
        x[:, next(col)] = np.where(ok, y[np.where(ok, i, p)], np.nan) / scale
    for w in spec.windows:
        x[:, next(col)] = (_range_mean(y, np.maximum(start, pos - w + 1), pos, w) / scale_o)[row_origin]
    j = p + h - s
    year = np.full(len(h), np.nan)
    has = np.flatnonzero((h + 2 <= s) & (j >= first))
    if len(has):
        jj = j[has]
        year[has] = _range_mean(
            y, np.maximum(first[has], jj - 2), np.minimum(last[row_origin][has], jj + 2), 5
        )
    x[:, next(col)] = year / scale
    dates, cal = _target_calendar(index.frame.get_column("ds").gather(pl.Series(pos)), spec, row_origin, h)
    for values in cal:
        x[:, next(col)] = values
    at_origin = index.frame.select(_category(index.frame), *spec.static_columns).gather(pl.Series(pos))
    codes = at_origin.get_column("category").replace_strict(
        spec.categories, default=-1, return_dtype=pl.Float32
    )
    x[:, next(col)] = codes.to_numpy()[row_origin]
    x[:, next(col)] = np.log(scale_o)[row_origin]
    for c in spec.static_columns:
        x[:, next(col)] = at_origin.get_column(c).cast(pl.Float64).to_numpy()[row_origin]
    for driver in _dynamic_features(index, spec, p, h, last[row_origin], dates):
        x[:, next(col)] = driver
    return FeatureBlock(x=x, origin=p, horizon=h, scale=scale, target_ds=dates, target=target)


def _target_calendar(
    origin_ds: pl.Series, spec: FeatureSpec, row_origin: IntArray, h: IntArray
) -> tuple[pl.Series, list[npt.NDArray[np.float32]]]:
    """Target date of each row and its two calendar features, computed once per (origin date, h)."""
    missing = origin_ds.is_null().to_numpy()[row_origin]
    unique, inverse = np.unique(origin_ds.to_physical().fill_null(0).to_numpy(), return_inverse=True)
    horizon = int(h.max()) if len(h) else 1
    grid = pl.DataFrame(
        {
            "o": pl.Series(np.repeat(unique, horizon)).cast(origin_ds.dtype),
            "h": np.tile(np.arange(1, horizon + 1, dtype=np.int64), len(unique)),
        }
    )
    step = {"D": pl.duration(days=1), "W": pl.duration(weeks=1), "H": pl.duration(hours=1)}[spec.freq]
    ds = pl.col("ds")
    if spec.freq == "W":
        calendar = [ds.dt.week(), ds.dt.month()]
    elif spec.freq == "H":
        calendar = [ds.dt.hour(), ds.dt.weekday()]
    else:
        calendar = [ds.dt.weekday(), ds.dt.ordinal_day()]
    table = grid.select(ds=pl.col("o") + step * pl.col("h")).with_columns(
        c.cast(pl.Float32).alias(f"_c{k}") for k, c in enumerate(calendar)
    )
    at = inverse.reshape(-1)[row_origin] * horizon + h - 1
    target_ds = table.get_column("ds").gather(pl.Series(at))
    values = [table.get_column(f"_c{k}").to_numpy()[at] for k in range(len(calendar))]
    if missing.any():
        target_ds = pl.select(pl.when(pl.Series(missing)).then(None).otherwise(target_ds)).to_series()
        for v in values:
            v[missing] = np.nan
    return target_ds.alias("ds"), values


def _dynamic_features(
    index: SeriesIndex, spec: FeatureSpec, p: IntArray, h: IntArray, last: IntArray, dates: pl.Series
) -> list[FloatArray]:
    """Holiday flags (target period, the one before, the one after) and covariates of each row's target date.

    A value comes from the series' row of that date when there is one; otherwise a holiday flag is 0 and a
    covariate takes the series' last row when the date lies beyond it (the last known value carried
    forward), or the origin's row when the date falls in a gap of the series. Missing values are NaN.
    """
    if not spec.holiday and not spec.dynamic_columns:
        return []
    frame = index.frame
    ds = frame.get_column("ds").to_physical().to_numpy()
    step = {"D": pl.duration(days=1), "W": pl.duration(weeks=1), "H": pl.duration(hours=1)}[spec.freq]

    def find(offset: int) -> tuple[IntArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Row of the date ``offset`` periods from the target, whether the row holds it, whether the date
        lies beyond the series."""
        want_s = dates.to_frame("ds").select(pl.col("ds") + step * offset).to_series()
        null = want_s.is_null().to_numpy()
        want = want_s.to_physical().fill_null(0).to_numpy()
        r = p + h + offset
        inside = r <= last
        row = np.where(inside, r, last)
        found = inside & (ds[row] == want) & ~null
        return row, found, ~null & (want > ds[last])

    out: list[FloatArray] = []
    if spec.holiday:
        has = "is_holiday" in frame.columns
        for offset in (0, -1, 1):
            row, found, _ = find(offset)
            flag = np.zeros(len(row))
            if has and found.any():
                got = frame.get_column("is_holiday").gather(pl.Series(row[found])).cast(pl.Float64)
                flag[found] = got.fill_null(0.0).to_numpy()
            out.append(flag)
    if spec.dynamic_columns:
        row, found, beyond = find(0)
        source = np.where(found, row, np.where(beyond, last, p))
        at = pl.Series(source)
        for c in spec.dynamic_columns:
            if c in frame.columns:
                values = frame.get_column(c).gather(at).cast(pl.Float64).fill_null(np.nan)
                out.append(values.to_numpy().astype(np.float64))
            else:
                out.append(np.full(len(source), np.nan))
    return out


def _category(frame: pl.DataFrame) -> pl.Expr:
    if "category" in frame.columns:
        return pl.col("category").cast(pl.Utf8)
    return pl.lit(None, dtype=pl.Utf8).alias("category")


def lookback(spec: FeatureSpec) -> int:
    """Periods before (and including) an origin that its features read: lags, windows, the scale and the
    centered year-earlier window."""
    return max([*spec.lags, *spec.windows, spec.season_length + 2, 1])


def make_features(
    history: pl.DataFrame,
    spec: FeatureSpec,
    *,
    origins: pl.DataFrame | None = None,
    with_target: bool = False,
) -> pl.DataFrame:
    """Feature rows for every (series, origin, horizon 1..H), computed by :func:`feature_block`.

    ``origins``: ``store_id, item_id, t`` (0-based index into the series' sorted history); default the last
    date of every series (what the edge scores). Output: ``store_id, item_id, category, origin_ds, ds, h,
    scale``, the feature columns of ``spec.feature_names`` (Float32, null where missing) and, with
    ``with_target``, ``y_scaled`` and ``weight`` (rows whose target lies beyond the history are dropped then).
    """
    index = index_series(history)
    series, t = _origin_positions(index, origins)
    block = feature_block(index, spec, series, t, spec.horizon, with_target=with_target)
    frame = index.frame
    at_origin = pl.Series(block.origin)
    rows = (
        frame.select(*KEYS, _category(frame))
        .gather(at_origin)
        .with_columns(
            frame.get_column("ds").gather(at_origin).alias("origin_ds"),
            block.target_ds.alias("ds"),
            pl.Series("horizon", block.horizon, dtype=pl.Int64),
            pl.Series("scale", block.scale, dtype=pl.Float64),
        )
    )
    feats = pl.from_numpy(block.x, schema=dict.fromkeys(spec.feature_names, pl.Float32)).fill_nan(None)
    out = pl.concat([rows, feats], how="horizontal")
    if block.target is None:
        return out
    at = pl.Series(block.target)
    target = frame.get_column("y").gather(at)
    holiday = (
        frame.get_column("is_holiday").gather(at).fill_null(value=False).to_numpy()
        if "is_holiday" in frame.columns
        else np.zeros(len(at), dtype=bool)
    )
    scale = out.get_column("scale")
    return out.with_columns(
        (target.cast(pl.Float64) / scale).fill_nan(None).alias("y_scaled"),
        (scale * pl.Series(np.where(holiday, HOLIDAY_WEIGHT, 1.0))).alias("weight"),
        target.alias("y"),
    )


def last_observed(index: SeriesIndex) -> IntArray:
    """Index ``t`` of each series' last row with a known ``y`` (the forecast origin); rows after it (``y``
    missing) only carry the drivers of future dates. A series without any known ``y`` ends at its last row."""
    rows = np.where(np.isnan(index.y), -1, np.arange(len(index.y), dtype=np.int64))
    upto = np.maximum.accumulate(rows) if len(rows) else rows
    start, end = index.offsets[:-1], index.offsets[1:] - 1
    at = upto[np.maximum(end, 0)] if len(upto) else np.zeros(len(start), dtype=np.int64)
    return np.where(at >= start, at - start, end - start).astype(np.int64)


def _origin_positions(index: SeriesIndex, origins: pl.DataFrame | None) -> tuple[IntArray, IntArray]:
    """Series number and index ``t`` of each origin inside its series, ordered by series and ``t``."""
    lengths = index.lengths
    if origins is None:
        keep = np.flatnonzero(lengths > 0).astype(np.int64)
        return keep, last_observed(index)[keep]
    found = (
        origins.select(*KEYS, pl.col("t").cast(pl.Int64))
        .drop_nulls()
        .join(index.keys().with_row_index("_series"), on=KEYS, how="inner")
    )
    series = found.get_column("_series").to_numpy().astype(np.int64)
    t = found.get_column("t").to_numpy().astype(np.int64)
    inside = (t >= 0) & (t < lengths[series])
    series, t = series[inside], t[inside]
    order = np.lexsort((t, series))
    return series[order], t[order]


def training_origins(
    history: pl.DataFrame, spec: FeatureSpec, *, last_t: pl.DataFrame | None = None, count: int = 0
) -> pl.DataFrame:
    """Origins used for training: the last ``count`` (0: ``season + horizon - 1``) indices of each series
    before its last, not before half a season of history (``last_t`` caps the target index per series:
    ``store_id, item_id, t_max``)."""
    keys = ["store_id", "item_id"]
    n = history.group_by(keys).agg(pl.len().cast(pl.Int64).alias("n"))
    if last_t is not None:
        n = n.join(last_t, on=keys).with_columns(pl.min_horizontal("n", pl.col("t_max") + 1).alias("n"))
    span = count + 1 if count else spec.season_length + spec.horizon
    first_allowed = spec.season_length // 2
    origins = n.select(
        *keys, pl.int_ranges(pl.max_horizontal(pl.col("n") - span, first_allowed), pl.col("n") - 1).alias("t")
    )
    return origins.explode("t").drop_nulls("t")
