"""Model selection from backtest evidence: per category (default) or per series, with a fallback model.

Optionally the mean of each group's top-k candidates is scored on the same backtest as one more candidate
(``Ensemble(A+B)``) and chosen only when it beats every single model of that group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import polars as pl

from forecasting import metrics
from forecasting.backtest import ID, BacktestResult

ENSEMBLE_PREFIX = "Ensemble("
SCOPE = "scope"
LOWER_IS_BETTER = {"mae", "wape", "smape", "mase", "rmsse", "wmae"}


def ensemble_name(members: list[str]) -> str:
    """``Ensemble(A+B)`` for members A and B (in rank order)."""
    return f"{ENSEMBLE_PREFIX}{'+'.join(members)})"


def ensemble_members(name: str) -> list[str]:
    """Members of an ensemble name, or ``[name]`` for a single model."""
    if name.startswith(ENSEMBLE_PREFIX) and name.endswith(")"):
        return name[len(ENSEMBLE_PREFIX) : -1].split("+")
    return [name]


@dataclass(frozen=True)
class Selection:
    """The selection table (group -> model, metric of every candidate) and the per-series choice."""

    table: pl.DataFrame
    assignment: pl.DataFrame
    metric: str
    by: str
    fallback: str


def _score(series_metrics: pl.DataFrame, group: str, metric: str) -> pl.DataFrame:
    """``group, model, score`` from per-series metrics (``score`` is the metric aggregated per group)."""
    agg = metrics.aggregate(series_metrics, [group])
    return agg.select(group, "model", pl.col(metric).alias("score"), "series")


def _pick(scores: pl.DataFrame, group: str, order: list[str]) -> pl.DataFrame:
    """Best model per group; ties and missing scores resolved by candidate order."""
    rank = {name: i for i, name in enumerate(order)}
    ranked = scores.filter(pl.col("score").is_not_null() & pl.col("score").is_finite()).with_columns(
        pl.col("model").replace_strict(rank, default=len(rank)).alias("_rank")
    )
    return ranked.sort(group, "score", "_rank").group_by(group, maintain_order=True).first().drop("_rank")


def select_models(
    result: BacktestResult,
    *,
    metric: str,
    by: str = "category",
    fallback: str = "Naive",
    top_k: int = 0,
    season_length: int = 1,
) -> Selection:
    """Per ``by`` group (``category``, ``series`` or ``all``): the candidate with the best ``metric``."""
    group = {"category": "category", "series": ID}.get(by, SCOPE)
    if group == SCOPE:
        scope = pl.lit("all").alias(SCOPE)
        result = dataclasses.replace(
            result,
            series_metrics=result.series_metrics.with_columns(scope),
            series=result.series.with_columns(scope),
        )
    sm = result.series_metrics
    if metric == "wmae" and "wmae" not in sm.columns:
        metric = "mae"
    candidates = list(result.models)
    scores = _score(sm, group, metric)
    if top_k >= 2:
        sm, candidates, scores = _add_ensembles(result, scores, group, metric, top_k, season_length)
    best = _pick(scores, group, candidates)
    wide = scores.pivot(on="model", index=group, values="score").sort(group)
    table = (
        best.select(group, pl.col("model").alias("selected"), pl.col("score").alias(metric), "series")
        .join(wide, on=group, how="left")
        .sort(group)
    )
    series = result.series
    short = series.filter(pl.col(ID).is_in(result.short_series))
    tested = series.filter(~pl.col(ID).is_in(result.short_series))
    chosen = tested.join(
        best.select(group, pl.col("model").alias("model")), on=group, how="left"
    ).with_columns(pl.col("model").fill_null(fallback), pl.lit("backtest").alias("reason"))
    fallback_rows = short.with_columns(pl.lit(fallback).alias("model"), pl.lit("too_short").alias("reason"))
    assignment = (
        pl.concat([chosen, fallback_rows], how="vertical_relaxed")
        .select(ID, "store_id", "item_id", "category", "model", "reason")
        .sort(ID)
    )
    return Selection(table=table, assignment=assignment, metric=metric, by=by, fallback=fallback)


def _add_ensembles(
    result: BacktestResult, scores: pl.DataFrame, group: str, metric: str, top_k: int, season_length: int
) -> tuple[pl.DataFrame, list[str], pl.DataFrame]:
    order = list(result.models)
    ranked = (
        scores.filter(pl.col("score").is_not_null())
        .with_columns(pl.col("model").replace_strict({m: i for i, m in enumerate(order)}).alias("_rank"))
        .sort(group, "score", "_rank")
    )
    tops = ranked.group_by(group, maintain_order=True).agg(pl.col("model").head(top_k).alias("members"))
    rank = {m: i for i, m in enumerate(order)}
    tops = tops.filter(pl.col("members").list.len() >= 2).with_columns(
        # Members in candidate order, so the same set always gets the same name.
        pl.col("members").map_elements(
            lambda m: sorted(m, key=rank.__getitem__), return_dtype=pl.List(pl.Utf8)
        )
    )
    combos = sorted({tuple(m) for m in tops["members"].to_list()})
    if not combos:
        return result.series_metrics, order, scores
    extra_keys = [SCOPE] if group == SCOPE else []
    cv = result.cv
    names = [ensemble_name(list(c)) for c in combos]
    cv = cv.with_columns(
        [pl.mean_horizontal([pl.col(m) for m in c]).alias(n) for c, n in zip(combos, names, strict=True)]
    )
    extra = metrics.per_series(
        cv,
        names,
        result.train,
        season_length=season_length,
        holiday_col="is_holiday" if "is_holiday" in cv.columns else None,
    ).join(result.series.select(ID, "store_id", "item_id", "category", *extra_keys), on=ID, how="left")
    group_of = tops.with_columns(
        pl.col("members").map_elements(lambda m: ensemble_name(list(m)), return_dtype=pl.Utf8).alias("model")
    ).select(group, "model")
    ens_scores = _score(extra, group, metric).join(group_of, on=[group, "model"], how="semi")
    sm = pl.concat([result.series_metrics, extra], how="diagonal_relaxed")
    return sm, [*order, *names], pl.concat([scores, ens_scores], how="vertical_relaxed")
