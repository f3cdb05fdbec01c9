"""Candidate models built from ``[train]`` config, and the M4 deseasonalised benchmarks (Naive2, SES).

Each candidate is a statsforecast model with a stable alias (the column name in forecasts and the name in
selection tables). Models without native prediction intervals get conformal intervals.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from forecasting.bundle.format import IntervalSettings
from forecasting.common.config import TrainSection
from forecasting.common.errors import ConfigError

FloatArray = npt.NDArray[np.float64]
GLOBAL_MODELS = frozenset({"LightGBM"})
# A mean of candidates is a candidate of its own, named ``Ensemble(A+B)``: selected like any model and
# carried in bundles as an entry of family ``Ensemble`` whose members are entries of their own.
ENSEMBLE_FAMILY = "Ensemble"


def ensemble_name(members: list[str]) -> str:
    """``Ensemble(A+B)`` for members A and B (in candidate order)."""
    return f"{ENSEMBLE_FAMILY}({'+'.join(members)})"


def ensemble_members(name: str) -> list[str]:
    """Members of an ensemble name, or ``[name]`` for a single model."""
    if name.startswith(f"{ENSEMBLE_FAMILY}(") and name.endswith(")"):
        return name[len(ENSEMBLE_FAMILY) + 1 : -1].split("+")
    return [name]


# The M4 organisers' deseasonalised benchmarks (classical multiplicative decomposition), by candidate name.
M4_METHODS = {"Naive2": "naive", "SESD": "ses", "ThetaM4": "theta"}


@dataclass(frozen=True)
class CandidateSpec:
    """A candidate: how to build it, how much history it needs, whether it has native intervals."""

    name: str
    build: Callable[[TrainSection, Any], Any]
    min_length: Callable[[TrainSection], int]
    native_intervals: bool
    intermittent: bool = False


def _sf_models() -> Any:
    import statsforecast.models as m

    return m


def _spec_table() -> dict[str, CandidateSpec]:
    def s(cfg: TrainSection) -> int:
        return max(cfg.season_length, 1)

    def mstl_seasons(cfg: TrainSection) -> list[int]:
        return cfg.mstl_season_lengths or [s(cfg)]

    def mk(
        name: str, native: bool, min_len: Callable[[TrainSection], int], intermittent: bool = False
    ) -> Any:
        def deco(fn: Callable[[TrainSection, Any], Any]) -> CandidateSpec:
            return CandidateSpec(name, fn, min_len, native, intermittent)

        return deco

    specs: list[CandidateSpec] = [
        mk("Naive", True, lambda c: 1)(lambda c, pi: _sf_models().Naive(alias="Naive")),
        mk("SeasonalNaive", True, s)(
            lambda c, pi: _sf_models().SeasonalNaive(season_length=s(c), alias="SeasonalNaive")
        ),
        mk("HistoricAverage", True, lambda c: 1)(
            lambda c, pi: _sf_models().HistoricAverage(alias="HistoricAverage")
        ),
        mk("RandomWalkWithDrift", True, lambda c: 2)(
            lambda c, pi: _sf_models().RandomWalkWithDrift(alias="RandomWalkWithDrift")
        ),
        mk("WindowAverage", False, lambda c: c.window_size)(
            lambda c, pi: _sf_models().WindowAverage(
                window_size=c.window_size, alias="WindowAverage", prediction_intervals=pi
            )
        ),
        mk("SeasonalWindowAverage", False, lambda c: s(c) * c.season_windows)(
            lambda c, pi: _sf_models().SeasonalWindowAverage(
                season_length=s(c),
                window_size=c.season_windows,
                alias="SeasonalWindowAverage",
                prediction_intervals=pi,
            )
        ),
        mk("SES", False, lambda c: 2)(
            lambda c, pi: _sf_models().SimpleExponentialSmoothingOptimized(
                alias="SES", prediction_intervals=pi
            )
        ),
        mk("SeasonalES", False, lambda c: 2 * s(c))(
            lambda c, pi: _sf_models().SeasonalExponentialSmoothingOptimized(
                season_length=s(c), alias="SeasonalES", prediction_intervals=pi
            )
        ),
        mk("AutoETS", True, lambda c: 3)(
            lambda c, pi: _sf_models().AutoETS(season_length=s(c), model=c.ets_model, alias="AutoETS")
        ),
        mk("AutoTheta", True, lambda c: 3)(
            lambda c, pi: _sf_models().AutoTheta(season_length=s(c), alias="AutoTheta")
        ),
        mk("Theta", True, lambda c: 3)(
            lambda c, pi: _sf_models().Theta(
                season_length=s(c), decomposition_type="multiplicative", alias="Theta"
            )
        ),
        mk("MSTL", True, lambda c: 2 * max(mstl_seasons(c)))(
            # Default trend forecaster (AutoETS "ZZN"): the edge rebuilds MSTL from its JSON parameters, so
            # the backtested model is exactly the deployed one.
            lambda c, pi: _sf_models().MSTL(season_length=mstl_seasons(c), alias="MSTL")
        ),
        mk("AutoARIMA", True, lambda c: 3)(
            lambda c, pi: _sf_models().AutoARIMA(season_length=s(c), alias="AutoARIMA")
        ),
        mk("Naive2", False, lambda c: 1)(
            lambda c, pi: m4_model_class()(
                M4_METHODS["Naive2"], season_length=s(c), alias="Naive2", prediction_intervals=pi
            )
        ),
        mk("SESD", False, lambda c: 2)(
            lambda c, pi: m4_model_class()(
                M4_METHODS["SESD"], season_length=s(c), alias="SESD", prediction_intervals=pi
            )
        ),
        mk("ThetaM4", False, lambda c: 3)(
            lambda c, pi: m4_model_class()(
                M4_METHODS["ThetaM4"], season_length=s(c), alias="ThetaM4", prediction_intervals=pi
            )
        ),
        mk("CrostonOptimized", False, lambda c: 2, intermittent=True)(
            lambda c, pi: _sf_models().CrostonOptimized(alias="CrostonOptimized", prediction_intervals=pi)
        ),
        mk("CrostonClassic", False, lambda c: 2, intermittent=True)(
            lambda c, pi: _sf_models().CrostonClassic(alias="CrostonClassic", prediction_intervals=pi)
        ),
        mk("ADIDA", False, lambda c: 2, intermittent=True)(
            lambda c, pi: _sf_models().ADIDA(alias="ADIDA", prediction_intervals=pi)
        ),
        mk("IMAPA", False, lambda c: 2, intermittent=True)(
            lambda c, pi: _sf_models().IMAPA(alias="IMAPA", prediction_intervals=pi)
        ),
        mk("TSB", False, lambda c: 2, intermittent=True)(
            lambda c, pi: (
                tsb_optimized_class()(alias="TSB", prediction_intervals=pi)
                if c.tsb_alpha_d is None or c.tsb_alpha_p is None
                else _sf_models().TSB(
                    alpha_d=c.tsb_alpha_d, alpha_p=c.tsb_alpha_p, alias="TSB", prediction_intervals=pi
                )
            )
        ),
    ]
    return {spec.name: spec for spec in specs}


def candidate_specs() -> dict[str, CandidateSpec]:
    """Every local (per-series) candidate by name."""
    return _spec_table()


def check_candidates(cfg: TrainSection) -> None:
    """Fail early, naming the field, when ``[train] models`` or ``fallback`` names an unknown candidate."""
    known = set(candidate_specs()) | GLOBAL_MODELS
    unknown = [m for m in cfg.models if m not in known]
    if unknown:
        raise ConfigError(f"[train] models: unknown candidate(s) {unknown}; known: {sorted(known)}")
    if cfg.fallback not in candidate_specs():
        raise ConfigError(f"[train] fallback: unknown model {cfg.fallback!r}")
    if len(set(cfg.models)) != len(cfg.models):
        raise ConfigError("[train] models: a candidate is listed twice")


def build_models(names: list[str], cfg: TrainSection, horizon: int, *, intervals: bool = True) -> list[Any]:
    """statsforecast model objects for ``names`` (local models only), conformal intervals where needed."""
    specs = candidate_specs()
    conformal = None
    if intervals:
        from statsforecast.utils import ConformalIntervals

        conformal = ConformalIntervals(h=horizon, n_windows=statsforecast_windows(cfg))
    models = []
    for name in names:
        spec = specs[name]
        models.append(spec.build(cfg, None if spec.native_intervals else conformal))
    return models


# Windows a series needs for calibrated intervals; it uses up to ``[train] conformal_windows`` when longer.
MIN_CONFORMAL_WINDOWS = 2


def statsforecast_windows(cfg: TrainSection) -> int:
    """Conformal windows statsforecast calibrates with in backtests.

    With ``interval_method = "calibrated"`` its intervals are replaced by :func:`calibrate_backtest`, which
    takes up to ``conformal_windows`` windows per series as its history allows; statsforecast then only
    needs the minimum, so that series of every length still get a cross-validation row.
    """
    if cfg.interval_method == "statsforecast":
        return cfg.conformal_windows
    return min(cfg.conformal_windows, MIN_CONFORMAL_WINDOWS)


def interval_settings(cfg: TrainSection, frame: Any) -> IntervalSettings:
    """The bundle's interval settings for the training history ``frame`` (a frame with column ``y``).

    ``[train] nonnegative = "auto"`` floors at 0 when no training value is negative (unit sales).
    """
    nonnegative = cfg.nonnegative
    if nonnegative == "auto":
        low = frame["y"].min()
        nonnegative = low is None or float(low) >= 0.0
    return IntervalSettings(
        method=cfg.interval_method, conformal_windows=cfg.conformal_windows, nonnegative=bool(nonnegative)
    )


def calibrate_backtest(cv: Any, data: Any, names: list[str], cfg: TrainSection, frame: Any) -> Any:
    """Cross-validation forecasts with the edge's intervals, floored at 0 for unit sales.

    ``cv``: Nixtla layout (``unique_id, ds, cutoff, y`` and per model its forecast and bounds); ``data``:
    the ``unique_id, ds, y`` histories. For each cutoff, the interval columns of the local candidates
    whose intervals are calibrated (those without native intervals, and the cheap native ones of
    ``RECALIBRATED_NATIVE``) are recomputed from the history up to the cutoff with
    :func:`forecasting.models.fitted_forecast.forecast_batch`, the very function the edge scores with (a
    fitted-state model is fitted on that history first); then, when :func:`interval_settings` says so,
    every forecast and bound below 0 becomes 0.
    """
    import polars as pl

    from forecasting.models.fitted import CONFORMAL_ONLY, RECALIBRATED_NATIVE, model_state
    from forecasting.models.fitted_forecast import fit_states, forecast_batch
    from forecasting.models.kernels import pad_right_aligned
    from forecasting.training.pipeline import model_families

    settings = interval_settings(cfg, frame)
    levels = sorted({int(c.rsplit("-", 1)[1]) for c in cv.columns if "-lo-" in c})
    families, params = model_families(cfg)
    recalibrate = (
        [
            name
            for name in names
            if settings.method == "calibrated"
            and families.get(name, name) in CONFORMAL_ONLY | RECALIBRATED_NATIVE
            and f"{name}-lo-{levels[0]}" in cv.columns
        ]
        if levels
        else []
    )
    if recalibrate:
        from forecasting.bundle.format import ModelEntry

        origins = cv.select("unique_id", "cutoff").unique().sort("unique_id", "cutoff").with_row_index("_o")
        hist = data.join(origins, on="unique_id").filter(pl.col("ds") <= pl.col("cutoff")).sort("_o", "ds")
        counts = hist.group_by("_o", maintain_order=True).len()["len"].to_numpy()
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        y, lengths = pad_right_aligned(
            hist["y"].to_numpy().astype(np.float64), offsets, np.arange(len(counts))
        )
        h = int(cv.group_by("unique_id", "cutoff").len()["len"].max())
        rows = cv.join(origins, on=["unique_id", "cutoff"], maintain_order="left").with_columns(
            _step=pl.col("ds").rank("ordinal").over("_o").cast(pl.Int64) - 1
        )
        o_idx, s_idx = rows["_o"].to_numpy(), rows["_step"].to_numpy()
        new: dict[str, Any] = {}
        for name in recalibrate:
            family = families.get(name, name)
            entry = ModelEntry(state=model_state(family), family=family, params=params.get(name, {}))
            fitted = entry.state == "fitted-state"
            states = fit_states(entry, cfg.season_length, y, lengths) if fitted else None
            out = forecast_batch(entry, cfg.season_length, y, lengths, h, levels, states, settings)
            for lv in levels:
                for side in ("lo", "hi"):
                    new[f"{name}-{side}-{lv}"] = out[f"{side}-{lv}"][o_idx, s_idx]
        cv = rows.with_columns(pl.Series(k, v) for k, v in new.items()).drop("_o", "_step")
    if settings.nonnegative:
        value_cols = [
            c
            for c in cv.columns
            if c in names or any(c.startswith(f"{n}-lo-") or c.startswith(f"{n}-hi-") for n in names)
        ]
        cv = cv.with_columns(
            pl.when(pl.col(c) < 0).then(0.0).otherwise(pl.col(c)).alias(c) for c in value_cols
        )
    return cv


def min_length(names: list[str], cfg: TrainSection, horizon: int, *, intervals: bool = True) -> int:
    """History a series needs so that every named model fits (with conformal calibration if asked)."""
    specs = candidate_specs()
    need = 1
    for name in names:
        spec = specs[name]
        n = spec.min_length(cfg)
        if intervals and not spec.native_intervals:
            n = max(n, statsforecast_windows(cfg) * horizon + 1)
        need = max(need, n)
    return need


# --- M4 conventions: seasonality test and classical multiplicative decomposition -------------------------


def seasonality_test(y: FloatArray, season_length: int) -> bool:
    """The M4 90 % autocorrelation test: is lag ``season_length`` significant (needs 3 seasons of data)?"""
    n = len(y)
    if season_length <= 1 or n < 3 * season_length:
        return False
    x = y - y.mean()
    denom = float(np.dot(x, x))
    if denom == 0.0:
        return False
    acf = np.array([float(np.dot(x[k:], x[: n - k])) / denom for k in range(1, season_length + 1)])
    limit = 1.645 / np.sqrt(n) * np.sqrt(1.0 + 2.0 * np.sum(acf[: season_length - 1] ** 2))
    return bool(abs(acf[season_length - 1]) > limit)


def multiplicative_indices(y: FloatArray, season_length: int) -> FloatArray:
    """Seasonal indices (``decompose(type="multiplicative")$figure``), position 0 = first observation."""
    m = season_length
    n = len(y)
    weights = np.r_[0.5, np.ones(m - 1), 0.5] / m if m % 2 == 0 else np.ones(m) / m
    half = len(weights) // 2
    trend = np.full(n, np.nan)
    conv = np.convolve(y, weights, mode="valid")
    trend[half : half + len(conv)] = conv
    ratio = y / trend
    figure = np.array([np.nanmean(ratio[i::m]) for i in range(m)])
    figure = figure / figure.mean()
    result: FloatArray = figure.astype(np.float64)
    return result


def deseasonalise(
    y: FloatArray, season_length: int, horizon: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(adjusted history, in-sample indices, out-of-sample indices)``; indices are 1 when not seasonal."""
    n = len(y)
    if not seasonality_test(y, season_length):
        return y, np.ones(n), np.ones(horizon)
    figure = multiplicative_indices(y, season_length)
    idx_in = figure[np.arange(n) % season_length]
    idx_out = figure[np.arange(n, n + horizon) % season_length]
    return y / idx_in, idx_in, idx_out


