"""Drift statistics (properties), the training reference, and drift reports on real Walmart weeks."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecasting.common.contracts import DriftTest
from forecasting.monitoring.drift import (
    DriftConfig,
    drift_report,
    kolmogorov_sf,
    ks_2samp,
    psi,
    reference_sample,
    reference_summary,
    wasserstein,
    wasserstein_normalised,
)
from forecasting.monitoring.drift_verdict import drift_by_tests, verdict_reason
from server.quality.alerts import default_rules, judge_periods, replay

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=60)
positive = st.lists(st.floats(min_value=0.1, max_value=1e5), min_size=2, max_size=60)


@given(samples)
def test_statistics_are_zero_on_identical_samples(xs: list[float]) -> None:
    """A sample compared with itself: PSI 0, Wasserstein 0, KS statistic 0 and p-value 1."""
    assert psi(xs, xs) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein(xs, xs) == pytest.approx(0.0, abs=1e-9)
    d, p = ks_2samp(xs, xs)
    assert d == 0.0
    assert p == 1.0


@given(samples, samples)
def test_statistics_are_symmetric_and_bounded(xs: list[float], ys: list[float]) -> None:
    """Wasserstein and KS are symmetric; PSI is non-negative; KS D and p lie in [0, 1]."""
    assert wasserstein(xs, ys) == pytest.approx(wasserstein(ys, xs), rel=1e-9, abs=1e-6)
    d1, p1 = ks_2samp(xs, ys)
    d2, p2 = ks_2samp(ys, xs)
    assert d1 == pytest.approx(d2)
    assert 0.0 <= d1 <= 1.0
    assert 0.0 <= p1 <= 1.0
    assert p1 == pytest.approx(p2)
    assert psi(xs, ys) >= -1e-12


@given(samples, finite)
def test_wasserstein_of_a_shift_is_the_shift(xs: list[float], shift: float) -> None:
    """Moving every value by c moves the distribution by exactly |c| in Wasserstein distance."""
    moved = [x + shift for x in xs]
    assert wasserstein(moved, xs) == pytest.approx(abs(shift), rel=1e-6, abs=1e-6)


@given(positive, st.floats(min_value=0.01, max_value=100.0))
def test_normalised_wasserstein_is_scale_free(xs: list[float], scale: float) -> None:
    """Scaling both samples by the same factor leaves the normalised distance unchanged."""
    ys = [x * 1.5 for x in xs]
    a = wasserstein_normalised(ys, xs)
    b = wasserstein_normalised([y * scale for y in ys], [x * scale for x in xs])
    assert a == pytest.approx(b, rel=1e-6)
    assert a == pytest.approx(0.5, rel=1e-6)  # x1.5 is half the reference mean away


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_ks_rejects_a_clear_shift_and_psi_flags_it(seed: int) -> None:
    """Two samples of 200 one standard deviation apart: KS p < 0.05 and PSI above 0.2."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, 200), rng.normal(1, 1, 200)
    assert ks_2samp(a, b)[1] < 0.05
    assert psi(b, a) > 0.2


def test_ks_pvalue_follows_the_kolmogorov_distribution() -> None:
    """The p-value matches published Kolmogorov critical values (1.358 -> 0.05, 1.628 -> 0.01)."""
    assert kolmogorov_sf(1.358) == pytest.approx(0.05, abs=5e-4)
    assert kolmogorov_sf(1.628) == pytest.approx(0.01, abs=5e-4)
    assert kolmogorov_sf(0.1) == 1.0


