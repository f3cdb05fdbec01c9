"""Live accuracy per category x horizon bucket: pooled sums, ratios and an independent WAPE check."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecasting.monitoring.accuracy import Sums, bucket_labels, evaluate, with_horizon


def _forecasts(actuals: pl.DataFrame, cutoff: date, horizon: int, noise: float, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    future = actuals.filter((pl.col("ds") > cutoff) & (pl.col("ds") <= cutoff + timedelta(days=7 * horizon)))
    f = future["y"].to_numpy() * rng.normal(1.0, noise, future.height)
    return future.select("store_id", "item_id", "category", "ds").with_columns(
        pl.Series("forecast", f),
        pl.Series("forecast-lo-80", f * 0.8),
        pl.Series("forecast-hi-80", f * 1.2),
        pl.Series("forecast-lo-95", f * 0.6),
        pl.Series("forecast-hi-95", f * 1.4),
        pl.lit("SeasonalNaive").alias("model"),
    )


def test_bucket_labels_cover_every_step() -> None:
    """Buckets are consecutive and the last one is open."""
    assert [b[2] for b in bucket_labels((1, 4, 13))] == ["1", "2-4", "5-13", "14+"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=40),
    st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=40),
)
def test_pooled_sums_add_up_and_ratios_are_bounded(ys: list[float], fs: list[float]) -> None:
    """Sums of two halves give the whole's WAPE; coverage lies in [0, 1]; MAE >= |bias|."""
    n = min(len(ys), len(fs))
    y, f = np.asarray(ys[:n]), np.asarray(fs[:n])

    def sums(sl: slice) -> Sums:
        e = f[sl] - y[sl]
        hits = int(np.sum(np.abs(e) <= 0.1 * np.abs(y[sl])))
        return Sums(n=len(e), abs_err_sum=float(np.abs(e).sum()), abs_y_sum=float(np.abs(y[sl]).sum()),
                    err_sum=float(e.sum()), covered={"80": hits})  # fmt: skip

    whole = sums(slice(None))
    a, b = sums(slice(0, n // 2)), sums(slice(n // 2, None))
    r = whole.ratios()
    assert a.n + b.n == whole.n
    assert a.abs_err_sum + b.abs_err_sum == pytest.approx(whole.abs_err_sum)
    if whole.abs_y_sum > 0:
        assert r.wape == pytest.approx(np.abs(f - y).sum() / np.abs(y).sum())
    assert r.mae is not None and r.bias is not None
    assert r.mae >= abs(r.bias) - 1e-9
    assert 0.0 <= r.coverage["80"] <= 1.0


def _walmart(shared_data: Path) -> pl.DataFrame:
    from forecasting.data.loading import read_text_table

    raw = read_text_table(shared_data / "walmart" / "train.csv.gz")
    return raw.filter(pl.col("Store").is_in(["1", "2", "3"])).select(
        pl.col("Store").alias("store_id"),
        pl.col("Dept").alias("item_id"),
        pl.col("Dept").alias("category"),
        pl.col("Date").str.to_date().alias("ds"),
        pl.col("Weekly_Sales").cast(pl.Float64).alias("y"),
    )


def test_accuracy_rows_match_an_independent_wape_on_walmart_weeks(shared_data: Path) -> None:
    """WAPE, MAE, bias and coverage per category x bucket equal a plain NumPy computation on the same rows."""
    data = _walmart(shared_data)
    cutoff = date(2012, 4, 27)
    forecasts = _forecasts(data, cutoff, 13, 0.2, seed=1)
    history = data.filter(pl.col("ds") <= cutoff)
    rows, _ = evaluate(forecasts, data, history=history, season_length=52, buckets=(1, 4, 13))
    assert {r.horizon_bucket for r in rows} == {"1", "2-4", "5-13"}
    steps = with_horizon(forecasts).join(
        data.select("store_id", "item_id", "ds", "y"), on=["store_id", "item_id", "ds"]
    )
    for row in rows:
        lo, hi = {"1": (1, 1), "2-4": (2, 4), "5-13": (5, 13)}[row.horizon_bucket]
        part = steps.filter((pl.col("category") == row.category) & pl.col("h").is_between(lo, hi))
        y, f = part["y"].to_numpy(), part["forecast"].to_numpy()
        assert row.n == len(y)
        if np.abs(y).sum() > 0:
            assert row.wape == pytest.approx(np.abs(f - y).sum() / np.abs(y).sum(), rel=1e-9)
        assert row.mae == pytest.approx(np.abs(f - y).mean(), rel=1e-9)
        assert row.bias == pytest.approx((f - y).mean(), rel=1e-9, abs=1e-6)
        inside = (y >= part["forecast-lo-80"].to_numpy()) & (y <= part["forecast-hi-80"].to_numpy())
        assert row.coverage["80"] == pytest.approx(inside.mean())
    assert any(r.mase is not None and r.mase > 0 for r in rows)


def test_backtest_wape_is_carried_into_each_row() -> None:
    """The manifest's backtest WAPE of a category is copied into its rows (model-drift ratio)."""
    actuals = pl.DataFrame(
        {
            "store_id": ["S1"] * 4,
            "item_id": ["I1", "I1", "I2", "I2"],
            "category": ["A", "A", "B", "B"],
            "ds": [date(2024, 1, 1), date(2024, 1, 2)] * 2,
            "y": [10.0, 10.0, 5.0, 0.0],
        }
    )
    forecasts = actuals.with_columns((pl.col("y") + 1).alias("forecast")).drop("y")
    rows, _ = evaluate(forecasts, actuals, backtest={"A": {"wape": 0.2}})
    by_cat = {r.category: r for r in rows}
    assert by_cat["A"].backtest_wape == 0.2
    assert by_cat["A"].wape == pytest.approx(2 / 20)
    assert by_cat["B"].backtest_wape is None
    assert by_cat["B"].bias == pytest.approx(1.0)