def naive2_forecast(y: FloatArray, season_length: int, horizon: int) -> FloatArray:
    """M4 Naive2: the last deseasonalised value, reseasonalised."""
    adj, _, idx_out = deseasonalise(y, season_length, horizon)
    return np.full(horizon, adj[-1]) * idx_out


# statsforecast's ets_f refuses an ETS(A,N,N) fit on this many points or fewer ("tiny datasets").
_ETS_TINY = 6


def _ses_path(x: FloatArray, horizon: int) -> FloatArray:
    """SES (ETS(A,N,N) fitted by MSE) forecasts of ``x``; on a tiny history, the mean of its values."""
    if len(x) <= _ETS_TINY:
        return np.full(horizon, float(np.mean(x)))
    from statsforecast.ets import ets_f, forecast_ets

    fit = ets_f(x, m=1, model="ANN", opt_crit="mse")  # type: ignore[no-untyped-call]
    return np.asarray(forecast_ets(fit, h=horizon)["mean"], dtype=np.float64)  # type: ignore[no-untyped-call]


def ses_deseasonalised_forecast(y: FloatArray, season_length: int, horizon: int) -> FloatArray:
    """M4 SES: exponential smoothing (ETS(A,N,N), alpha and level fitted by MSE) on deseasonalised data."""
    adj, _, idx_out = deseasonalise(y, season_length, horizon)
    result: FloatArray = _ses_path(adj, horizon) * idx_out
    return result


