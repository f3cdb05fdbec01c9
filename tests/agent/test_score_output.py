"""The scoring child's output check: bounds in order and intervals nested; a count law's mean may lie
outside its interval."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from agent.errors import ScoringError
from agent.score_worker import check_output


def _frame(lo80: float, hi80: float, lo95: float, hi95: float, forecast: float = 0.3) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "store_id": ["S1"],
            "item_id": ["I1"],
            "ds": [date(2026, 1, 1)],
            "forecast": [forecast],
            "forecast-lo-80": [lo80],
            "forecast-hi-80": [hi80],
            "forecast-lo-95": [lo95],
            "forecast-hi-95": [hi95],
        }
    )


def test_an_intermittent_item_whose_mean_is_above_its_80_percent_bound_is_served() -> None:
    """0.3 a day, nine days in ten without a sale: the 80 % interval is [0, 0], the 95 % one [0, 1]."""
    check_output(_frame(0.0, 0.0, 0.0, 1.0), levels=[80, 95], horizon=1, n_series=1)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ((2.0, 1.0, 0.0, 3.0), "80% lower bound above the upper bound"),
        ((0.0, 2.0, 0.0, 1.0), "80% interval outside their 95% interval"),
        ((0.5, 2.0, 1.0, 3.0), "80% interval outside their 95% interval"),
    ],
)
def test_bounds_out_of_order_or_intervals_not_nested_are_refused(
    bounds: tuple[float, float, float, float], message: str
) -> None:
    """Swapped bounds, or a narrower interval poking out of a wider one, fail the scoring."""
    with pytest.raises(ScoringError, match=message):
        check_output(_frame(*bounds), levels=[80, 95], horizon=1, n_series=1)
