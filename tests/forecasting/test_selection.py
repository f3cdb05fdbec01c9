"""Selection: best candidate per category (or series), fallback for short series, top-k ensembles."""

from __future__ import annotations

import polars as pl

from forecasting.common.config import TrainSection
from forecasting.models.families import ensemble_members
from forecasting.training.backtest import run_backtest
from forecasting.training.selection import select_models
from tests.forecasting._engine import two_category_frame

CFG = TrainSection(
    horizon=7, season_length=7, windows=2, step=7, models=["Naive", "SeasonalNaive", "WindowAverage"]
)


def test_category_selection_picks_the_lowest_metric_and_falls_back_for_short_series() -> None:
    """The selected model has the row's lowest metric; the short series gets the fallback."""
    result = run_backtest(two_category_frame(), CFG, "D", intervals=False)
    sel = select_models(result, metric="mae", fallback="Naive")
    for row in sel.table.iter_rows(named=True):
        scores = {m: row[m] for m in CFG.models}
        assert row["selected"] == min(scores, key=lambda m: scores[m])
    assert sel.table.filter(pl.col("category") == "fresh")["selected"].item() == "SeasonalNaive"
    short = sel.assignment.filter(pl.col("unique_id") == "S1/I08").row(0, named=True)
    assert (short["model"], short["reason"]) == ("Naive", "too_short")
    assert sel.assignment.height == 9


def test_series_selection_chooses_per_series() -> None:
    """select_by=series without a minimum of evidence gives each backtested series its own best model."""
    result = run_backtest(two_category_frame(), CFG, "D", intervals=False)
    sel = select_models(result, metric="mae", by="series", min_improvement=0.0, min_windows=0)
    assert sel.table.height == 8
    best = result.series_metrics.sort("unique_id", "mae").group_by("unique_id", maintain_order=True).first()
    chosen = dict(sel.assignment.select("unique_id", "model").iter_rows())
    for uid, model in best.select("unique_id", "model").iter_rows():
        assert chosen[uid] == model


def test_top_k_ensemble_is_scored_and_chosen_only_when_better() -> None:
    """With top_k=2 an Ensemble(A+B) candidate is scored per group and wins only if it beats all singles."""
    result = run_backtest(two_category_frame(), CFG, "D", intervals=False)
    sel = select_models(result, metric="mae", top_k=2)
    ens_cols = [c for c in sel.table.columns if c.startswith("Ensemble(")]
    assert ens_cols
    for row in sel.table.iter_rows(named=True):
        singles = min(row[m] for m in CFG.models)
        assert row["mae"] <= singles + 1e-12
        if row["selected"].startswith("Ensemble("):
            assert len(ensemble_members(row["selected"])) == 2


def test_select_all_gives_every_backtested_series_one_model() -> None:
    """select_by=all picks the single candidate (or ensemble) with the best pooled metric for every series."""
    result = run_backtest(two_category_frame(), CFG, "D", intervals=False)
    sel = select_models(result, metric="mae", by="all", top_k=2)
    tested = sel.assignment.filter(pl.col("reason") == "backtest")
    assert tested["model"].n_unique() == 1
    assert sel.table.height == 1 and sel.table["selected"].item() == tested["model"][0]


def test_series_with_thin_evidence_take_their_category_choice() -> None:
    """A series keeps its own winner only with enough windows and a clear margin over its category's."""
    result = run_backtest(two_category_frame(), CFG, "D", intervals=False)
    by_category = select_models(result, metric="mae", by="category")
    category_choice = dict(by_category.table.select("category", "selected").iter_rows())
    few_windows = select_models(result, metric="mae", by="series", min_windows=3)  # the backtest has 2
    tested = few_windows.assignment.filter(pl.col("reason") != "too_short")
    assert set(tested["reason"]) == {"category"}
    for category, model in tested.select("category", "model").iter_rows():
        assert model == category_choice[category]
    strict = select_models(result, metric="mae", by="series", min_windows=2, min_improvement=0.5)
    series_scores = result.series_metrics.select("unique_id", "model", "mae")
    for row in strict.assignment.filter(pl.col("reason") == "series").iter_rows(named=True):
        own = series_scores.filter(
            (pl.col("unique_id") == row["unique_id"]) & (pl.col("model") == row["model"])
        )
        theirs = series_scores.filter(
            (pl.col("unique_id") == row["unique_id"]) & (pl.col("model") == category_choice[row["category"]])
        )
        assert own["mae"].item() <= 0.5 * theirs["mae"].item()


def test_selection_table_names_the_runner_up_and_the_margin() -> None:
    """Each group's row names the runner-up and the winner's relative margin over it."""
    result = run_backtest(two_category_frame(), CFG, "D", intervals=False)
    sel = select_models(result, metric="mae")
    for row in sel.table.iter_rows(named=True):
        scores = sorted((row[m], m) for m in CFG.models)
        assert row["runner_up"] == scores[1][1]
        assert abs(row["margin"] - (1 - scores[0][0] / scores[1][0])) < 1e-12
