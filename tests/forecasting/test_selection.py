"""Selection: best candidate per category (or series), fallback for short series, top-k ensembles."""

from __future__ import annotations

import polars as pl

from forecasting.backtest import run_backtest
from forecasting.config import TrainSection
from forecasting.selection import ensemble_members, select_models
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
    """select_by=series gives each backtested series its own best model."""
    result = run_backtest(two_category_frame(), CFG, "D", intervals=False)
    sel = select_models(result, metric="mae", by="series")
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
