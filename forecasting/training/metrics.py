"""Forecast accuracy metrics, per series and aggregated per category, per store and overall.

Per-series MAE, sMAPE, MASE, RMSSE, bias and interval coverage come from ``utilsforecast.losses``
(averaged over backtest cutoffs); sMAPE is reported on the M4 0-200 scale. WAPE and WMAE (holiday
periods weighted x5, Kaggle's Walmart metric) are pooled sums. Aggregates pool sums (MAE, WAPE, WMAE)
and average per-series ratios (sMAPE, MASE, RMSSE, bias, coverage), as the M4 organisers do.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

ID = "unique_id"
HOLIDAY_WEIGHT = 5.0
MEAN_METRICS = ("smape", "mase", "rmsse", "bias")
ALL_METRICS = ("mae", "wape", "smape", "mase", "rmsse", "bias", "wmae")


def _long(wide: pl.DataFrame, models: Sequence[str], name: str) -> pl.DataFrame:
    """utilsforecast's wide frame to ``unique_id, model, <name>`` (mean over cutoffs)."""
    keys = [c for c in (ID, "cutoff") if c in wide.columns]
    long = wide.unpivot(index=keys, on=list(models), variable_name="model", value_name=name)
    long = long.with_columns(pl.when(pl.col(name).is_finite()).then(pl.col(name)).otherwise(None).alias(name))
    return long.group_by(ID, "model").agg(pl.col(name).mean())


def per_series(
    cv: pl.DataFrame,
    models: Sequence[str],
    train: pl.DataFrame,
    *,
    season_length: int,
    levels: Sequence[int] = (),
    holiday_col: str | None = None,
) -> pl.DataFrame:
    """One row per (series, model): metrics plus the sums that aggregate correctly.

    ``cv``: ``unique_id, ds, cutoff, y`` and one column per model (``<model>-lo-80`` etc. for coverage);
    ``train``: the in-sample history ``unique_id, ds, y`` that scales MASE and RMSSE.
    """
    from utilsforecast import losses

    models = list(models)
    m = max(season_length, 1)
    parts = [
        _long(losses.mae(cv, models), models, "mae"),
        _long(losses.smape(cv, models), models, "smape").with_columns(pl.col("smape") * 200.0),
        _long(losses.mase(cv, models, seasonality=m, train_df=train), models, "mase"),
        _long(losses.rmsse(cv, models, seasonality=m, train_df=train), models, "rmsse"),
        _long(losses.bias(cv, models), models, "bias"),
    ]
    for level in levels:
        with_pi = [mm for mm in models if f"{mm}-lo-{level}" in cv.columns]
        if with_pi:
            parts.append(_long(losses.coverage(cv, with_pi, level=level), with_pi, f"coverage_{level}"))
    weight = (
        pl.when(pl.col(holiday_col)).then(HOLIDAY_WEIGHT).otherwise(1.0)
        if holiday_col and holiday_col in cv.columns
        else pl.lit(1.0)
    )
    sums = (
        cv.with_columns(weight.alias("_w"))
        .unpivot(index=[ID, "y", "_w"], on=models, variable_name="model", value_name="_f")
        .with_columns((pl.col("_f") - pl.col("y")).abs().alias("_ae"))
        .group_by(ID, "model")
        .agg(
            pl.len().alias("n"),
            pl.col("_ae").sum().alias("abs_err_sum"),
            pl.col("y").abs().sum().alias("abs_y_sum"),
            (pl.col("_ae") * pl.col("_w")).sum().alias("w_abs_err_sum"),
            pl.col("_w").sum().alias("w_sum"),
        )
    )
    out = sums
    for part in parts:
        out = out.join(part, on=[ID, "model"], how="left")
    out = out.with_columns(
        (pl.col("abs_err_sum") / pl.col("abs_y_sum")).alias("wape"),
        (pl.col("w_abs_err_sum") / pl.col("w_sum")).alias("wmae"),
    ).with_columns(pl.when(pl.col("wape").is_finite()).then(pl.col("wape")).otherwise(None).alias("wape"))
    order = pl.Enum(models)
    return (
        out.with_columns(pl.col("model").cast(order))
        .sort(ID, "model")
        .with_columns(pl.col("model").cast(pl.Utf8))
    )


def aggregate(series_metrics: pl.DataFrame, by: Sequence[str] = ()) -> pl.DataFrame:
    """Metrics per ``by`` group and model (overall when ``by`` is empty)."""
    coverage_cols = [c for c in series_metrics.columns if c.startswith("coverage_")]
    keys = [*by, "model"]
    # A fixed row order makes every float sum below reproducible to the last bit.
    ordered = series_metrics.sort([*keys, ID] if ID in series_metrics.columns else keys, maintain_order=True)
    out = ordered.group_by(keys, maintain_order=True).agg(
        pl.len().alias("series"),
        (pl.col("abs_err_sum").sum() / pl.col("n").sum()).alias("mae"),
        (pl.col("abs_err_sum").sum() / pl.col("abs_y_sum").sum()).alias("wape"),
        *[pl.col(c).mean().alias(c) for c in MEAN_METRICS],
        *[pl.col(c).mean().alias(c) for c in coverage_cols],
        (pl.col("w_abs_err_sum").sum() / pl.col("w_sum").sum()).alias("wmae"),
    )
    return out.sort(keys, maintain_order=True)


def owa(smape: float, mase: float, smape_naive2: float, mase_naive2: float) -> float:
    """The M4 organisers' Overall Weighted Average, relative to Naive2."""
    return 0.5 * (smape / smape_naive2 + mase / mase_naive2)
