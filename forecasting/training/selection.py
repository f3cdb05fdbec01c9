"""Model selection from backtest evidence: per category (default) or per series, with a fallback model.

Optionally the mean of each group's top-k candidates is scored on the same backtest as one more candidate
(``Ensemble(A+B)``) and chosen only when it beats every single model of that group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import polars as pl

from forecasting.models.families import ensemble_name
from forecasting.training import metrics
from forecasting.training.backtest import ID, BacktestResult

SCOPE = "scope"
LOWER_IS_BETTER = {"mae", "wape", "smape", "mase", "rmsse", "wmae"}


@dataclass(frozen=True)
class Selection:
    """The selection table (group -> model, metric of every candidate, runner-up and margin), the
    per-series choice and, for a per-series selection, the per-category table it shrinks towards."""

    table: pl.DataFrame
    assignment: pl.DataFrame
    metric: str
    by: str
    fallback: str
    categories: pl.DataFrame | None = None


def _score(series_metrics: pl.DataFrame, group: str, metric: str) -> pl.DataFrame:
    """``group, model, score`` from per-series metrics (``score`` is the metric aggregated per group)."""
    agg = metrics.aggregate(series_metrics, [group])
    return agg.select(group, "model", pl.col(metric).alias("score"), "series")


def _ranked(scores: pl.DataFrame, group: str, order: list[str]) -> pl.DataFrame:
    """Scores sorted best first within each group; ties and missing scores resolved by candidate order."""
    rank = {name: i for i, name in enumerate(order)}
    ranked = scores.filter(pl.col("score").is_not_null() & pl.col("score").is_finite()).with_columns(
        pl.col("model").replace_strict(rank, default=len(rank)).alias("_rank")
    )
    return ranked.sort(group, "score", "_rank").drop("_rank")


def _pick(scores: pl.DataFrame, group: str, order: list[str]) -> pl.DataFrame:
    """Best model per group, with the runner-up and the winner's margin over it (relative, 0.05 = 5 %)."""
    ranked = _ranked(scores, group, order)
    return (
        ranked.group_by(group, maintain_order=True)
        .agg(
            pl.col("model").first(),
            pl.col("score").first(),
            pl.col("series").first(),
            pl.col("model").get(1, null_on_oob=True).alias("runner_up"),
            pl.col("score").get(1, null_on_oob=True).alias("runner_up_score"),
        )
        .with_columns((1.0 - pl.col("score") / pl.col("runner_up_score")).alias("margin"))
    )


def _choose(
    result: BacktestResult, group: str, metric: str, top_k: int, season_length: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``(best per group, selection table, per-series metrics incl. ensembles)`` for one grouping."""
    sm = result.series_metrics
    candidates = list(result.models)
    scores = _score(sm, group, metric)
    if top_k >= 2:
        sm, candidates, scores = _add_ensembles(result, scores, group, metric, top_k, season_length)
    best = _pick(scores, group, candidates)
    wide = scores.pivot(on="model", index=group, values="score").sort(group)
    table = (
        best.select(
            group,
            pl.col("model").alias("selected"),
            pl.col("score").alias(metric),
            "runner_up",
            "margin",
            "series",
        )
        .join(wide, on=group, how="left")
        .sort(group)
    )
    return best, table, sm


def select_models(
    result: BacktestResult,
    *,
    metric: str,
    by: str = "category",
    fallback: str = "Naive",
    top_k: int = 0,
    season_length: int = 1,
    min_improvement: float = 0.1,
    min_windows: int = 3,
) -> Selection:
    """Per ``by`` group (``category``, ``series`` or ``all``): the candidate with the best ``metric``.

    Per series, the evidence of one series is thin: a series keeps its own winner only when the backtest
    has at least ``min_windows`` windows and that winner beats its category's choice on the series by at
    least ``min_improvement`` (relative); otherwise it takes the category's choice (shrinkage towards
    the group, reason ``category``).
    """
    group = {"category": "category", "series": ID}.get(by, SCOPE)
    if group == SCOPE:
        scope = pl.lit("all").alias(SCOPE)
        result = dataclasses.replace(
            result,
            series_metrics=result.series_metrics.with_columns(scope),
            series=result.series.with_columns(scope),
        )
    if metric == "wmae" and "wmae" not in result.series_metrics.columns:
        metric = "mae"
    best, table, _ = _choose(result, group, metric, top_k, season_length)
    series = result.series
    short = series.filter(pl.col(ID).is_in(result.short_series))
    tested = series.filter(~pl.col(ID).is_in(result.short_series))
    chosen = tested.join(best.select(group, "model", pl.col("score").alias("_own")), on=group, how="left")
    chosen = chosen.with_columns(pl.lit("backtest").alias("reason"))
    categories = None
    if group == ID:
        cat_best, categories, cat_sm = _choose(result, "category", metric, top_k, season_length)
        on_series = _score(cat_sm, ID, metric).select(
            ID, pl.col("model").alias("_cat"), pl.col("score").alias("_cs")
        )
        chosen = (
            chosen.join(cat_best.select("category", pl.col("model").alias("_cat")), on="category", how="left")
            .join(on_series, on=[ID, "_cat"], how="left")
            .with_columns(
                (
                    (result.windows >= min_windows)
                    & (pl.col("_own") <= (1.0 - min_improvement) * pl.col("_cs"))
                )
                .fill_null(value=False)
                .alias("_keep")
            )
            .with_columns(
                pl.when(pl.col("_keep") | pl.col("_cat").is_null())
                .then(pl.col("model"))
                .otherwise(pl.col("_cat")),
                pl.when(pl.col("_keep") | pl.col("_cat").is_null())
                .then(pl.lit("series"))
                .otherwise(pl.lit("category"))
                .alias("reason"),
            )
        )
    chosen = chosen.with_columns(pl.col("model").fill_null(fallback))
    fallback_rows = short.with_columns(pl.lit(fallback).alias("model"), pl.lit("too_short").alias("reason"))
    assignment = (
        pl.concat([chosen.select(*short.columns, "model", "reason"), fallback_rows], how="vertical_relaxed")
        .select(ID, "store_id", "item_id", "category", "model", "reason")
        .sort(ID)
    )
    return Selection(
        table=table, assignment=assignment, metric=metric, by=by, fallback=fallback, categories=categories
    )


def summary_rows(selection: Selection) -> list[dict[str, object]]:
    """Per group (per category for a per-series selection): winner, runner-up and margin, for people."""
    table = selection.categories if selection.categories is not None else selection.table
    group = next(c for c in table.columns if c not in {"selected"})
    rows: list[dict[str, object]] = []
    kept = None
    if selection.categories is not None:
        kept = dict(
            selection.assignment.group_by("category")
            .agg((pl.col("reason") == "series").sum().alias("n"))
            .iter_rows()
        )
    for r in table.iter_rows(named=True):
        row: dict[str, object] = {
            group: r[group],
            "winner": r["selected"],
            selection.metric: r[selection.metric],
            "runner_up": r["runner_up"],
            "margin_pct": None if r["margin"] is None else round(100.0 * r["margin"], 2),
        }
        if kept is not None:
            row["series_own_choice"] = kept.get(r[group], 0)
        rows.append(row)
    return rows


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
