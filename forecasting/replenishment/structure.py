"""How each series' forecast errors add up over several periods, read from the served bundle.

The per-period intervals of a forecast say how uncertain each day is, not how the days' errors move
together: quantiles of a sum are not sums of quantiles. :func:`error_structure` records, per series,
what the lead-time distribution (:mod:`forecasting.replenishment.lead_time`) needs beside the forecast:

- ``alpha``: the weight of a level-type error shared by later periods. The h-step error of a local level
  model (simple exponential smoothing) is ``e_h = eps_h + alpha * (eps_1 + ... + eps_{h-1})``. AutoETS
  takes ``alpha`` from its fitted state, the Theta family from its fitted state too (its SES level);
  Naive and RandomWalkWithDrift are random walks (``alpha = 1``); window and historic averages forecast a
  flat mean of many past periods (``alpha = 0``, independent periods); the smoothing families (SES,
  Croston, TSB, ADIDA, IMAPA) use their smoothing constant when the bundle fixes it (``alpha``,
  ``alpha_p`` for TSB's demand probability) and :data:`DEFAULT_ALPHA` when the edge estimates it, as does
  any other family (the global model, MSTL, ...). An ensemble takes the weighted mean of its members'
  ``alpha``. Treating an intermittent rate as independent from day to day under-covers: on m5_mini the
  95 % quantile of 14-day totals covered 85 % with ``alpha = 0`` and 92 % with ``0.1``.
- ``season``: SeasonalNaive repeats the last season, so errors of days one season apart share their
  source (``season = m``); 0 for every other family.
- ``count`` and ``dispersion``: whether the history is whole non-negative numbers (unit sales), and the
  index of dispersion (variance over mean, at least 1) of its last 182 periods, the same statistic as the
  count intervals of :func:`forecasting.models.kernels.count_intervals`.
- ``count_law``: count series forecast by an intermittent family (or an ensemble with one), whose daily
  demand is negative binomial with variance ``dispersion * mean``; their interval bounds are count
  quantiles, so their spread is taken from that law rather than from the bounds.

Nothing here refits a model: it reads the manifest, the fitted-state tables and the history.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from forecasting.bundle.format import Manifest, ModelEntry, read_manifest
from forecasting.models.fitted import INTERMITTENT_FAMILIES, load_fitted

KEYS = ["store_id", "item_id"]
STRUCTURE_SCHEMA = pl.Schema(
    {
        "store_id": pl.Utf8,
        "item_id": pl.Utf8,
        "alpha": pl.Float64,
        "season": pl.Int32,
        "count": pl.Boolean,
        "dispersion": pl.Float64,
        "count_law": pl.Boolean,
    }
)
# Level weight of families whose smoothing constant is estimated at the edge or not exposed: the classic
# constant of Croston's method (statsforecast's CrostonClassic), a slow-moving level.
DEFAULT_ALPHA = 0.1
DISPERSION_WINDOW = 182
_RANDOM_WALKS = frozenset({"Naive", "RandomWalkWithDrift"})
_FLAT_RATE = frozenset({"HistoricAverage", "WindowAverage", "SeasonalWindowAverage"})
_THETA = frozenset({"AutoTheta", "Theta", "OptimizedTheta", "DynamicTheta", "DynamicOptimizedTheta"})


def error_structure(bundle_dir: Path, history: pl.DataFrame, forecasts: pl.DataFrame) -> pl.DataFrame:
    """One row per forecast series: ``store_id, item_id, alpha, season, count, dispersion, count_law``.

    ``forecasts`` is the scored frame (its ``model`` column names each series' model label);
    ``history`` the canonical frame it was scored from.
    """
    manifest = read_manifest(bundle_dir)
    series = forecasts.select(*KEYS, "model").unique(KEYS, keep="first").sort(KEYS)
    fitted = load_fitted(bundle_dir, manifest)
    per_label: list[pl.DataFrame] = []
    for (label,), group in series.group_by("model", maintain_order=True):
        keys = group.select(KEYS)
        alpha, season, intermittent = _label_structure(str(label), manifest, fitted.states, keys)
        per_label.append(
            keys.with_columns(alpha=alpha, season=pl.lit(season, pl.Int32), intermittent=pl.lit(intermittent))
        )
    frame = (
        pl.concat(per_label)
        if per_label
        else pl.DataFrame(schema={**dict.fromkeys(KEYS, pl.Utf8), "alpha": pl.Float64})
    )
    if not per_label:
        frame = frame.with_columns(season=pl.lit(0, pl.Int32), intermittent=pl.lit(value=False))
    counts = _count_statistics(history)
    out = frame.join(counts, on=KEYS, how="left").with_columns(
        pl.col("count").fill_null(value=False), pl.col("dispersion").fill_null(1.0)
    )
    out = out.with_columns(count_law=pl.col("count") & pl.col("intermittent"))
    return out.select(list(STRUCTURE_SCHEMA)).cast(STRUCTURE_SCHEMA).sort(KEYS)


def _label_structure(
    label: str, manifest: Manifest, states: dict[str, pl.DataFrame], keys: pl.DataFrame
) -> tuple[pl.Expr | pl.Series, int, bool]:
    """(alpha per series, season, intermittent) of the model ``label``."""
    entry = manifest.models.get(label) or ModelEntry(state="refit-at-edge", family=label)
    if entry.state != "ensemble":
        return *_single(label, entry, manifest, states, keys), entry.family in INTERMITTENT_FAMILIES
    members = [str(m) for m in entry.params.get("members", [])]
    weights = [float(w) for w in entry.params.get("weights", [])]
    total: pl.Series | None = None
    intermittent = False
    for member, weight in zip(members, weights, strict=True):
        inner = manifest.models.get(member) or ModelEntry(state="refit-at-edge", family=member)
        intermittent |= inner.family in INTERMITTENT_FAMILIES
        alpha, _ = _single(member, inner, manifest, states, keys)
        # a member's constant alpha (a literal) is broadcast to one value per series of the label
        values = alpha if isinstance(alpha, pl.Series) else keys.with_columns(_alpha=alpha)["_alpha"]
        total = values * weight if total is None else total + values * weight
    return (total if total is not None else pl.lit(DEFAULT_ALPHA)), 0, intermittent


def _single(
    label: str, entry: ModelEntry, manifest: Manifest, states: dict[str, pl.DataFrame], keys: pl.DataFrame
) -> tuple[pl.Expr | pl.Series, int]:
    family = entry.family
    if family == "SeasonalNaive":
        return pl.lit(0.0), int(entry.params.get("season_length", manifest.season_length))
    if family in _RANDOM_WALKS:
        return pl.lit(1.0), 0
    if family in _FLAT_RATE:
        return pl.lit(0.0), 0
    if label in states and (family == "AutoETS" or family in _THETA):
        table = states[label]
        column = pl.col("par").list.get(0) if family == "AutoETS" else pl.col("alpha")
        alpha = keys.join(table.select(*KEYS, _alpha=column), on=KEYS, how="left", maintain_order="left")
        return alpha["_alpha"].fill_null(DEFAULT_ALPHA).clip(0.0, 1.0).alias("alpha"), 0
    fixed = entry.params.get("alpha_p" if family == "TSB" else "alpha")
    if isinstance(fixed, int | float):
        return pl.lit(min(max(float(fixed), 0.0), 1.0)), 0
    return pl.lit(DEFAULT_ALPHA), 0


def _count_statistics(history: pl.DataFrame) -> pl.DataFrame:
    """Per series: unit sales or not, and the dispersion index of the recent history (at least 1)."""
    y = pl.col("y").cast(pl.Float64)
    whole = history.group_by(KEYS).agg(count=((y >= 0) & (y == y.floor())).all())
    recent = (
        history.sort(*KEYS, "ds")
        .group_by(KEYS, maintain_order=True)
        .tail(DISPERSION_WINDOW)
        .group_by(KEYS)
        .agg(mean=y.mean(), var=y.var(ddof=1))
        .select(
            *KEYS,
            dispersion=pl.when(pl.col("mean") > 0)
            .then(pl.col("var") / pl.col("mean"))
            .otherwise(1.0)
            .fill_null(1.0)
            .fill_nan(1.0)
            .clip(lower_bound=1.0),
        )
    )
    return whole.join(recent, on=KEYS, how="left")
