"""Metrics: M4 conventions for sMAPE and MASE, pooled WAPE, WMAE with holiday weight 5, OWA."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecasting.training import metrics


def _cv() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "unique_id": ["a", "a", "b", "b"],
            "ds": [3, 4, 3, 4],
            "cutoff": [2, 2, 2, 2],
            "y": [10.0, 20.0, 0.0, 4.0],
            "m": [12.0, 20.0, 1.0, 2.0],
            "m-lo-80": [9.0, 25.0, -1.0, 1.0],
            "m-hi-80": [13.0, 30.0, 2.0, 3.0],
            "is_holiday": [True, False, False, False],
        }
    )


def _train() -> pl.DataFrame:
    return pl.DataFrame(
        {"unique_id": ["a"] * 3 + ["b"] * 3, "ds": [0, 1, 2] * 2, "y": [1.0, 3.0, 5.0, 0, 2, 0]}
    )


def test_per_series_metrics_follow_m4_conventions() -> None:
    """sMAPE is on 0-200, MASE divides by the in-sample seasonal-naive MAE, coverage counts hits."""
    sm = metrics.per_series(_cv(), ["m"], _train(), season_length=1, levels=[80], holiday_col="is_holiday")
    a = sm.filter(pl.col("unique_id") == "a").row(0, named=True)
    assert a["mae"] == pytest.approx(1.0)
    assert a["smape"] == pytest.approx(200 * (2 / 22) / 2)
    assert a["mase"] == pytest.approx(1.0 / 2.0)
    assert a["coverage_80"] == pytest.approx(0.5)
    assert a["wape"] == pytest.approx(2 / 30)
    assert a["wmae"] == pytest.approx((5 * 2 + 0) / 6)
    b = sm.filter(pl.col("unique_id") == "b").row(0, named=True)
    assert b["smape"] == pytest.approx(200 * ((1 / 1) + (2 / 6)) / 2)


def test_aggregate_pools_sums_and_averages_ratios() -> None:
    """Overall MAE/WAPE/WMAE pool the sums; sMAPE/MASE are means of per-series values."""
    sm = metrics.per_series(_cv(), ["m"], _train(), season_length=1, holiday_col="is_holiday")
    overall = metrics.aggregate(sm).row(0, named=True)
    assert overall["mae"] == pytest.approx((2 + 0 + 1 + 2) / 4)
    assert overall["wape"] == pytest.approx(5 / 34)
    assert overall["wmae"] == pytest.approx((10 + 0 + 1 + 2) / (5 + 1 + 1 + 1))
    assert overall["smape"] == pytest.approx(sm["smape"].mean())


def test_owa_is_mean_of_relative_smape_and_mase() -> None:
    """OWA = (sMAPE/sMAPE_Naive2 + MASE/MASE_Naive2) / 2."""
    assert metrics.owa(10, 1, 20, 2) == pytest.approx(0.5)
    assert metrics.owa(18.383, 2.395, 18.383, 2.395) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.booleans()), min_size=1, max_size=30)
)
def test_property_wmae_between_min_and_max_error(points: list[tuple[float, float, bool]]) -> None:
    """WMAE is a weighted mean of absolute errors: within [min, max] of them, and 0 for perfect forecasts."""
    n = len(points)
    cv = pl.DataFrame(
        {
            "unique_id": ["s"] * n,
            "ds": list(range(n)),
            "cutoff": [0] * n,
            "y": [p[0] for p in points],
            "m": [p[1] for p in points],
            "is_holiday": [p[2] for p in points],
        }
    )
    train = pl.DataFrame({"unique_id": ["s", "s"], "ds": [-2, -1], "y": [0.0, 1.0]})
    sm = metrics.per_series(cv, ["m"], train, season_length=1, holiday_col="is_holiday")
    errors = [abs(p[0] - p[1]) for p in points]
    wmae = sm["wmae"].item()
    assert min(errors) - 1e-6 <= wmae <= max(errors) + 1e-6
    perfect = metrics.per_series(cv.with_columns(pl.col("y").alias("m")), ["m"], train, season_length=1)
    assert perfect["mae"].item() == 0.0
