"""The global gradient-boosting model: one LightGBM over every series, direct multi-horizon.

Each training row is (series, origin t, horizon k): the target is ``y[t+k] / scale`` where ``scale`` is the
series' mean absolute level over the last season before ``t``; features are the horizon, lags taken from
the target date (``y[t+k-L]`` for each lag ``L >= k``, so only known history is used), recent window means,
the year-earlier window mean around the target date, calendar of the target date and static
series/store attributes — all scaled. The loss is L1 (MAE) weighted by ``scale`` and by 5 on holiday
targets, so it minimises WMAE in original units.

``make_features`` is shared by training and the edge: given a history it builds the rows for the
origins asked for (by default the last date of every series), with the same columns in the same order.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from forecasting.config import TrainSection
from forecasting.logs import get_logger

log = get_logger(__name__)
ID = "unique_id"
HOLIDAY_WEIGHT = 5.0
STEP = {"D": "1d", "W": "1w", "H": "1h"}
DEFAULT_LAGS = {"W": [1, 2, 4, 13, 26, 51, 52, 53, 104], "D": [1, 7, 14, 28, 364], "H": [1, 24, 48, 168]}
DEFAULT_SEASON = {"W": 52, "D": 7, "H": 24}


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
        )


def make_spec(frame: pl.DataFrame, cfg: TrainSection, freq: str, horizon: int) -> FeatureSpec:
    """Feature spec for ``frame`` from config (lags default per frequency; numeric static columns)."""
    season = cfg.season_length if cfg.season_length > 1 else DEFAULT_SEASON.get(freq, 1)
    lags = sorted(set(cfg.gbm_lags or DEFAULT_LAGS.get(freq, [1, season])))
    static = [
        c
        for c, t in frame.schema.items()
        if c not in {"store_id", "item_id", "category", "ds", "y", "is_holiday", "on_promo"}
        and t.is_numeric()
        and frame.group_by("store_id", "item_id").agg(pl.col(c).n_unique()).get_column(c).max() == 1
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
    )


def _prepare(history: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """Per-series index, scale and window means at every date of the history."""
    keys = ["store_id", "item_id"]
    s = spec.season_length
    df = history.sort([*keys, "ds"]).with_columns(
        pl.concat_str(keys, separator="/").alias(ID),
        pl.int_range(pl.len()).over(keys).alias("t"),
    )
    absy = pl.col("y").abs()
    exprs = [
        (absy.rolling_mean(window_size=s, min_samples=1).over(keys) + 1.0).alias("scale"),
        *[
            pl.col("y").rolling_mean(window_size=w, min_samples=1).over(keys).alias(f"_m{w}")
            for w in spec.windows
        ],
        # Centered 5-period mean around each date, looked up one season before the target.
        pl.col("y").rolling_mean(window_size=5, min_samples=1, center=True).over(keys).alias("_c5"),
    ]
    return df.with_columns(exprs)


def make_features(
    history: pl.DataFrame,
    spec: FeatureSpec,
    *,
    origins: pl.DataFrame | None = None,
    with_target: bool = False,
) -> pl.DataFrame:
    """Feature rows for every (series, origin, horizon 1..H).

    ``origins``: ``store_id, item_id, t`` (0-based index into the series' sorted history); default the last
    date of every series (what the edge scores). Output: ``store_id, item_id, category, origin_ds, ds, h,
    scale``, the feature columns of ``spec.feature_names`` (Float32) and, with ``with_target``, ``y_scaled``
    and ``weight`` (rows whose target lies beyond the history are dropped then).
    """
    df = _prepare(history, spec)
    keys = ["store_id", "item_id"]
    if origins is None:
        origins = df.group_by(keys).agg(pl.col("t").max())
    base = origins.join(df, on=[*keys, "t"], how="inner")
    hs = pl.DataFrame({"h": np.arange(1, spec.horizon + 1, dtype=np.int64)})
    rows = base.join(hs, how="cross").with_columns((pl.col("t") + pl.col("h")).alias("tt"))
    lookup = df.select(*keys, "t", "y", "_c5")
    for lag in spec.lags:
        src = lookup.select(*keys, (pl.col("t") + lag).alias("tt"), pl.col("y").alias(f"_lag_{lag}"))
        rows = rows.join(src, on=[*keys, "tt"], how="left").with_columns(
            pl.when(pl.col("h") <= lag).then(pl.col(f"_lag_{lag}")).otherwise(None).alias(f"_lag_{lag}")
        )
    s = spec.season_length
    year = lookup.select(*keys, (pl.col("t") + s).alias("tt"), pl.col("_c5").alias("_year"))
    rows = rows.join(year, on=[*keys, "tt"], how="left").with_columns(
        pl.when(pl.col("h") + 2 <= s).then(pl.col("_year")).otherwise(None).alias("_year")
    )
    step = {"D": pl.duration(days=1), "W": pl.duration(weeks=1), "H": pl.duration(hours=1)}[spec.freq]
    target_ds = pl.col("ds") + step * pl.col("h")
    rows = rows.with_columns(pl.col("ds").alias("origin_ds"), target_ds.alias("ds"))
    if spec.freq == "W":
        cal1, cal2 = pl.col("ds").dt.week(), pl.col("ds").dt.month()
    elif spec.freq == "H":
        cal1, cal2 = pl.col("ds").dt.hour(), pl.col("ds").dt.weekday()
    else:
        cal1, cal2 = pl.col("ds").dt.weekday(), pl.col("ds").dt.ordinal_day()
    scale = pl.col("scale")
    features = [
        pl.col("h").cast(pl.Float32).alias("h"),
        *[(pl.col(f"_lag_{lag}") / scale).cast(pl.Float32).alias(f"lag_{lag}") for lag in spec.lags],
        *[(pl.col(f"_m{w}") / scale).cast(pl.Float32).alias(f"mean_{w}") for w in spec.windows],
        (pl.col("_year") / scale).cast(pl.Float32).alias("year_mean"),
        cal1.cast(pl.Float32).alias("calendar"),
        cal2.cast(pl.Float32).alias("calendar2"),
        pl.col("category")
        .replace_strict(spec.categories, default=-1)
        .cast(pl.Float32)
        .alias("category_code"),
        scale.log().cast(pl.Float32).alias("log_scale"),
        *[pl.col(c).cast(pl.Float32).alias(f"static_{c}") for c in spec.static_columns],
    ]
    out_cols: list[pl.Expr] = [
        *(pl.col(c) for c in ("store_id", "item_id", "category", "origin_ds", "ds")),
        pl.col("h").alias("horizon"),
        pl.col("scale"),
    ]
    if with_target:
        target = df.select(*keys, pl.col("t").alias("tt"), pl.col("y").alias("_target"), *_holiday(df))
        rows = rows.join(target, on=[*keys, "tt"], how="inner")
        extra = [
            (pl.col("_target") / scale).alias("y_scaled"),
            (scale * pl.when(pl.col("_hol")).then(HOLIDAY_WEIGHT).otherwise(1.0)).alias("weight"),
            pl.col("_target").alias("y"),
        ]
        return rows.select(*out_cols, *features, *extra).sort("store_id", "item_id", "origin_ds", "horizon")
    return rows.select(*out_cols, *features).sort("store_id", "item_id", "origin_ds", "horizon")


def _holiday(df: pl.DataFrame) -> list[pl.Expr]:
    if "is_holiday" in df.columns:
        return [pl.col("is_holiday").fill_null(value=False).alias("_hol")]
    return [pl.lit(value=False).alias("_hol")]


def training_origins(
    history: pl.DataFrame, spec: FeatureSpec, *, last_t: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Origins used for training: the last ``season + horizon`` indices of each series (not before half a
    season of history) (``last_t`` caps the target index per series: ``store_id, item_id, t_max``)."""
    keys = ["store_id", "item_id"]
    n = history.group_by(keys).agg(pl.len().alias("n"))
    if last_t is not None:
        n = n.join(last_t, on=keys).with_columns(pl.min_horizontal("n", pl.col("t_max") + 1).alias("n"))
    span = spec.season_length + spec.horizon
    first_allowed = spec.season_length // 2
    origins = n.select(
        *keys, pl.int_ranges(pl.max_horizontal(pl.col("n") - span, first_allowed), pl.col("n") - 1).alias("t")
    )
    return origins.explode("t").drop_nulls("t")


@dataclass
class GlobalModel:
    """A trained booster with its feature spec."""

    booster: Any
    spec: FeatureSpec

    def predict(self, history: pl.DataFrame, origins: pl.DataFrame | None = None) -> pl.DataFrame:
        """Forecast rows ``store_id, item_id, category, ds, forecast`` from each origin (default: the end)."""
        feats = make_features(history, self.spec, origins=origins)
        x = feats.select(self.spec.feature_names).to_numpy().astype(np.float32)
        pred = self.booster.predict(x) if len(x) else np.zeros(0)
        return feats.select("store_id", "item_id", "category", "origin_ds", "ds", "horizon").with_columns(
            (pl.Series(pred, dtype=pl.Float64) * feats["scale"]).alias("forecast")
        )


def fit(
    history: pl.DataFrame, spec: FeatureSpec, cfg: TrainSection, *, last_t: pl.DataFrame | None = None
) -> GlobalModel:
    """Train the booster on ``history`` (targets up to ``last_t`` per series when given)."""
    import lightgbm as lgb

    started = time.perf_counter()
    origins = training_origins(history, spec, last_t=last_t)
    rows = make_features(history, spec, origins=origins, with_target=True)
    if last_t is not None:
        cap = (
            history.sort("store_id", "item_id", "ds")
            .with_columns(pl.int_range(pl.len()).over("store_id", "item_id").alias("t"))
            .join(last_t, on=["store_id", "item_id"])
            .filter(pl.col("t") == pl.col("t_max"))
            .select("store_id", "item_id", pl.col("ds").alias("_cap"))
        )
        rows = rows.join(cap, on=["store_id", "item_id"]).filter(pl.col("ds") <= pl.col("_cap")).drop("_cap")
    x = rows.select(spec.feature_names).to_numpy().astype(np.float32)
    params = {
        "objective": cfg.gbm_objective,
        "learning_rate": cfg.gbm_learning_rate,
        "num_leaves": cfg.gbm_leaves,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": cfg.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,  # OpenMP spin-waits collapse on shared, oversubscribed cores
        "verbosity": -1,
    }
    data = lgb.Dataset(
        x, label=rows["y_scaled"].to_numpy(), weight=rows["weight"].to_numpy(), free_raw_data=True
    )
    booster = lgb.train(params, data, num_boost_round=cfg.gbm_rounds)
    log.info(
        "gbm_trained",
        rows=rows.height,
        features=len(spec.feature_names),
        duration_seconds=round(time.perf_counter() - started, 3),
    )
    return GlobalModel(booster=booster, spec=spec)


def cross_validation(
    frame: pl.DataFrame,
    unique_ids: pl.Series,
    cfg: TrainSection,
    freq: str,
    *,
    h: int,
    n_windows: int,
    step: int,
) -> pl.DataFrame:
    """Rolling-origin backtest of the global model in statsforecast's layout (``LightGBM`` column)."""
    keys = ["store_id", "item_id"]
    spec = make_spec(frame, cfg, freq, h)
    indexed = frame.sort([*keys, "ds"]).with_columns(
        pl.concat_str(keys, separator="/").alias(ID), pl.int_range(pl.len()).over(keys).alias("t")
    )
    sizes = (
        indexed.group_by(keys)
        .agg(pl.len().alias("n"), pl.col(ID).first())
        .filter(pl.col(ID).is_in(unique_ids.implode()))
    )
    parts = []
    for i in range(n_windows):
        back = h + step * (n_windows - 1 - i)
        last_t = sizes.select(*keys, (pl.col("n") - 1 - back).alias("t_max"))
        hist = indexed.join(last_t, on=keys).filter(pl.col("t") <= pl.col("t_max")).drop("t", "t_max", ID)
        model = fit(hist, spec, cfg)
        pred = model.predict(hist)
        parts.append(pred.rename({"origin_ds": "cutoff", "forecast": "LightGBM"}))
    cv = pl.concat(parts).with_columns(pl.concat_str(keys, separator="/").alias(ID))
    actual = indexed.select(ID, "ds", "y")
    return (
        cv.join(actual, on=[ID, "ds"], how="inner")
        .select(ID, "ds", "cutoff", "y", "LightGBM")
        .sort(ID, "cutoff", "ds")
    )


def spec_digest(spec: FeatureSpec) -> str:
    """Short hash of the feature spec (ties a model file to its feature function)."""
    return hashlib.sha256(repr(spec.to_params()).encode()).hexdigest()[:16]
