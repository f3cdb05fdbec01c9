"""The scoring engine: bundle + history -> forecasts with intervals for every series."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from forecasting.bundle.scoring import output_columns, score
from forecasting.common.errors import DataError
from tests.forecasting._bundles import build_bundle, key_pair, small_frame


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    """Two stores x four items, 120 days."""
    return small_frame()


@pytest.fixture(scope="module")
def mixed_bundle(tmp_path_factory: pytest.TempPathFactory, frame: pl.DataFrame) -> Path:
    """Category A on AutoETS (fitted state), B on SeasonalNaive (refit at the edge)."""
    tmp = tmp_path_factory.mktemp("mixed")
    private, _ = key_pair(tmp)
    return build_bundle(tmp / "bundle", frame, {"A": "AutoETS", "B": "SeasonalNaive"}, private)


def test_every_series_gets_horizon_rows_with_intervals(
    mixed_bundle: Path, frame: pl.DataFrame, tmp_path: Path
) -> None:
    """Each series gets h rows after its last date, intervals nested around the forecast, sorted."""
    out = score(mixed_bundle, frame, horizon=10, levels=[80, 95], out=tmp_path / "f.parquet")
    assert out.columns == output_columns([80, 95])
    assert out.height == 8 * 10
    assert out.equals(out.sort("store_id", "item_id", "ds"))
    assert pl.read_parquet(tmp_path / "f.parquet").equals(out)
    last = frame["ds"].max()
    first_future = out.group_by("store_id", "item_id").agg(pl.col("ds").min())["ds"].unique().to_list()
    assert first_future == [last + timedelta(days=1)]
    assert (out["forecast-lo-95"] <= out["forecast-lo-80"]).all()
    assert (out["forecast-lo-80"] <= out["forecast"]).all()
    assert (out["forecast"] <= out["forecast-hi-80"]).all()
    assert (out["forecast-hi-80"] <= out["forecast-hi-95"]).all()
    models = dict(out.select("category", "model").unique().iter_rows())
    assert models == {"A": "AutoETS", "B": "SeasonalNaive"}


def test_seasonal_naive_repeats_last_season(mixed_bundle: Path, frame: pl.DataFrame) -> None:
    """SeasonalNaive forecasts repeat the last 7 observed days of the store's history."""
    out = score(mixed_bundle, frame, horizon=7, levels=[80])
    one = out.filter(pl.col("store_id") == "S001", pl.col("item_id") == "I00002")
    tail = frame.filter(pl.col("store_id") == "S001", pl.col("item_id") == "I00002").sort("ds")["y"][-7:]
    np.testing.assert_array_equal(one["forecast"].to_numpy(), tail.to_numpy())
    assert out.columns == output_columns([80])


def test_new_series_use_fallback_and_unknown_are_skipped(mixed_bundle: Path, frame: pl.DataFrame) -> None:
    """A series the bundle does not know is forecast with the fallback model; missing ones are skipped."""
    new = frame.filter(pl.col("item_id") == "I00001", pl.col("store_id") == "S001").with_columns(
        item_id=pl.lit("I09999")
    )
    history = pl.concat([frame.filter(pl.col("store_id") == "S002"), new])
    out = score(mixed_bundle, history, horizon=5)
    assert out.select("store_id", "item_id").n_unique() == 5
    assert out.filter(pl.col("item_id") == "I09999")["model"].unique().to_list() == ["SeasonalNaive"]


def test_gaps_in_history_are_filled_with_zero(mixed_bundle: Path, frame: pl.DataFrame) -> None:
    """Missing days inside a series count as zero sales instead of shifting the season."""
    gappy = frame.filter(
        ~((pl.col("item_id") == "I00002") & (pl.col("ds") == pl.col("ds").max() - timedelta(days=2)))
    )
    out = score(mixed_bundle, gappy, horizon=7)
    one = out.filter(pl.col("store_id") == "S001", pl.col("item_id") == "I00002")["forecast"].to_list()
    assert one[4] == 0.0


def test_history_without_required_columns(mixed_bundle: Path, frame: pl.DataFrame) -> None:
    """A history frame missing y is a DataError."""
    with pytest.raises(DataError):
        score(mixed_bundle, frame.drop("y"))


def test_unsorted_history_scores_like_sorted(mixed_bundle: Path, frame: pl.DataFrame) -> None:
    """Row order of the history does not matter (the sorted fast path and the sorting path agree)."""
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    assert score(mixed_bundle, shuffled, horizon=7).equals(score(mixed_bundle, frame, horizon=7))


def test_chunks_and_threads_do_not_change_results(
    mixed_bundle: Path, frame: pl.DataFrame, tmp_path: Path
) -> None:
    """Scoring in many small chunks on two threads, streamed to Parquet, equals one chunk on one thread."""
    one = score(mixed_bundle, frame, horizon=7, threads=1)
    many = score(mixed_bundle, frame, horizon=7, threads=2, chunk_series=3, out=tmp_path / "f.parquet")
    assert many.equals(one)
    assert pl.read_parquet(tmp_path / "f.parquet").equals(one)


def test_empty_history(mixed_bundle: Path, frame: pl.DataFrame) -> None:
    """An empty history gives an empty forecast frame with the output columns."""
    out = score(mixed_bundle, frame.clear(), horizon=7)
    assert out.height == 0
    assert out.columns == output_columns([80, 95])
