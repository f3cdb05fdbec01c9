"""Data drift of a store's recent sales per category against a reference; each test named with its threshold.

Two references, chosen per category:

- ``seasonal`` (when the history allows): the same weeks a year earlier (52 weeks back) in the store's own
  history. Values are divided by each series' mean over the ``baseline_windows`` weeks before their window
  (skipping the ``baseline_gap_windows`` weeks just before it, so a change stays visible for two weeks),
  so a series that has simply grown or shrunk over the year is not flagged; the comparison is about the
  shape of the recent weeks relative to what preceded them, against the same weeks a year earlier.
- ``reference``: the training reference carried in the bundle manifest (:func:`reference_summary`): per
  category quantiles of the same relative values and the zero-sales share.

Tests per category (each reports statistic, threshold and verdict ``ok``/``drift``/``insufficient``):
PSI over the reference's decile bins (default threshold 0.2), Wasserstein distance normalised by the
reference's mean absolute value (0.1), two-sample Kolmogorov-Smirnov (p < 0.05), the change in the
zero-sales share (0.1), and ``level``: the absolute log ratio of the category's recent level to its
reference, net of the store-wide change that week, held against a threshold calibrated on the category's
own past weeks (median + ``level_mads`` MADs, at least ``level_floor``). Weekly store data hold one
value per item and week, too few for distribution tests alone to stay quiet; a category is reported
``drifted`` only when the calibrated level test and the Wasserstein test agree and the category is
material (``min_share`` of the store's sales). The defaults were chosen on the real Walmart weeks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import polars as pl

from forecasting.common.contracts import CategoryDrift, DriftTest
from forecasting.monitoring.drift_verdict import DRIFT, INSUFFICIENT, OK, drift_by_tests

WINDOW_DAYS = 7
SEASON_WINDOWS = 52  # 52 weeks = 364 days: the same weekday a year earlier
QUANTILES = tuple(i / 20 for i in range(21))
EPS = 1e-4


class DriftConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Thresholds and windows of the drift checks (defaults chosen not to cry wolf on Walmart weeks)."""

    psi_threshold: float = 0.2
    wasserstein_threshold: float = 0.1
    ks_pvalue: float = 0.05
    zero_rate_threshold: float = 0.1
    level_floor: float = 0.3
    level_mads: float = 8.0
    uncalibrated_level: float = 0.6
    baseline_windows: int = 8
    baseline_gap_windows: int = 1
    history_windows: int = 26
    min_history_windows: int = 8
    min_samples: int = 8
    min_share: float = 0.01
    psi_bins: int = 10


