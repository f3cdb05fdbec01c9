"""M4 Hourly: the pipeline's benchmarks reproduce the organisers' published sMAPE / MASE / OWA."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from forecasting.common.config import load_train_config
from forecasting.data.validation import load_canonical
from forecasting.models.families import build_models
from forecasting.training import metrics
from forecasting.training.backtest import sf_frame

PROJECT = Path(__file__).resolve().parents[2]
MODELS = ["Naive", "SeasonalNaive", "Naive2", "SESD", "ThetaM4"]


@pytest.fixture(scope="module")
def m4_scores(shared_data: Path) -> dict[str, dict[str, float]]:
    """sMAPE and MASE per method on the 414 Hourly series (horizon 48), computed through the pipeline."""
    from statsforecast import StatsForecast

    cfg = load_train_config([PROJECT / "configs" / "m4-hourly.toml"])
    folder = shared_data / "m4"
    train = load_canonical(folder / "Hourly-train.csv", cfg.data).frame
    test = load_canonical(folder / "Hourly-test.csv", cfg.data).frame
    assert train.select("item_id").n_unique() == 414
    ends = train.group_by("item_id").agg(pl.col("ds").max().alias("_end"))
    # Test periods count from the configured start; they continue each series' own history.
    test = test.join(ends, on="item_id").with_columns(
        (pl.col("_end") + (pl.col("ds") - pl.col("ds").min().over("item_id")) + pl.duration(hours=1)).alias(
            "ds"
        )
    )
    history = sf_frame(train)
    sf = StatsForecast(models=build_models(MODELS, cfg.train, 48, intervals=False), freq="1h")
    forecasts = sf.forecast(df=history, h=48).join(sf_frame(test.drop("_end")), on=["unique_id", "ds"])
    assert forecasts.height == 414 * 48
    table = metrics.aggregate(metrics.per_series(forecasts, MODELS, history, season_length=24))
    return {r["model"]: {"smape": r["smape"], "mase": r["mase"]} for r in table.iter_rows(named=True)}


def test_naive_snaive_naive2_reproduce_published_scores_to_three_decimals(
    m4_scores: dict[str, dict[str, float]],
) -> None:
    """Naive, sNaive and Naive2 match the published Hourly sMAPE and MASE to 3 decimals."""
    published = {
        "Naive": (43.003, 11.608),
        "SeasonalNaive": (13.912, 1.193),
        "Naive2": (18.383, 2.395),
    }
    for model, (smape, mase) in published.items():
        assert round(m4_scores[model]["smape"], 3) == pytest.approx(smape, abs=1e-9), model
        assert round(m4_scores[model]["mase"], 3) == pytest.approx(mase, abs=1e-9), model


def test_ses_and_theta_within_tolerance(m4_scores: dict[str, dict[str, float]]) -> None:
    """SES is within 0.01 sMAPE / 0.005 MASE of 18.094 / 2.385; Theta within 0.1 sMAPE of 18.138 / 2.455."""
    assert abs(m4_scores["SESD"]["smape"] - 18.094) <= 0.01
    assert abs(m4_scores["SESD"]["mase"] - 2.385) <= 0.005
    assert abs(m4_scores["ThetaM4"]["smape"] - 18.138) <= 0.1
    assert abs(m4_scores["ThetaM4"]["mase"] - 2.455) <= 0.01


def test_owa_as_the_organisers_define_it(m4_scores: dict[str, dict[str, float]], shared_data: Path) -> None:
    """OWA relative to Naive2 matches the published Hourly OWA of SES and sNaive."""
    published = pl.read_csv(shared_data / "m4" / "m4_published_point_scores.csv")
    owa_row = published.filter(pl.col("metric") == "OWA")
    expected = dict(zip(owa_row["method"].to_list(), owa_row["Hourly"].to_list(), strict=True))
    n2 = m4_scores["Naive2"]
    for ours, theirs, tol in (
        ("SeasonalNaive", "sNaive", 0.001),
        ("SESD", "SES", 0.002),
        ("Naive2", "Naive2", 0),
    ):
        got = metrics.owa(m4_scores[ours]["smape"], m4_scores[ours]["mase"], n2["smape"], n2["mase"])
        assert abs(got - expected[theirs]) <= tol + 1e-12, (ours, got, expected[theirs])
