"""Candidate models from config, and the M4 seasonality test / classical multiplicative decomposition."""

from __future__ import annotations

import numpy as np
import pytest

from forecasting.config import TrainSection
from forecasting.errors import ConfigError
from forecasting.models import (
    build_models,
    candidate_specs,
    check_candidates,
    min_length,
    multiplicative_indices,
    naive2_forecast,
    seasonality_test,
)


def test_every_candidate_builds_with_its_alias() -> None:
    """Each named candidate builds a statsforecast model whose alias is its name."""
    cfg = TrainSection(mstl_season_lengths=[7, 28])
    names = list(candidate_specs())
    models = build_models(names, cfg, horizon=14)
    assert [m.alias for m in models] == names
    no_native = [m for m, n in zip(models, names, strict=True) if not candidate_specs()[n].native_intervals]
    assert all(m.prediction_intervals is not None for m in no_native)


def test_unknown_candidate_or_fallback_is_a_config_error() -> None:
    """An unknown candidate name fails early, naming [train] models."""
    with pytest.raises(ConfigError, match=r"\[train\] models"):
        check_candidates(TrainSection(models=["Naive", "Prophet"]))
    with pytest.raises(ConfigError, match="fallback"):
        check_candidates(TrainSection(fallback="Nope"))


def test_min_length_accounts_for_seasons_and_conformal_windows() -> None:
    """Seasonal window averages need seasons x windows; conformal intervals need windows x horizon + 1."""
    cfg = TrainSection(season_length=7, season_windows=3, conformal_windows=2)
    assert min_length(["SeasonalWindowAverage"], cfg, 5, intervals=False) == 21
    assert min_length(["SeasonalWindowAverage"], cfg, 28, intervals=True) == 57
    assert min_length(["Naive"], cfg, 28) == 1


def test_seasonality_test_detects_strong_season_and_ignores_noise() -> None:
    """The 90 % autocorrelation test finds a clear daily cycle and not white noise."""
    rng = np.random.default_rng(0)
    t = np.arange(24 * 20)
    seasonal = 100 + 30 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, t.size)
    assert seasonality_test(seasonal, 24)
    assert not seasonality_test(rng.normal(100, 1, t.size), 24)
    assert not seasonality_test(seasonal[:60], 24)  # fewer than 3 seasons


def test_multiplicative_indices_recover_the_pattern_and_average_one() -> None:
    """Classical decomposition indices average 1 and recover a multiplicative pattern."""
    pattern = np.array([0.5, 1.0, 1.5, 1.0])
    y = np.tile(pattern, 12) * 10.0
    idx = multiplicative_indices(y, 4)
    assert idx.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(idx, pattern, rtol=1e-9)
    fc = naive2_forecast(y, 4, 6)
    np.testing.assert_allclose(fc, np.r_[pattern, pattern][:6] * 10.0, rtol=1e-9)