# --- statistics -----------------------------------------------------------------------------------


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def psi(
    current: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray, bins: int = 10
) -> float:
    """Population stability index of ``current`` over the reference's quantile bins (0 when identical)."""
    cur, ref = _clean(current), _clean(reference)
    if cur.size == 0 or ref.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    p = np.maximum(ref_counts / ref.size, EPS)
    q = np.maximum(cur_counts / cur.size, EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def wasserstein(current: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray) -> float:
    """First Wasserstein distance between the two empirical distributions (area between their CDFs)."""
    u, v = np.sort(_clean(current)), np.sort(_clean(reference))
    if u.size == 0 or v.size == 0:
        return float("nan")
    allv = np.sort(np.concatenate([u, v]))
    deltas = np.diff(allv)
    u_cdf = np.searchsorted(u, allv[:-1], side="right") / u.size
    v_cdf = np.searchsorted(v, allv[:-1], side="right") / v.size
    return float(np.sum(np.abs(u_cdf - v_cdf) * deltas))


def wasserstein_normalised(
    current: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray
) -> float:
    """Wasserstein distance divided by the reference's mean absolute value (scale free)."""
    ref = _clean(reference)
    scale = float(np.mean(np.abs(ref))) if ref.size else 0.0
    distance = wasserstein(current, ref)
    if not math.isfinite(distance):
        return float("nan")
    if scale <= 0:
        return 0.0 if distance == 0 else float("inf")
    return distance / scale


def ks_2samp(
    current: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its p-value (asymptotic, small-sample corrected)."""
    u, v = np.sort(_clean(current)), np.sort(_clean(reference))
    n, m = u.size, v.size
    if n == 0 or m == 0:
        return float("nan"), float("nan")
    allv = np.concatenate([u, v])
    d = float(
        np.max(
            np.abs(np.searchsorted(u, allv, side="right") / n - np.searchsorted(v, allv, side="right") / m)
        )
    )
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    return d, kolmogorov_sf(lam)


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) of the Kolmogorov distribution (the alternating series; 1 for small lam)."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return float(min(max(total, 0.0), 1.0))


def zero_rate(values: Sequence[float] | np.ndarray) -> float:
    """Share of observations equal to zero (NaN when there are none)."""
    a = _clean(values)
    return float(np.mean(a == 0)) if a.size else float("nan")


def _verdict(statistic: float, threshold: float, *, enough: bool, below: bool = False) -> str:
    if not enough or not math.isfinite(statistic):
        return INSUFFICIENT
    breach = statistic < threshold if below else statistic > threshold
    return DRIFT if breach else OK


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def distribution_tests(
    current: np.ndarray,
    reference: np.ndarray,
    config: DriftConfig,
    *,
    reference_zero_rate: float | None = None,
    reference_n: int | None = None,
) -> list[DriftTest]:
    """PSI, normalised Wasserstein, KS and zero-rate tests of ``current`` against ``reference``."""
    n_cur, n_ref = int(current.size), int(reference_n if reference_n is not None else reference.size)
    enough = n_cur >= config.min_samples and n_ref >= config.min_samples
    nan = float("nan")
    w = wasserstein_normalised(current, reference)
    p = psi(current, reference, config.psi_bins) if enough else nan
    pvalue = ks_2samp(current, reference)[1] if enough else nan
    ref_zero = zero_rate(reference) if reference_zero_rate is None else reference_zero_rate
    dz = abs(zero_rate(current) - ref_zero) if enough else nan
    counts = {"n_current": n_cur, "n_reference": n_ref}
    return [
        DriftTest(name="psi", statistic=_num(p), threshold=config.psi_threshold,
                  verdict=_verdict(p, config.psi_threshold, enough=enough), **counts),
        DriftTest(name="wasserstein", statistic=_num(w), threshold=config.wasserstein_threshold,
                  verdict=_verdict(w, config.wasserstein_threshold, enough=min(n_cur, n_ref) > 0), **counts),
        DriftTest(name="ks_pvalue", statistic=_num(pvalue), threshold=config.ks_pvalue,
                  verdict=_verdict(pvalue, config.ks_pvalue, enough=enough, below=True), **counts),
        DriftTest(name="zero_rate", statistic=_num(dz), threshold=config.zero_rate_threshold,
                  verdict=_verdict(dz, config.zero_rate_threshold, enough=enough), **counts),
    ]  # fmt: skip


# --- the training reference -----------------------------------------------------------------------


def reference_summary(
    frame: pl.DataFrame, season_length: int = 7, *, windows: int = 52
) -> dict[str, dict[str, float]]:
    """Per-category summaries of the last ``windows`` weeks of ``frame`` for the manifest's ``reference``.

    Keys: ``mean std p10 p50 p90 zero_share n`` of the raw values, ``items`` (series count), and
    ``r00`` .. ``r100``: quantiles (every 5 %) of the values relative to each series' mean over the span.
    """
    del season_length  # the span is a year of weeks whatever the season
    if frame.height == 0:
        return {}
    last = frame.select(pl.col("ds").max()).item()
    start = _shift(last, -WINDOW_DAYS * windows)
    recent = frame.filter(pl.col("ds") > start).with_columns(
        (pl.col("y") / pl.col("y").mean().over("store_id", "item_id")).alias("_rel")
    )
    aggs: list[pl.Expr] = [
        pl.col("y").mean().alias("mean"),
        pl.col("y").std().alias("std"),
        pl.col("y").quantile(0.1).alias("p10"),
        pl.col("y").median().alias("p50"),
        pl.col("y").quantile(0.9).alias("p90"),
        (pl.col("y") == 0).mean().alias("zero_share"),
        pl.len().cast(pl.Float64).alias("n"),
        pl.struct("store_id", "item_id").n_unique().cast(pl.Float64).alias("items"),
    ]
    rel = pl.col("_rel").filter(pl.col("_rel").is_finite())
    aggs += [rel.quantile(q, "linear").alias(_qkey(q)) for q in QUANTILES]
    out: dict[str, dict[str, float]] = {}
    for row in recent.group_by("category").agg(aggs).sort("category").iter_rows(named=True):
        category = str(row.pop("category"))
        out[category] = {k: float(v) if v is not None and math.isfinite(v) else 0.0 for k, v in row.items()}
    return out


def _qkey(q: float) -> str:
    return f"r{round(q * 100):02d}"


def reference_sample(summary: Mapping[str, float]) -> np.ndarray:
    """The relative-value quantiles of a :func:`reference_summary` entry, as an equally weighted sample."""
    values = [summary[_qkey(q)] for q in QUANTILES if _qkey(q) in summary]
    return np.asarray(values, dtype=np.float64)


def _shift(value: Any, days: int) -> Any:
    return value + timedelta(days=days)


# --- the report -----------------------------------------------------------------------------------


class StoreDrift(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`drift_report` finds for one store and window."""

    period_start: date
    period_end: date
    unknown_item_share: float
    missing_rate: float
    categories: list[CategoryDrift]


def _as_date(value: Any) -> date:
    return value.date() if isinstance(value, datetime) else value


def drift_report(
    history: pl.DataFrame,
    *,
    as_of: date | None = None,
    reference: Mapping[str, Mapping[str, float]] | None = None,
    known_items: Collection[str] | None = None,
    config: DriftConfig | None = None,
) -> StoreDrift:
    """Drift of the week ending at ``as_of`` (default: the last date of ``history``) for one store.

    ``history``: the store's canonical frame (all of it that is kept: a year and more enables the
    seasonal comparison and the calibration of the level test). ``reference``: the bundle manifest's
    ``reference`` (used for categories without a seasonal reference). ``known_items``: the item ids
    the model knows (share of unknown items; expected items for the missing-data rate).
    """
    config = config or DriftConfig()
    reference = reference or {}
    if history.height == 0:
        raise ValueError("drift needs a non-empty history")
    end = _as_date(as_of or history.select(pl.col("ds").max()).item())
    n_windows = (
        SEASON_WINDOWS + config.baseline_gap_windows + config.baseline_windows + config.history_windows + 1
    )
    frame = (
        history.select(
            "item_id", "category", pl.col("ds").cast(pl.Date).alias("ds"), pl.col("y").cast(pl.Float64)
        )
        .filter(pl.col("ds") <= end)
        .with_columns(((pl.lit(end) - pl.col("ds")).dt.total_days() // WINDOW_DAYS).cast(pl.Int32).alias("w"))
        .filter(pl.col("w") < n_windows)
    )
    start = end - timedelta(days=WINDOW_DAYS - 1)
    current = frame.filter(pl.col("w") == 0)
    unknown, missing = _coverage(frame, current, known_items, config)
    categories = sorted(set(current["category"].unique().to_list()))
    levels = _level_table(frame, n_windows, config)
    cur_rel = _by_category(_relative(frame, 0, config))
    ref_rel = _by_category(_relative(frame, SEASON_WINDOWS, config))
    empty = np.asarray([], dtype=np.float64)
    out = [
        _category_drift(
            category,
            cur_rel.get(category, empty),
            ref_rel.get(category, empty),
            levels,
            reference.get(category),
            config,
        )
        for category in categories
    ]
    return StoreDrift(
        period_start=start, period_end=end, unknown_item_share=unknown, missing_rate=missing, categories=out
    )


def _coverage(
    frame: pl.DataFrame, current: pl.DataFrame, known: Collection[str] | None, config: DriftConfig
) -> tuple[float, float]:
    items_now = set(current["item_id"].unique().to_list())
    if known is not None:
        known_set = set(known)
        unknown = len(items_now - known_set) / len(items_now) if items_now else 0.0
    else:
        unknown = 0.0
    baseline = frame.filter(pl.col("w").is_between(1, config.baseline_windows))
    expected_items = set(baseline["item_id"].unique().to_list())
    if known is not None:
        expected_items &= set(known)
    base_periods = baseline.group_by("w").agg(pl.col("ds").n_unique())["ds"].max()
    periods = max(current["ds"].n_unique(), base_periods if isinstance(base_periods, int) else 0)
    expected = len(expected_items) * periods
    if expected == 0:
        return unknown, 0.0
    present = (
        current.filter(pl.col("item_id").is_in(list(expected_items)))
        .select(pl.struct("item_id", "ds").n_unique())
        .item()
    )
    return unknown, max(0.0, 1.0 - present / expected)


class _Levels(msgspec.Struct, frozen=True):
    categories: list[str]
    stat: np.ndarray  # categories x evaluation windows: |log level ratio| net of the store-wide change
    threshold: np.ndarray  # categories: the calibrated threshold of the level test
    calibration: np.ndarray  # categories: past windows the threshold was calibrated on
    seasonal: np.ndarray  # categories: the current window has a seasonal reference
    share: np.ndarray  # categories: share of the store's sales over the last year


def _level_table(frame: pl.DataFrame, n_windows: int, config: DriftConfig) -> _Levels:
    sums = frame.group_by("category", "w").agg(pl.col("y").sum())
    categories = sorted(set(sums["category"].to_list()))
    index = {c: i for i, c in enumerate(categories)}
    s = np.full((len(categories), n_windows), np.nan)
    rows = sums["category"].to_list()
    s[[index[c] for c in rows], sums["w"].to_numpy()] = sums["y"].to_numpy()
    b, lag, k = config.baseline_windows, SEASON_WINDOWS, config.history_windows
    gap = config.baseline_gap_windows + 1
    evals = k + 1

    def level(e0: int) -> np.ndarray:
        cur = s[:, e0 : e0 + evals]
        base = np.stack(
            [np.nanmean(s[:, e + gap : e + gap + b], axis=1) for e in range(e0, e0 + evals)], axis=1
        )
        out: np.ndarray = cur / base
        return out

    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        cur_rel = level(0)
        ref_rel = level(lag)
        seasonal_ratio = cur_rel / ref_rel
        ratio = np.where(np.isfinite(seasonal_ratio) & (seasonal_ratio > 0), seasonal_ratio, np.nan)
        plain = np.where(np.isfinite(cur_rel) & (cur_rel > 0), cur_rel, np.nan)
        has_season = np.isfinite(ratio)
        use = np.where(has_season, ratio, plain)
        totals = np.nansum(s[:, 1 : lag + 1], axis=1)
        share = totals / totals.sum() if totals.sum() > 0 else np.zeros(len(categories))
        material = share >= config.min_share
        common = np.nanmedian(np.where(material[:, None], use, np.nan), axis=0)
        stat = np.abs(np.log(use / np.where(np.isfinite(common), common, 1.0)))
        past = stat[:, 1:]
        calibration = np.isfinite(past).sum(axis=1)
        med = np.nanmedian(past, axis=1)
        mad = 1.4826 * np.nanmedian(np.abs(past - med[:, None]), axis=1)
        calibrated = np.maximum(config.level_floor, med + config.level_mads * mad)
        threshold = np.where(calibration >= config.min_history_windows, calibrated, config.uncalibrated_level)
    return _Levels(
        categories=categories, stat=stat, threshold=threshold, calibration=calibration,
        seasonal=has_season[:, 0], share=share,
    )  # fmt: skip


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's all-NaN slice warnings inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def _relative(frame: pl.DataFrame, window: int, config: DriftConfig) -> pl.DataFrame:
    """Values of ``window`` divided by each item's mean over the baseline windows before it."""
    base = (
        frame.filter(
            pl.col("w").is_between(
                window + 1 + config.baseline_gap_windows,
                window + config.baseline_gap_windows + config.baseline_windows,
            )
        )
        .group_by("item_id", "category")
        .agg(pl.col("y").mean().alias("_base"))
    )
    return (
        frame.filter(pl.col("w") == window)
        .join(base, on=["item_id", "category"], how="inner")
        .filter(pl.col("_base") > 0)
        .with_columns((pl.col("y") / pl.col("_base")).alias("rel"))
    )


def _by_category(rel: pl.DataFrame) -> dict[str, np.ndarray]:
    return {
        str(key[0]): part["rel"].to_numpy()
        for key, part in rel.select("category", "rel").partition_by("category", as_dict=True).items()
    }


def _category_drift(
    category: str,
    cur: np.ndarray,
    seasonal_ref: np.ndarray,
    levels: _Levels,
    summary: Mapping[str, float] | None,
    config: DriftConfig,
) -> CategoryDrift:
    i = levels.categories.index(category) if category in levels.categories else None
    seasonal = bool(i is not None and levels.seasonal[i])
    if seasonal:
        ref = seasonal_ref
        tests = distribution_tests(cur, ref, config)
        comparison = "seasonal"
    elif summary and _qkey(0.5) in summary:
        ref = reference_sample(summary)
        tests = distribution_tests(
            cur,
            ref,
            config,
            reference_zero_rate=summary.get("zero_share"),
            reference_n=int(summary.get("n", 0)),
        )
        comparison = "reference"
    else:
        tests = distribution_tests(cur, np.asarray([]), config)
        comparison = "none"
    level_test, score = _level_test(levels, i, config)
    tests.append(level_test)
    material = i is not None and bool(levels.share[i] >= config.min_share)
    drifted = material and drift_by_tests(tests)
    return CategoryDrift(category=category, comparison=comparison, drifted=drifted, score=score, tests=tests)


def _level_test(levels: _Levels, i: int | None, config: DriftConfig) -> tuple[DriftTest, float | None]:
    if i is None:
        return DriftTest(
            name="level", statistic=None, threshold=config.uncalibrated_level, verdict=INSUFFICIENT
        ), None
    now = float(levels.stat[i, 0])
    threshold = float(levels.threshold[i])
    verdict = _verdict(now, threshold, enough=True)
    test = DriftTest(name="level", statistic=_num(now), threshold=round(threshold, 6), verdict=verdict,
                     n_current=1, n_reference=int(levels.calibration[i]))  # fmt: skip
    return test, _num(now)