def _synthetic(weeks: int, items: int = 30, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    start = date(2022, 1, 7)
    rows = []
    for i in range(items):
        level = rng.uniform(5, 50)
        for w in range(weeks):
            season = 1 + 0.3 * math.sin(2 * math.pi * w / 52)
            rows.append(
                (
                    f"I{i:03d}",
                    "A" if i % 2 else "B",
                    start + timedelta(weeks=w),
                    level * season * rng.gamma(20, 1 / 20),
                )
            )
    frame = pl.DataFrame(rows, schema=["item_id", "category", "ds", "y"], orient="row")
    return frame.with_columns(pl.lit("S1").alias("store_id"))


def test_reference_summary_holds_relative_quantiles_per_category() -> None:
    """The manifest reference has per-category raw summaries plus r00..r100 relative quantiles."""
    ref = reference_summary(_synthetic(60))
    assert set(ref) == {"A", "B"}
    for summary in ref.values():
        assert {"mean", "std", "p50", "zero_share", "n", "items", "r00", "r50", "r100"} <= set(summary)
        sample = reference_sample(summary)
        assert len(sample) == 21
        assert np.all(np.diff(sample) >= 0)
        assert summary["r50"] == pytest.approx(1.0, abs=0.15)


def test_drift_report_uses_bundle_reference_without_a_year_of_history() -> None:
    """With 20 weeks of history categories compare against the bundle reference; a x1.5 category drifts."""
    frame = _synthetic(20, items=40)
    reference = reference_summary(frame.filter(pl.col("ds") < date(2022, 4, 1)))
    last = frame["ds"].max()
    changed = frame.with_columns(
        pl.when((pl.col("category") == "A") & (pl.col("ds") == last))
        .then(pl.col("y") * 1.5)
        .otherwise(pl.col("y"))
    )
    report = drift_report(changed, reference=reference, known_items={f"I{i:03d}" for i in range(35)})
    by_cat = {c.category: c for c in report.categories}
    assert {c.comparison for c in report.categories} == {"reference"}
    a_tests = {t.name: t for t in by_cat["A"].tests}
    b_tests = {t.name: t for t in by_cat["B"].tests}
    assert a_tests["wasserstein"].verdict == "drift"
    assert b_tests["wasserstein"].verdict == "ok"
    assert {t.name for t in by_cat["A"].tests} == {"psi", "wasserstein", "ks_pvalue", "zero_rate", "level"}
    for test in by_cat["A"].tests:
        assert test.threshold > 0
        assert test.verdict in {"ok", "drift", "insufficient"}
    assert report.unknown_item_share == pytest.approx(5 / 40)
    assert report.missing_rate == 0.0


def _walmart(shared_data: Path) -> pl.DataFrame:
    from forecasting.data.loading import read_text_table

    raw = read_text_table(shared_data / "walmart" / "train.csv.gz")
    return raw.select(
        pl.col("Store").alias("store_id"),
        pl.col("Dept").alias("item_id"),
        pl.col("Dept").alias("category"),
        pl.col("Date").str.to_date().alias("ds"),
        pl.col("Weekly_Sales").cast(pl.Float64).alias("y"),
    )


STORES = ("1", "4", "13", "20", "33", "39")  # a spread of Walmart store types and sizes
QUARTERS = 3


def _store_alerts(frame: pl.DataFrame, weeks: list[date]) -> list[tuple[int, list[str]]]:
    """Drift alerts of one store with the default rule, one report a week: (week index, categories)."""
    rule = next(r for r in default_rules() if r.metric == "drift")
    periods: list[dict[str, float | None]] = []
    fired = []
    for i, week in enumerate(weeks):
        report = drift_report(frame, as_of=week)
        periods.append({c.category: 1.0 if c.drifted else 0.0 for c in report.categories})
        events = replay(rule, periods)
        if events and events[-1] == (i, "fired"):
            fired.append((i, judge_periods(rule, periods)[1]))
    return fired


def test_walmart_weeks_without_change_raise_at_most_one_alert_per_store_and_quarter(
    shared_data: Path,
) -> None:
    """Replaying the last 3 quarters of real weeks of 6 stores: no store-quarter has more than one alert."""
    data = _walmart(shared_data)
    weeks = sorted(data["ds"].unique().to_list())[-13 * QUARTERS :]
    per_store_quarter = []
    for store in STORES:
        quarters = [i // 13 for i, _ in _store_alerts(data.filter(pl.col("store_id") == store), weeks)]
        per_store_quarter += [quarters.count(q) for q in range(QUARTERS)]
    rate = sum(per_store_quarter) / len(per_store_quarter)
    print(f"false alarms per store-quarter: {rate:.3f}; max {max(per_store_quarter)}")
    assert max(per_store_quarter) <= 1
    assert rate <= 0.5


@pytest.mark.parametrize(("store", "category"), [("1", "92"), ("13", "91"), ("33", "94")])
def test_walmart_category_scaled_by_half_raises_an_alert_within_two_weeks(
    shared_data: Path, store: str, category: str
) -> None:
    """A large department scaled x1.5 from some week on fires the store's drift alert in its second week."""
    data = _walmart(shared_data).filter(pl.col("store_id") == store)
    weeks = sorted(data["ds"].unique().to_list())
    start = weeks[-8]
    changed = data.with_columns(
        pl.when((pl.col("category") == category) & (pl.col("ds") >= start))
        .then(pl.col("y") * 1.5)
        .otherwise(pl.col("y"))
    )
    replayed = weeks[-10:-5]
    fired = _store_alerts(changed, replayed)
    assert fired, f"no alert for category {category}"
    index, categories = fired[0]
    assert categories == [category]
    assert replayed[index] - start <= timedelta(weeks=1)  # the report of the change's second week
    assert _store_alerts(data, replayed) == []  # the same weeks unchanged: no alert


def test_drift_config_defaults_match_the_documented_thresholds() -> None:
    """Defaults: PSI 0.2, normalised Wasserstein 0.1, KS p < 0.05."""
    config = DriftConfig()
    assert (config.psi_threshold, config.wasserstein_threshold, config.ks_pvalue) == (0.2, 0.1, 0.05)


@given(
    st.fixed_dictionaries(
        {name: st.sampled_from(["ok", "drift", "insufficient"]) for name in ("level", "wasserstein", "psi")}
    ),
    st.booleans(),
)
def test_the_verdict_reason_follows_the_deciding_tests_only(verdicts: dict[str, str], material: bool) -> None:
    """Drifted = material, level drift and wasserstein not ok; psi changes neither verdict nor reason."""
    tests = [DriftTest(name=n, statistic=1.0, threshold=0.5, verdict=v) for n, v in verdicts.items()]
    drifted = material and drift_by_tests(tests)
    assert drifted == (material and verdicts["level"] == "drift" and verdicts["wasserstein"] != "ok")
    reason = verdict_reason(drifted, tests)
    assert ("both beyond" in reason) == drifted
    assert ("too small a share" in reason) == (not material and drift_by_tests(tests))
    flipped = [DriftTest(name="psi", statistic=0.0, threshold=0.5, verdict="ok")]
    flipped += [t for t in tests if t.name != "psi"]
    assert verdict_reason(drifted, flipped) == reason


def test_real_drift_verdicts_agree_with_their_tests(shared_data: Path) -> None:
    """Every category of real Walmart weekly drift reports: its verdict is the one its deciding tests give."""
    data = _walmart(shared_data).filter(pl.col("store_id") == "1")
    weeks = sorted(data["ds"].unique().to_list())[-6:]
    reasons = []
    for week in weeks:
        for c in drift_report(data, as_of=week).categories:
            if c.drifted:
                assert drift_by_tests(c.tests), c
            reasons.append(verdict_reason(c.drifted, c.tests))
    assert not [r for r in reasons if "lacks" in r or "although" in r]
    assert len(reasons) >= 6 * 60
