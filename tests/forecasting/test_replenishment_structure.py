"""Error structure read from a bundle, and a store's proposals from files: orders due in the window count."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pytest

from forecasting.bundle.format import read_manifest
from forecasting.bundle.scoring import score
from forecasting.bundle.signing import generate_key_files
from forecasting.common.config import DataConfig, TrainConfig, TrainSection
from forecasting.models.fitted import load_fitted
from forecasting.replenishment.policy import CYCLE
from forecasting.replenishment.proposals import PROPOSAL_COLUMNS, proposals
from forecasting.replenishment.structure import error_structure
from forecasting.training.pipeline import train, write_run
from tests.forecasting._bundles import build_bundle, key_pair, small_frame


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame, pl.DataFrame]:
    """A bundle with AutoETS for category A and SeasonalNaive for B, scored on its own history."""
    tmp = tmp_path_factory.mktemp("structure")
    frame = small_frame(stores=1, items=4, days=120)
    private, _ = key_pair(tmp)
    bundle = build_bundle(tmp / "bundle", frame, {"A": "AutoETS", "B": "SeasonalNaive"}, private)
    forecasts = score(bundle, frame).with_columns(
        model_name=pl.lit("demand"), model_version=pl.lit(1, dtype=pl.Int32)
    )
    return bundle, frame, forecasts


def test_structure_takes_alpha_from_the_fitted_state_and_the_season_from_seasonal_naive(
    scored: tuple[Path, pl.DataFrame, pl.DataFrame],
) -> None:
    """AutoETS series carry their own fitted alpha; SeasonalNaive series the season; unit sales are counts."""
    bundle, frame, forecasts = scored
    structure = error_structure(bundle, frame, forecasts)
    states = load_fitted(bundle, read_manifest(bundle)).states["AutoETS"]
    alphas = dict(zip(states["item_id"].to_list(), states["par"].list.get(0).to_list(), strict=True))
    for row in structure.iter_rows(named=True):
        if row["item_id"] in alphas:
            assert row["alpha"] == pytest.approx(alphas[row["item_id"]]) and row["season"] == 0
        else:
            assert row["season"] == 7 and row["alpha"] == 0.0
        assert row["count"] and not row["count_law"] and row["dispersion"] >= 1.0
    assert structure.height == 4


def _positions(backorders: list[float], review_period_days: int) -> pl.DataFrame:
    """Positions of items I00001 and I00002: 5 on hand, lead time 2, 90 % cycle service, no constraints."""
    return pl.DataFrame(
        {
            "item_id": ["I00001", "I00002"],
            "on_hand": [5.0, 5.0],
            "backorders": backorders,
            "lead_time_days": [2, 2],
            "review_period_days": [review_period_days] * 2,
            "service_metric": [CYCLE, CYCLE],
            "target_service_level": [0.9, 0.9],
            "pack_size": [1.0, 1.0],
            "min_order": [0.0, 0.0],
            "shelf_capacity": [None, None],
        },
        schema_overrides={
            "lead_time_days": pl.Int32,
            "review_period_days": pl.Int32,
            "shelf_capacity": pl.Float64,
        },
    )


def _orders(due: list[date]) -> pl.DataFrame:
    """One open order of 10 for each of I00001 and I00002, due on ``due``."""
    return pl.DataFrame({"item_id": ["I00001", "I00002"], "due_date": due, "quantity": [10.0, 10.0]})


def test_only_orders_due_within_lead_time_and_review_period_count(
    scored: tuple[Path, pl.DataFrame, pl.DataFrame],
) -> None:
    """An order due on the last day of lead time + review period counts; one due the day after does not."""
    bundle, frame, forecasts = scored
    first = forecasts["ds"].min()
    positions = _positions(backorders=[0.0, 2.0], review_period_days=3)
    orders = _orders([first + timedelta(days=4), first + timedelta(days=5)])
    out = proposals(forecasts, error_structure(bundle, frame, forecasts), positions, orders)
    assert out.columns == PROPOSAL_COLUMNS
    rows = out.rows_by_key("item_id", named=True, unique=True)
    assert rows["I00001"]["inventory_position"] == 15.0
    assert rows["I00002"]["inventory_position"] == 3.0
    assert rows["I00001"]["category"] == "A" and rows["I00001"]["model"] == "AutoETS"
    assert rows["I00001"]["model_version"] == 1


def test_weekly_forecasts_count_orders_due_within_lead_time_and_review_period_in_weeks(
    scored: tuple[Path, pl.DataFrame, pl.DataFrame],
) -> None:
    """With weekly forecasts the window is in weeks: an order due in the last week of it counts."""
    bundle, frame, forecasts = scored
    first = forecasts["ds"].min()
    weekly = forecasts.with_columns(ds=first + (pl.col("ds") - first) * 7)
    positions = _positions(backorders=[0.0, 0.0], review_period_days=1)
    orders = _orders([first + timedelta(weeks=2), first + timedelta(weeks=3)])
    out = proposals(weekly, error_structure(bundle, frame, weekly), positions, orders)
    rows = out.rows_by_key("item_id", named=True, unique=True)
    assert rows["I00001"]["inventory_position"] == 15.0
    assert rows["I00002"]["inventory_position"] == 5.0


def test_an_ensemble_of_constant_alpha_members_weighs_their_alphas(tmp_path: Path) -> None:
    """Ensemble(Naive+SeasonalNaive): every series gets the members' weighted alpha (1 and 0: 0.5)."""
    frame = small_frame(stores=1, items=3, days=120)
    section = TrainSection(horizon=7, season_length=7, levels=[80])
    section = msgspec.structs.replace(section, models=["Naive", "SeasonalNaive"], ensemble_top_k=2)
    result = train(frame, TrainConfig(data=DataConfig(freq="D"), train=section))
    label = "Ensemble(Naive+SeasonalNaive)"
    forced = result.assignment.with_columns(pl.lit(label).alias("model"))
    key, _, _ = generate_key_files(tmp_path / "k")
    write_run(dataclasses.replace(result, assignment=forced), tmp_path / "b", signing_key=key)
    forecasts = score(tmp_path / "b", frame)
    assert set(forecasts["model"]) == {label}
    structure = error_structure(tmp_path / "b", frame, forecasts)
    assert structure.height == 3
    assert structure["alpha"].to_list() == pytest.approx([0.5, 0.5, 0.5])