def theta_deseasonalised_forecast(y: FloatArray, season_length: int, horizon: int) -> FloatArray:
    """M4 Theta (classic): mean of the linear trend (theta 0) and SES on the theta-2 line, deseasonalised."""
    adj, _, idx_out = deseasonalise(y, season_length, horizon)
    n = len(adj)
    t_in = np.arange(1, n + 1, dtype=np.float64)
    t_out = np.arange(n + 1, n + horizon + 1, dtype=np.float64)
    slope, intercept = np.polyfit(t_in, adj, 1)
    line_in, line_out = intercept + slope * t_in, intercept + slope * t_out
    ses_out = _ses_path(2.0 * adj - line_in, horizon)
    result: FloatArray = (0.5 * ses_out + 0.5 * line_out) * idx_out
    return result


@functools.cache
def tsb_optimized_class() -> Any:
    """statsforecast's TSB with ``alpha_d``/``alpha_p`` fitted per series by in-sample MSE.

    The constants come from :func:`forecasting.models.kernels.tsb_fit` on the series being forecast, the same
    function the edge runs over a whole store, so backtests and the edge pick the same pair.
    """
    from statsforecast.models import TSB

    from forecasting.models import kernels

    class TSBOptimized(TSB):
        """TSB whose smoothing constants are refitted on every history it is given."""

        def __init__(self, alias: str = "TSB", prediction_intervals: Any = None) -> None:
            super().__init__(alpha_d=0.1, alpha_p=0.1, alias=alias, prediction_intervals=prediction_intervals)

        def _fit_alphas(self, y: FloatArray) -> None:
            col = np.asarray(y, dtype=np.float64)[:, None]
            alpha_d, alpha_p = kernels.tsb_fit(col, np.array([col.shape[0]], dtype=np.int64))
            self.alpha_d, self.alpha_p = float(alpha_d[0]), float(alpha_p[0])

        def fit(self, y: FloatArray, X: Any = None) -> Any:  # noqa: N803 - statsforecast's signature
            self._fit_alphas(y)
            return super().fit(y, X)

        def forecast(
            self,
            y: FloatArray,
            h: int,
            X: Any = None,  # noqa: N803
            X_future: Any = None,  # noqa: N803
            level: list[int] | None = None,
            fitted: bool = False,
        ) -> dict[str, Any]:
            self._fit_alphas(y)
            out: dict[str, Any] = super().forecast(
                y=y, h=h, X=X, X_future=X_future, level=level, fitted=fitted
            )
            return out

    return TSBOptimized


