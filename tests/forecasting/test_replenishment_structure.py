"""Error structure read from a bundle, and a store's proposals from files: orders due in the window count."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from forecasting.bundle.format import read_manifest
from forecasting.bundle.scoring import score
from forecasting.models.fitted import load_fitted
from forecasting.replenishment.policy import CYCLE
from forecasting.replenishment.proposals import PROPOSAL_COLUMNS, proposals
from forecasting.replenishment.structure import error_structure
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


def test_only_orders_due_within_lead_time_and_review_period_count(
    scored: tuple[Path, pl.DataFrame, pl.DataFrame],
) -> None:
    """An order due on the last day of lead time + review period counts; one due the day after does not."""
    bundle, frame, forecasts = scored
    first = forecasts["ds"].min()
    positions = pl.DataFrame(
        {
            "item_id": ["I00001", "I00002"],
            "on_hand": [5.0, 5.0],
            "backorders": [0.0, 2.0],
            "lead_time_days": [2, 2],
            "review_period_days": [3, 3],
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
    orders = pl.DataFrame(
        {
            "item_id": ["I00001", "I00002"],
            "due_date": [first + timedelta(days=4), first + timedelta(days=5)],
            "quantity": [10.0, 10.0],
        }
    )
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
    positions = pl.DataFrame(
        {
            "item_id": ["I00001", "I00002"],
            "on_hand": [5.0, 5.0],
            "backorders": [0.0, 0.0],
            "lead_time_days": [2, 2],
            "review_period_days": [1, 1],
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
    orders = pl.DataFrame(
        {
            "item_id": ["I00001", "I00002"],
            "due_date": [first + timedelta(weeks=2), first + timedelta(weeks=3)],
            "quantity": [10.0, 10.0],
        }
    )
    out = proposals(weekly, error_structure(bundle, frame, weekly), positions, orders)
    rows = out.rows_by_key("item_id", named=True, unique=True)
    assert rows["I00001"]["inventory_position"] == 15.0
    assert rows["I00002"]["inventory_position"] == 5.0
