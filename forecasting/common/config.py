"""Typed training configuration: the ``[data]`` column mapping and the ``[train]`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from forecasting.common.logs import LoggingConfig
from forecasting.common.settings import load_config

Frequency = Literal["D", "W", "H"]


class DataConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[data]``: how a sales extract maps to the canonical frame ``store_id, item_id, category, ds, y``.

    ``format``: ``long`` (one row per series and period), ``m5_wide`` (M5 ``d_1..d_N`` columns plus a
    calendar file) or ``m4_wide`` (M4 ``V1..VN`` rows, no dates: periods count from ``start``).
    Column fields name columns of the extract; ``category`` may name the same column as ``item_id``
    (Walmart departments), and ``category_constant`` puts every series in one category.
    Relative file names (``store_file``, ``calendar_file``, ``features_file``) resolve next to the data file.
    """

    format: Literal["long", "m5_wide", "m4_wide"] = "long"
    freq: Frequency = "D"
    store_id: str = "store_id"
    item_id: str = "item_id"
    category: str = "category"
    category_constant: str = ""
    ds: str = "ds"
    y: str = "y"
    date_format: str = ""
    holiday: str = ""
    promo: str = ""
    exogenous: list[str] = msgspec.field(default_factory=list)
    # Store attributes (e.g. Walmart's stores.csv: Store,Type,Size) joined on the store column.
    store_file: str = ""
    store_key: str = "store_id"
    store_columns: list[str] = msgspec.field(default_factory=list)
    # Per store and period covariates (e.g. Walmart's features.csv) joined on store and date.
    features_file: str = ""
    features_columns: list[str] = msgspec.field(default_factory=list)
    # m5_wide: the calendar mapping d_1.. to dates; days with an event count as holidays.
    calendar_file: str = ""
    # m4_wide: the date of the first period of every series, and the constant store id used.
    start: str = "2000-01-01T00:00:00"
    # Validation rules.
    negative_values: Literal["keep", "quarantine", "zero"] = "keep"
    fill_gaps: Literal["zero", "none"] = "zero"
    min_series_length: int = 2
    known_categories: list[str] = msgspec.field(default_factory=list)
    allow_future_dates: bool = False


class TrainSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[train]``: what to fit and how to judge it.

    ``models`` lists candidate names (see ``forecasting.models.families.CANDIDATES``); the default set is
    cheap.
    The backtest uses ``windows`` rolling origins ``step`` periods apart (0: the horizon), each
    forecasting ``horizon`` periods; selection picks per ``select_by`` group the candidate with the best
    ``metric``; series too short for the backtest get ``fallback``.
    """

    model_name: str = "demand"
    horizon: int = 28
    season_length: int = 7
    levels: list[int] = msgspec.field(default_factory=lambda: [80, 95])
    seed: int = 0
    models: list[str] = msgspec.field(
        default_factory=lambda: [
            "Naive",
            "SeasonalNaive",
            "WindowAverage",
            "SeasonalWindowAverage",
            "AutoETS",
            "CrostonOptimized",
            "TSB",
        ]
    )
    ets_model: str = "ZNZ"
    window_size: int = 4
    season_windows: int = 2
    mstl_season_lengths: list[int] = msgspec.field(default_factory=list)
    # TSB smoothing constants; unset: fitted per series by in-sample MSE (at the edge too).
    tsb_alpha_d: float | None = None
    tsb_alpha_p: float | None = None
    windows: int = 1
    step: int = 0
    metric: Literal["mae", "wape", "smape", "mase", "rmsse", "wmae"] = "mae"
    # Seasonal period of the naive scale of MASE and RMSSE (0: season_length). The M4 rules use 1 for
    # weekly data while the models still see a 52-week season.
    mase_seasonality: int = 0
    select_by: Literal["category", "series", "all"] = "category"
    # select_by = "series": a series keeps its own winner only with at least this many backtest windows
    # and a winner this much better (relative) than its category's choice; else the category's choice.
    series_min_windows: int = 3
    series_min_improvement: float = 0.1
    fallback: str = "Naive"
    ensemble_top_k: int = 0
    # Conformal calibration: up to this many windows of the horizon per series (fewer when its history is
    # shorter), recorded in the bundle so the edge uses the same; "statsforecast" keeps its own intervals.
    conformal_windows: int = 10
    interval_method: Literal["calibrated", "statsforecast"] = "calibrated"
    # Floor forecasts and bounds at 0: "auto" when the training history has no negative value.
    nonnegative: bool | Literal["auto"] = "auto"
    engine: Literal["local", "dask"] = "local"
    dask_address: str = ""
    dask_workers: int = 2
    dask_processes: bool = True
    n_jobs: int = 1
    # Global gradient-boosting model (candidate name "LightGBM").
    gbm_lags: list[int] = msgspec.field(default_factory=list)
    gbm_rounds: int = 300
    # LightGBM threads: 1 by default (OpenMP spin-waits collapse on shared, oversubscribed cores); a
    # training machine of its own can use its cores.
    gbm_threads: int = 1
    gbm_learning_rate: float = 0.05
    gbm_leaves: int = 31
    gbm_objective: Literal["regression", "regression_l1", "huber", "tweedie", "poisson"] = "regression_l1"
    # Training rows' weights: "scale" weighs each row by its series' level (minimises error in sales
    # units: mae, wmae, wape), "equal" weighs every row alike in scaled units (scale-free metrics: mase,
    # rmsse, smape); "auto" follows ``metric``. Holiday targets weigh 5 times either way.
    gbm_weighting: Literal["auto", "scale", "equal"] = "auto"
    # Origins per series the booster trains on, the most recent (0: one season plus the horizon, less one).
    gbm_origins: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    bundle_expiry_days: int = 90

    @property
    def scale_seasonality(self) -> int:
        """The seasonal period that scales MASE and RMSSE."""
        return self.mase_seasonality or self.season_length

    @property
    def gbm_scale_weighted(self) -> bool:
        """Whether the booster weighs training rows by their series' level (see ``gbm_weighting``)."""
        if self.gbm_weighting == "auto":
            return self.metric in ("mae", "wmae", "wape")
        return self.gbm_weighting == "scale"


class TrainConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Whole training configuration file."""

    data: DataConfig = msgspec.field(default_factory=DataConfig)
    train: TrainSection = msgspec.field(default_factory=TrainSection)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)


def load_train_config(files: list[Path]) -> TrainConfig:
    """Defaults < files < SHELFCAST_DATA__* / SHELFCAST_TRAIN__* / SHELFCAST_LOGGING__*."""
    return load_config(TrainConfig, files, restrict_env_to=("data", "train", "logging"))