@functools.cache
def m4_model_class() -> Any:
    """A statsforecast model class running the M4 deseasonalised benchmarks (``naive`` = Naive2, ``ses``)."""
    from statsforecast.models import _TS

    class M4Deseasonalised(_TS):
        """Naive2 / SES of the M4 organisers, usable in ``StatsForecast`` like any other model."""

        def __init__(
            self, method: str, season_length: int, alias: str, prediction_intervals: Any = None
        ) -> None:
            self.method = method
            self.season_length = season_length
            self.alias = alias
            self.prediction_intervals = prediction_intervals

        def _mean(self, y: FloatArray, h: int) -> FloatArray:
            if self.method == "naive":
                return naive2_forecast(y, self.season_length, h)
            if self.method == "theta":
                return theta_deseasonalised_forecast(y, self.season_length, h)
            return ses_deseasonalised_forecast(y, self.season_length, h)

        def fit(self, y: FloatArray, X: Any = None) -> Any:  # noqa: N803 - statsforecast's signature
            self.model_ = {"y": np.asarray(y, dtype=np.float64)}
            self._store_cs(y=y, X=X)  # type: ignore[no-untyped-call]
            return self

        def predict(self, h: int, X: Any = None, level: list[int] | None = None) -> dict[str, Any]:  # noqa: N803
            res: dict[str, Any] = {"mean": self._mean(self.model_["y"], h)}
            if level is None:
                return res
            if self.prediction_intervals is None:
                raise ValueError(f"{self.alias}: prediction intervals need conformal settings")
            out: dict[str, Any] = self._add_predict_conformal_intervals(  # type: ignore[no-untyped-call]
                res, sorted(level)
            )
            return out

        def forecast(
            self,
            y: FloatArray,
            h: int,
            X: Any = None,  # noqa: N803
            X_future: Any = None,  # noqa: N803
            level: list[int] | None = None,
            fitted: bool = False,
        ) -> dict[str, Any]:
            y = np.asarray(y, dtype=np.float64)
            res: dict[str, Any] = {"mean": self._mean(y, h)}
            if fitted:
                res["fitted"] = np.full(len(y), np.nan)
            if level is None:
                return res
            if self.prediction_intervals is None:
                raise ValueError(f"{self.alias}: prediction intervals need conformal settings")
            out: dict[str, Any] = self._add_conformal_intervals(  # type: ignore[no-untyped-call]
                fcst=res, y=y, X=X, level=sorted(level)
            )
            return out

    return M4Deseasonalised
