"""Live accuracy of scored forecasts once the actuals are in: per category x horizon bucket.

Rows carry pooled sums (absolute errors, absolute actuals, signed errors, scaled errors, interval hits)
besides the ratios, so that the server can pool rows of many stores and periods exactly: WAPE is
sum |f - y| / sum |y|, MAE sum |f - y| / n, bias sum (f - y) / n (positive: over-forecast), MASE the
mean of |f - y| / scale with the series' in-sample seasonal-naive MAE as scale (M4 convention), and
coverage the share of actuals inside each prediction interval. (``forecasting.training.metrics`` averages
per-series ratios over backtest cutoffs; pooled sums are what aggregates across stores here.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import polars as pl

from forecasting.common.contracts import AccuracyRow

KEYS = ("store_id", "item_id")
DEFAULT_BUCKETS: dict[str, tuple[int, ...]] = {
    "D": (7, 14, 28, 56),
    "W": (1, 4, 8, 13, 26),
    "H": (24, 48, 168),
}


def bucket_labels(edges: Sequence[int]) -> list[tuple[int, int | None, str]]:
    """``(low, high, label)`` per bucket: ``1-7``, ``8-14``, ... and an open last bucket ``57+``."""
    out: list[tuple[int, int | None, str]] = []
    low = 1
    for high in edges:
        out.append((low, high, str(low) if low == high else f"{low}-{high}"))
        low = high + 1
    out.append((low, None, f"{low}+"))
    return out


def bucket_expr(h: pl.Expr, edges: Sequence[int]) -> pl.Expr:
    """The bucket label of horizon step ``h``."""
    expr: pl.Expr = pl.lit("?")
    for low, high, label in reversed(bucket_labels(edges)):
        cond = h >= low if high is None else h.is_between(low, high)
        expr = pl.when(cond).then(pl.lit(label)).otherwise(expr)
    return expr


def with_horizon(forecasts: pl.DataFrame) -> pl.DataFrame:
    """Add ``h``: the step of each row among the run's forecast dates (1 = the first date forecast).

    Every series of a scoring run is forecast from the same history end, so the step is the rank of
    the date among all the run's dates (a series with a gap in its rows keeps true steps).
    """
    return forecasts.with_columns(pl.col("ds").rank("dense").cast(pl.Int32).alias("h"))


def series_scale(history: pl.DataFrame, season_length: int) -> pl.DataFrame:
    """Per series, the in-sample MAE of the seasonal naive forecast (MASE's denominator)."""
    m = max(season_length, 1)
    return (
        history.sort([*KEYS, "ds"])
        .with_columns((pl.col("y") - pl.col("y").shift(m).over(list(KEYS))).abs().alias("_d"))
        .group_by(list(KEYS))
        .agg(pl.col("_d").mean().alias("scale"))
    )


def evaluate(
    forecasts: pl.DataFrame,
    actuals: pl.DataFrame,
    *,
    history: pl.DataFrame | None = None,
    season_length: int = 7,
    levels: Sequence[int] = (80, 95),
    buckets: Sequence[int] = DEFAULT_BUCKETS["D"],
    backtest: Mapping[str, Mapping[str, float]] | None = None,
    forecast_col: str = "forecast",
) -> tuple[list[AccuracyRow], pl.DataFrame]:
    """Accuracy rows per category x horizon bucket, and the joined rows they were computed from.

    ``forecasts``: a scoring run's output (``store_id, item_id, category, ds, forecast``, interval
    columns ``forecast-lo-80`` ...); ``actuals``: canonical rows (``store_id, item_id, ds, y``);
    ``history``: the data the forecasts were made from (MASE scale; omitted: no MASE);
    ``backtest``: the manifest's ``metrics`` (category -> ``wape``), copied into each row. A column
    ``h`` in ``forecasts`` is taken as the horizon step (else computed by :func:`with_horizon`).
    """
    fc = forecasts if "h" in forecasts.columns else with_horizon(forecasts)
    fc = fc.with_columns(pl.col("ds").cast(pl.Date))
    act = actuals.select(*KEYS, pl.col("ds").cast(pl.Date), pl.col("y").cast(pl.Float64))
    joined = fc.join(act, on=[*KEYS, "ds"], how="inner").filter(
        pl.col("y").is_finite() & pl.col(forecast_col).is_finite()
    )
    if history is not None and history.height:
        joined = joined.join(series_scale(history, season_length), on=list(KEYS), how="left")
    else:
        joined = joined.with_columns(pl.lit(None, dtype=pl.Float64).alias("scale"))
    err = pl.col(forecast_col) - pl.col("y")
    joined = joined.with_columns(
        bucket_expr(pl.col("h"), buckets).alias("horizon_bucket"),
        err.alias("_e"),
        err.abs().alias("_ae"),
        pl.when(pl.col("scale") > 0).then(err.abs() / pl.col("scale")).otherwise(None).alias("_sae"),
    )
    present = [lv for lv in levels if f"{forecast_col}-lo-{lv}" in joined.columns]
    hits = [
        pl.col("y")
        .is_between(pl.col(f"{forecast_col}-lo-{lv}"), pl.col(f"{forecast_col}-hi-{lv}"))
        .sum()
        .alias(f"_hit{lv}")
        for lv in present
    ]
    grouped = (
        joined.group_by("category", "horizon_bucket")
        .agg(
            pl.len().alias("n"),
            pl.col("_ae").sum().alias("abs_err_sum"),
            pl.col("y").abs().sum().alias("abs_y_sum"),
            pl.col("_e").sum().alias("err_sum"),
            pl.col("_sae").sum().alias("scaled_abs_err_sum"),
            pl.col("_sae").count().alias("scaled_n"),
            pl.col("h").min().alias("_hmin"),
            *hits,
        )
        .sort("category", "_hmin")
    )
    rows: list[AccuracyRow] = []
    for r in grouped.iter_rows(named=True):
        n = int(r["n"])
        covered = {str(lv): int(r[f"_hit{lv}"]) for lv in present}
        bt = (backtest or {}).get(str(r["category"]), {}).get("wape")
        sums = Sums(
            n=n,
            abs_err_sum=float(r["abs_err_sum"]),
            abs_y_sum=float(r["abs_y_sum"]),
            err_sum=float(r["err_sum"]),
            scaled_abs_err_sum=float(r["scaled_abs_err_sum"] or 0.0),
            scaled_n=int(r["scaled_n"]),
            covered=covered,
        )
        rows.append(
            AccuracyRow(
                category=str(r["category"]),
                horizon_bucket=str(r["horizon_bucket"]),
                **msgspec.structs.asdict(sums),
                **msgspec.structs.asdict(sums.ratios()),
                backtest_wape=float(bt) if bt is not None else None,
            )
        )
    return rows, joined


class Sums(msgspec.Struct, frozen=True, kw_only=True):
    """Pooled sums of one group of rows; they add up across stores and periods."""

    n: int
    abs_err_sum: float
    abs_y_sum: float
    err_sum: float
    scaled_abs_err_sum: float = 0.0
    scaled_n: int = 0
    covered: dict[str, int] = msgspec.field(default_factory=dict)

    def ratios(self) -> Ratios:
        """WAPE, MAE, MASE, bias and coverage (None where undefined)."""
        n = self.n
        return Ratios(
            wape=self.abs_err_sum / self.abs_y_sum if self.abs_y_sum > 0 else None,
            mae=self.abs_err_sum / n if n else None,
            mase=self.scaled_abs_err_sum / self.scaled_n if self.scaled_n else None,
            bias=self.err_sum / n if n else None,
            coverage={lv: hits / n for lv, hits in self.covered.items()} if n else {},
        )


class Ratios(msgspec.Struct, frozen=True, kw_only=True):
    wape: float | None
    mae: float | None
    mase: float | None
    bias: float | None
    coverage: dict[str, float]
