"""Lead-time demand and order-up-to math: sums of correlated errors, count laws, levels and pack rounding."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from forecasting.replenishment.lead_time import ForecastMatrix, LeadTimeDemand, lead_time_demand, sum_variance
from forecasting.replenishment.policy import CYCLE, FILL_RATE, order_up_to, propose, round_order

FAST = settings(max_examples=60, deadline=None)


def _loadings(h: int, n: int, alpha: float, season: int) -> np.ndarray[Any, Any]:
    """Innovation loadings of the first ``n`` of ``h`` periods, written out one by one (rows: periods)."""
    if season > 1:
        k = [int(np.ceil(t / season)) for t in range(1, h + 1)]
        columns = [(p, j) for p in range(season) for j in range(1, max(k) + 1)]
        a = np.zeros((h, len(columns)))
        for t in range(1, h + 1):
            for c, (p, j) in enumerate(columns):
                a[t - 1, c] = 1.0 if (t - 1) % season == p and j <= k[t - 1] else 0.0
        return a[:n] / np.sqrt(np.array(k[:n]))[:, None]
    a = np.zeros((h, h))
    for t in range(h):
        a[t, t] = 1.0
        a[t, :t] = alpha
    scale = np.sqrt(1.0 + np.arange(h) * alpha**2)
    return a[:n] / scale[:n, None]


@FAST
@given(
    h=st.integers(1, 21),
    data=st.data(),
    alpha=st.floats(0.0, 1.0),
    season=st.sampled_from([0, 0, 3, 7]),
)
def test_sum_variance_matches_the_written_out_covariance(
    h: int, data: Any, alpha: float, season: int
) -> None:
    """The O(n) variance of a sum equals sum_ij Cov(e_i, e_j) from the loadings written out in full."""
    n = data.draw(st.integers(1, h))
    sigma = np.array(data.draw(st.lists(st.floats(0.0, 50.0), min_size=h, max_size=h)))
    a = _loadings(h, n, alpha, season) * sigma[:n, None]
    expected = float((a.sum(axis=0) ** 2).sum())
    got = sum_variance(sigma[None, :], np.array([n]), np.array([alpha]), np.array([season]))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # each period keeps its own variance: the loadings are scaled to sigma_t
    np.testing.assert_allclose((a**2).sum(axis=1), sigma[:n] ** 2, rtol=1e-9, atol=1e-9)


@FAST
@given(n=st.integers(2, 28), mu=st.floats(0.5, 40.0), sd=st.floats(0.5, 20.0), p=st.floats(0.6, 0.99))
def test_quantile_of_a_sum_of_independent_days_is_below_the_sum_of_daily_quantiles(
    n: int, mu: float, sd: float, p: float
) -> None:
    """Quantiles do not add: with independent days the sum's quantile is below the sum of the days'."""
    matrix = _matrix(np.full((1, n), mu), np.full((1, n), sd), alpha=0.0, count=False)
    total = lead_time_demand(matrix, [n])
    daily = lead_time_demand(_matrix(np.full((1, 1), mu), np.full((1, 1), sd), 0.0, count=False), [1])
    assert total.quantile(p)[0] < n * daily.quantile(p)[0]
    np.testing.assert_allclose(total.variance, n * sd**2)


@FAST
@given(
    mu=st.floats(0.05, 60.0), extra=st.floats(0.0, 4.0), p=st.floats(0.01, 0.995), x=st.floats(-3.0, 150.0)
)
def test_count_law_quantile_cdf_and_shortage_agree_with_the_probabilities(
    mu: float, extra: float, p: float, x: float
) -> None:
    """Count laws: cdf(q(p)) >= p > cdf(q(p) - 1); E[(D - x)^+] equals the sum over the probabilities."""
    law = LeadTimeDemand(mean=np.array([mu]), variance=np.array([mu * (1.0 + extra)]), count=np.array([True]))
    q = law.quantile(p)
    assert q[0] == np.floor(q[0]) and law.cdf(q)[0] >= p - 1e-9
    if q[0] > 0:
        assert law.cdf(q - 1)[0] < p
    k = np.arange(0, int(mu * 40 + 400))
    if extra > 1e-9:
        var = mu * (1.0 + extra)
        pmf = stats.nbinom.pmf(k, mu**2 / (var - mu), mu / var)
    else:
        pmf = stats.poisson.pmf(k, mu)
    expected = float((np.maximum(k - x, 0.0) * pmf).sum())
    np.testing.assert_allclose(law.expected_shortage(np.array([x]))[0], expected, rtol=1e-6, atol=1e-7)
    left = law.expected_leftover(np.array([x]))[0]
    np.testing.assert_allclose(left, float((np.maximum(x - k, 0.0) * pmf).sum()), rtol=1e-6, atol=1e-7)


@FAST
@given(mu=st.floats(0.0, 500.0), sd=st.floats(0.1, 100.0), x=st.floats(-50.0, 800.0))
def test_normal_law_shortage_and_leftover_balance(mu: float, sd: float, x: float) -> None:
    """Normal laws: E[(D - x)^+] matches numerical integration and leftover - shortage = x - mean."""
    law = LeadTimeDemand(mean=np.array([mu]), variance=np.array([sd**2]), count=np.array([False]))
    grid = np.linspace(mu - 12 * sd, mu + 12 * sd, 40001)
    density = stats.norm.pdf(grid, mu, sd)
    expected = float(np.trapezoid(np.maximum(grid - x, 0.0) * density, grid))
    shortage = law.expected_shortage(np.array([x]))[0]
    np.testing.assert_allclose(shortage, expected, rtol=1e-4, atol=1e-4 * sd)
    np.testing.assert_allclose(
        law.expected_leftover(np.array([x]))[0] - shortage, x - mu, atol=1e-6 * (1 + mu)
    )


@FAST
@given(
    mu=st.floats(0.1, 80.0),
    extra=st.floats(0.0, 3.0),
    target=st.floats(0.5, 0.995),
    review=st.floats(0.1, 30.0),
    count=st.booleans(),
)
def test_order_up_to_reaches_its_target_with_the_smallest_level(
    mu: float, extra: float, target: float, review: float, count: bool
) -> None:
    """S meets the cycle service level or fill-rate target; for count laws one unit less would not."""
    law = LeadTimeDemand(mean=np.array([mu]), variance=np.array([mu * (1 + extra)]), count=np.array([count]))
    review_mean = np.array([min(review, mu)])
    t = np.array([target])
    cycle = order_up_to(law, review_mean, np.array([False]), t)
    assert law.cdf(cycle)[0] >= target - 1e-6
    fill = order_up_to(law, review_mean, np.array([True]), t)
    allowed = (1 - target) * review_mean[0]
    assert law.expected_shortage(fill)[0] <= allowed + 1e-6
    if count and fill[0] >= 1:
        assert law.expected_shortage(fill - 1)[0] > allowed


@FAST
@given(
    raw=st.floats(-50.0, 500.0),
    pack=st.integers(1, 24),
    minimum=st.integers(0, 60),
    room=st.one_of(st.just(float("nan")), st.floats(-10.0, 600.0)),
)
def test_orders_are_whole_packs_at_least_the_minimum_and_fit_the_shelf(
    raw: float, pack: int, minimum: int, room: float
) -> None:
    """Whole packs; the fewest that cover the need; at least the minimum when ordering; within the room."""
    qty = round_order(np.array([raw]), np.array([float(pack)]), np.array([float(minimum)]), np.array([room]))[
        0
    ]
    assert qty >= 0 and qty % pack == 0
    if qty > 0:
        assert qty >= minimum
    if not np.isnan(room):
        assert qty <= max(room, 0.0) + 1e-9
    elif raw > 0:
        assert qty >= raw - 1e-9 and (qty - pack < raw or qty - pack < minimum)
    else:
        assert qty == 0


def _matrix(
    mean: np.ndarray[Any, Any], sigma: np.ndarray[Any, Any], alpha: float, *, count: bool
) -> ForecastMatrix:
    n = mean.shape[0]
    keys = pl.DataFrame(
        {
            "store_id": ["S1"] * n,
            "item_id": [f"I{i}" for i in range(n)],
            "alpha": [alpha] * n,
            "season": [0] * n,
            "count": [count] * n,
        }
    )
    return ForecastMatrix(keys=keys, mean=mean, sigma=sigma)


def test_proposals_cover_the_target_and_count_the_inventory_position() -> None:
    """A proposal: position = on hand + on order - backorders; S - position in packs; targets reached."""
    matrix = _matrix(np.full((3, 14), 2.0), np.full((3, 14), 1.5), alpha=0.0, count=True)
    inventory = pl.DataFrame(
        {
            "store_id": ["S1"] * 3,
            "item_id": ["I0", "I1", "I2"],
            "on_hand": [3.0, 60.0, 0.0],
            "on_order": [4.0, 0.0, 0.0],
            "backorders": [1.0, 0.0, 0.0],
            "lead_time_days": [3, 3, 2],
            "review_period_days": [4, 4, 7],
            "service_metric": [CYCLE, CYCLE, FILL_RATE],
            "target_service_level": [0.95, 0.95, 0.98],
            "pack_size": [6.0, 6.0, 1.0],
            "min_order": [0.0, 0.0, 0.0],
            "shelf_capacity": [None, None, 10.0],
        }
    )
    out = propose(matrix, inventory).rows_by_key("item_id", named=True, unique=True)
    first = out["I0"]
    assert first["inventory_position"] == 6.0
    assert first["demand_mean"] == 14.0
    assert first["proposed_quantity"] % 6 == 0
    assert first["order_up_to"] - 6.0 <= first["proposed_quantity"] < first["order_up_to"] - 6.0 + 6
    assert first["expected_service_level"] >= 0.95
    assert out["I1"]["proposed_quantity"] == 0.0
    assert out["I1"]["expected_stock_end_of_lead_time"] > 60.0 - 6.0 - 1e-9
    capped = out["I2"]
    assert capped["proposed_quantity"] == 10.0
    assert capped["expected_service_level"] < 0.98
