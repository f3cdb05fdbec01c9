"""Backtest plots (PNG): actual vs forecast for a few series; error by category and model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from forecasting.training import metrics
from forecasting.training.backtest import ID, BacktestResult
from forecasting.training.selection import Selection


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_series(
    result: BacktestResult, selection: Selection, history: pl.DataFrame, out: Path, n_series: int = 4
) -> Path:
    """The last backtest window of up to ``n_series`` of the largest series: history, actuals, forecasts."""
    plt = _pyplot()
    top = (
        result.series_metrics.group_by(ID)
        .agg(pl.col("abs_y_sum").first())
        .sort("abs_y_sum", ID, descending=[True, False])
        .head(n_series)[ID]
        .to_list()
    )
    chosen = dict(selection.assignment.select(ID, "model").iter_rows())
    fig, axes = plt.subplots(len(top), 1, figsize=(10, 2.6 * max(len(top), 1)), squeeze=False)
    last_cutoff = result.cv["cutoff"].max()
    for ax, uid in zip(axes[:, 0], top, strict=False):
        hist = history.filter(pl.col(ID) == uid).tail(result.horizon * 4)
        cv = result.cv.filter((pl.col(ID) == uid) & (pl.col("cutoff") == last_cutoff))
        ax.plot(hist["ds"].to_list(), hist["y"].to_list(), color="black", linewidth=1, label="actual")
        model = chosen.get(uid, result.models[0])
        shown = [m for m in dict.fromkeys([model, "SeasonalNaive", "Naive"]) if m in cv.columns][:2]
        for m in shown:
            ax.plot(cv["ds"].to_list(), cv[m].to_list(), linewidth=1.4, label=m)
            lo, hi = f"{m}-lo-80", f"{m}-hi-80"
            if lo in cv.columns:
                ax.fill_between(cv["ds"].to_list(), cv[lo].to_list(), cv[hi].to_list(), alpha=0.2)
        ax.set_title(f"{uid} (selected: {model})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_errors(result: BacktestResult, selection: Selection, out: Path, max_categories: int = 30) -> Path:
    """Heat map of the selection metric per category and model, relative to the category's best model."""
    plt = _pyplot()
    metric = selection.metric
    agg = metrics.aggregate(result.series_metrics.filter(pl.col("model").is_in(result.models)), ["category"])
    wide = agg.pivot(on="model", index="category", values=metric).sort("category").head(max_categories)
    models = [m for m in result.models if m in wide.columns]
    values = wide.select(models).to_numpy()
    best = values.min(axis=1, keepdims=True)
    rel = values / best
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 3, 0.3 * wide.height + 2))
    image = ax.imshow(rel, aspect="auto", cmap="RdYlGn_r", vmin=1.0, vmax=2.0)
    ax.set_xticks(range(len(models)), models, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(wide.height), [str(c) for c in wide["category"].to_list()], fontsize=7)
    for i in range(wide.height):
        j = int(rel[i].argmin())
        ax.text(j, i, "*", ha="center", va="center", fontsize=9)
    ax.set_title(f"{metric} relative to the best model per category (* = best)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
