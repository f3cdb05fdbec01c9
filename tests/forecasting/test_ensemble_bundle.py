"""Every candidate that can win selection is deployed as selected: ensembles and the M4 benchmarks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest

from forecasting.bundle.format import verify
from forecasting.bundle.scoring import score
from forecasting.bundle.signing import generate_key_files
from forecasting.common.config import DataConfig, TrainConfig, TrainSection
from forecasting.data.synthetic import generate
from forecasting.training.pipeline import forecast_selected, train, write_run


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    """Two stores x five items of synthetic daily sales, 200 days."""
    return generate(stores=2, items=5, days=200, seed=11)


def _config(**train: object) -> TrainConfig:
    section = msgspec.structs.replace(TrainSection(horizon=14, season_length=7, levels=[80]), **train)
    return TrainConfig(data=DataConfig(freq="D"), train=section)


def test_winning_ensemble_is_bundled_with_its_members_and_scored_as_their_mean(
    frame: pl.DataFrame, tmp_path: Path
) -> None:
    """An ensemble of a fitted-state model (AutoETS) and a refit one wins for all series; the bundle
    carries it as an ensemble entry plus each member, and scoring gives the members' mean."""
    cfg = _config(models=["AutoETS", "SeasonalNaive"], ensemble_top_k=2, select_by="all", metric="mae")
    result = train(frame, cfg)
    forced = result.assignment.with_columns(pl.lit("Ensemble(AutoETS+SeasonalNaive)").alias("model"))
    result = dataclasses.replace(result, assignment=forced)
    key, pub, _ = generate_key_files(tmp_path / "k")
    write_run(result, tmp_path / "b", signing_key=key)
    manifest = verify(tmp_path / "b", [pub])
    ensemble = manifest.models["Ensemble(AutoETS+SeasonalNaive)"]
    assert ensemble.state == "ensemble"
    assert ensemble.params == {"members": ["AutoETS", "SeasonalNaive"], "weights": [0.5, 0.5]}
    assert manifest.models["AutoETS"].state == "fitted-state"
    scored = score(tmp_path / "b", frame)
    members = forecast_selected(
        frame, forced.with_columns(pl.lit("SeasonalNaive").alias("model")), cfg.train, "D"
    ).join(
        forecast_selected(frame, forced.with_columns(pl.lit("AutoETS").alias("model")), cfg.train, "D"),
        on=["unique_id", "ds"],
        suffix="_ets",
    )
    expected = members.select(
        "unique_id", "ds", ((pl.col("forecast") + pl.col("forecast_ets")) / 2).alias("e")
    )
    got = scored.select(
        pl.concat_str("store_id", "item_id", separator="/").alias("unique_id"), "ds", "forecast", "model"
    ).join(expected, on=["unique_id", "ds"])
    assert got.height == scored.height == 10 * 14
    assert set(got["model"]) == {"Ensemble(AutoETS+SeasonalNaive)"}
    np.testing.assert_allclose(got["forecast"].to_numpy(), got["e"].to_numpy(), rtol=1e-6)
    lo, hi = scored["forecast-lo-80"].to_numpy(), scored["forecast-hi-80"].to_numpy()
    assert np.all(lo <= scored["forecast"].to_numpy() + 1e-9) and np.all(
        scored["forecast"].to_numpy() <= hi + 1e-9
    )


def test_m4_benchmarks_are_deployed_when_they_win(frame: pl.DataFrame, tmp_path: Path) -> None:
    """Naive2, SESD and ThetaM4 take part in selection and, when chosen, are what the bundle scores."""
    cfg = _config(models=["Naive2", "SESD", "ThetaM4"], select_by="series", metric="mae")
    result = train(frame, cfg)
    key, _, _ = generate_key_files(tmp_path / "k")
    record = write_run(result, tmp_path / "b", signing_key=key)
    chosen = set(result.assignment["model"])
    assert chosen <= {"Naive2", "SESD", "ThetaM4"}
    assert set(record["selection"]["models"]) == chosen
    scored = score(tmp_path / "b", frame)
    assert set(scored["model"]) == chosen
    assert scored["forecast"].is_finite().all()
    point = forecast_selected(frame, result.assignment, cfg.train, "D")
    np.testing.assert_allclose(
        scored.sort("store_id", "item_id", "ds")["forecast"].to_numpy(),
        point["forecast"].to_numpy(),
        rtol=1e-6,
    )


def test_ensemble_with_the_global_model_is_calibrated_on_its_own_backtest_errors(
    frame: pl.DataFrame, tmp_path: Path
) -> None:
    """An ensemble with LightGBM carries per-step quantiles of its backtest |error| / level; the edge's
    bounds are its mean -+ those quantiles times each series' level at its last period."""
    from forecasting.models.gbm_features import level_scale

    cfg = _config(
        models=["SeasonalNaive", "LightGBM"], ensemble_top_k=2, select_by="all", windows=4, gbm_rounds=20
    )
    result = train(frame, cfg)
    label = "Ensemble(SeasonalNaive+LightGBM)"
    forced = result.assignment.with_columns(pl.lit(label).alias("model"))
    result = dataclasses.replace(result, assignment=forced)
    key, pub, _ = generate_key_files(tmp_path / "k")
    write_run(result, tmp_path / "b", signing_key=key)
    quantiles = verify(tmp_path / "b", [pub]).models[label].params["interval_scaled_quantiles"]
    assert len(quantiles["80"]) == 14 and all(q > 0 for q in quantiles["80"])
    scored = score(tmp_path / "b", frame).sort("store_id", "item_id", "ds")
    history = frame.sort("store_id", "item_id", "ds")
    y = history["y"].cast(pl.Float64).to_numpy()
    ends = (
        history.with_row_index()
        .group_by("store_id", "item_id")
        .agg(pl.col("index").max())
        .sort("store_id", "item_id")["index"]
        .to_numpy()
    )
    level = level_scale(y, ends - 199, ends, 7)
    width = np.repeat(level, 14) * np.tile(quantiles["80"], len(level))
    mean = scored["forecast"].to_numpy()
    hi = scored["forecast-hi-80"].to_numpy()
    np.testing.assert_allclose(hi, mean + width, rtol=1e-6)
    # The synthetic history has returns (negative sales), so the bounds are not floored at 0.
    np.testing.assert_allclose(scored["forecast-lo-80"].to_numpy(), mean - width, rtol=1e-6, atol=1e-9)


def test_ensemble_with_mstl_scores_from_its_bundle(frame: pl.DataFrame, tmp_path: Path) -> None:
    """MSTL keeps its seasons as a list: an ensemble with it is calibrated and scored like any other."""
    cfg = _config(
        models=["SeasonalNaive", "MSTL"], mstl_season_lengths=[7, 28], ensemble_top_k=2, select_by="all"
    )
    result = train(frame, cfg)
    label = "Ensemble(SeasonalNaive+MSTL)"
    result = dataclasses.replace(
        result, assignment=result.assignment.with_columns(pl.lit(label).alias("model"))
    )
    key, pub, _ = generate_key_files(tmp_path / "k")
    write_run(result, tmp_path / "b", signing_key=key)
    assert verify(tmp_path / "b", [pub]).models["MSTL"].params["season_length"] == [7, 28]
    scored = score(tmp_path / "b", frame)
    assert scored.height == 10 * 14 and set(scored["model"]) == {label}
    assert scored.select(pl.col("forecast", "forecast-lo-80", "forecast-hi-80").is_nan().any()).row(0) == (
        False,
        False,
        False,
    )
    assert (scored["forecast-lo-80"] <= scored["forecast-hi-80"]).all()
