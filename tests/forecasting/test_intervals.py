"""Calibrated, count-aware prediction intervals: floors at 0, count quantiles, edge = training, coverage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pytest

from forecasting.bundle.format import (
    IntervalSettings,
    Manifest,
    ModelEntry,
    decode_manifest,
    encode_manifest,
    utcnow,
    write_bundle,
)
from forecasting.bundle.scoring import score
from forecasting.common.config import TrainConfig, TrainSection, load_train_config
from forecasting.data.synthetic import generate
from forecasting.data.validation import load_canonical
from forecasting.models import calibration, kernels
from forecasting.models.families import (
    candidate_specs,
    interval_settings,
    model_families,
    tsb_optimized_class,
)
from forecasting.models.fitted import INTERMITTENT_FAMILIES, fit_models
from forecasting.models.fitted_forecast import calibrated_forecast, ensemble_forecast, forecast_batch
from forecasting.training.backtest import run_backtest
from forecasting.training.pipeline import train, write_run
from tests.forecasting._bundles import key_pair

PROJECT = Path(__file__).resolve().parents[2]
LEVELS = [80, 95]


def _matrix(ys: list[np.ndarray[Any, Any]]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    packed = np.concatenate(ys).astype(np.float64)
    offsets = np.concatenate([[0], np.cumsum([len(y) for y in ys])]).astype(np.int64)
    return kernels.pad_right_aligned(packed, offsets, np.arange(len(ys)))


def _bundle(
    tmp_path: Path, frame: pl.DataFrame, label: str, cfg: TrainSection, private: Path, name: str
) -> Path:
    families, params = model_families(cfg)
    fitted = fit_models(
        frame,
        label,
        season_length=cfg.season_length,
        model_params={label: params.get(label, {})},
        families={label: families.get(label, label)},
    )
    manifest = Manifest(
        model_name="demand",
        version=1,
        created_at=utcnow(),
        horizon=cfg.horizon,
        season_length=cfg.season_length,
        models=fitted.models,
        fallback_model=label,
        intervals=interval_settings(cfg, frame),
    )
    return write_bundle(tmp_path / name, manifest, fitted.payloads, private)


def _covered(frame: pl.DataFrame, level: int) -> pl.Expr:
    return (pl.col("y") >= pl.col(f"forecast-lo-{level}")) & (pl.col("y") <= pl.col(f"forecast-hi-{level}"))


def test_unit_sales_forecasts_and_bounds_are_never_negative(tmp_path: Path) -> None:
    """A unit-sales history (no negative value) gives a bundle whose forecasts and bounds are all >= 0."""
    frame = generate(stores=1, items=12, days=150, seed=11).with_columns(pl.col("y").clip(0.0))
    assert frame.select(pl.col("y").min()).item() >= 0
    cfg = TrainSection(horizon=14, season_length=7, conformal_windows=6)
    assert interval_settings(cfg, frame).nonnegative
    assert not interval_settings(cfg, frame.with_columns(pl.col("y") - 1000.0)).nonnegative
    assert not interval_settings(msgspec.structs.replace(cfg, nonnegative=False), frame).nonnegative
    private, _ = key_pair(tmp_path)
    for label in ["Naive", "SES", "WindowAverage"]:
        out = score(_bundle(tmp_path, frame, label, cfg, private, label), frame)
        values = out.select(pl.col("forecast"), pl.col("^forecast-.*$")).to_numpy()
        assert np.isfinite(values).all()
        assert (values >= 0).all(), label


def test_intermittent_quantiles_include_zero_and_are_counts() -> None:
    """Intermittent families on unit sales get whole-number bounds whose lower end is 0 for sparse items."""
    rng = np.random.default_rng(3)
    ys = [
        np.where(rng.random(n) < p, rng.poisson(2, n) + 1, 0) for n, p in ((300, 0.2), (260, 0.35), (90, 0.1))
    ]
    y, lengths = _matrix(ys)
    for family in sorted(INTERMITTENT_FAMILIES - {"CrostonSBA"}):
        params: dict[str, Any] = {"alpha_d": None, "alpha_p": None} if family == "TSB" else {}
        entry = ModelEntry(state="refit-at-edge", family=family, params=params)
        out = calibrated_forecast(entry, 7, y, lengths, 14, LEVELS, 6)
        for key in ("lo-80", "hi-80", "lo-95", "hi-95"):
            assert np.array_equal(out[key], np.round(out[key])), (family, key)
        assert (out["lo-80"] == 0).all() and (out["lo-95"] == 0).all(), family
        assert (out["hi-95"][:2] >= 1).all() and (out["hi-95"] >= out["hi-80"]).all(), family
    assert {n for n, spec in candidate_specs().items() if spec.intermittent} <= INTERMITTENT_FAMILIES


def test_count_interval_covers_its_level_on_negative_binomial_draws() -> None:
    """On negative binomial data of known rate the count interval covers close to its nominal level."""
    rng = np.random.default_rng(0)
    n, width, mean, phi = 400, 365, 1.5, 3.0
    draws = rng.negative_binomial(mean / (phi - 1), 1 / phi, size=(width + 28, n)).astype(np.float64)
    history, future = draws[:width], draws[width:].T
    out = calibration.count_intervals(np.full((n, 28), mean), history, np.full(n, width), LEVELS)
    for lv, band in ((80, (0.75, 0.85)), (95, (0.92, 0.98))):
        cover = float(((future >= out[f"lo-{lv}"]) & (future <= out[f"hi-{lv}"])).mean())
        assert band[0] <= cover <= band[1], (lv, cover)


def test_conformal_pools_steps_when_windows_are_few() -> None:
    """With two windows, pooled conformal intervals on white noise cover near nominal, wider at 95 %."""
    rng = np.random.default_rng(1)
    n, h = 500, 13
    y = rng.normal(100, 10, size=(3 * h + 20 + h, n))
    history, future = y[:-h], y[-h:].T
    lengths = np.full(n, history.shape[0])

    def point(m: np.ndarray[Any, Any], lens: np.ndarray[Any, Any], steps: int) -> np.ndarray[Any, Any]:
        return np.repeat(m[-20:].mean(axis=0)[:, None], steps, axis=1)

    out = calibration.calibrated_conformal(point, history, lengths, h, LEVELS, n_windows=2)
    assert np.isfinite(out["lo-95"]).all()
    assert (out["hi-95"] - out["lo-95"] > out["hi-80"] - out["lo-80"]).all()
    for lv, band in ((80, (0.75, 0.85)), (95, (0.90, 0.98))):
        cover = float(((future >= out[f"lo-{lv}"]) & (future <= out[f"hi-{lv}"])).mean())
        assert band[0] <= cover <= band[1], (lv, cover)


def test_tsb_alphas_minimise_in_sample_mse_and_training_uses_them() -> None:
    """TSB constants are the grid pair of least one-step MSE; the backtest model forecasts with them."""
    rng = np.random.default_rng(4)
    ys = [np.where(rng.random(200) < p, rng.poisson(4, 200) + 1, 0).astype(float) for p in (0.1, 0.5, 0.8)]
    y, lengths = _matrix(ys)
    alpha_d, alpha_p = kernels.tsb_fit(y, lengths)
    grid = kernels.TSB_ALPHA_GRID
    for i, series in enumerate(ys):
        best = min((_tsb_mse(series, ad, ap), ad, ap) for ad in grid for ap in grid)
        assert (alpha_d[i], alpha_p[i]) == (best[1], best[2])
        mean = tsb_optimized_class()().forecast(y=series, h=5)["mean"]
        expected = kernels.tsb_mean(y[:, [i]], lengths[[i]], 5, alpha_d[i], alpha_p[i])[0]
        np.testing.assert_allclose(mean, expected, rtol=1e-6)


def _tsb_mse(series: np.ndarray[Any, Any], alpha_d: float, alpha_p: float) -> float:
    """In-sample one-step MSE of TSB, written out series by series."""
    prob, size, sse = float(series[0] != 0), (float(series[0]) if series[0] > 0 else None), 0.0
    for value in series[1:]:
        sse += (value - prob * (size or 0.0)) ** 2
        prob = alpha_p * float(value != 0) + (1 - alpha_p) * prob
        if value > 0:
            size = value if size is None else alpha_d * value + (1 - alpha_d) * size
    return sse / (len(series) - 1)


def test_edge_and_backtest_give_the_same_intervals(tmp_path: Path) -> None:
    """For the same history, a bundle scored at the edge and the backtest's last window have equal bounds."""
    frame = generate(stores=1, items=8, days=220, seed=5)
    names = [
        "WindowAverage",
        "SES",
        "TSB",
        "CrostonOptimized",
        "Naive",
        "SeasonalNaive",
        "AutoETS",
        "AutoTheta",
    ]
    cfg = TrainSection(horizon=14, season_length=7, models=names, windows=1, conformal_windows=6)
    result = run_backtest(frame, cfg, "D")
    cutoff = result.cv["cutoff"].min()
    history = frame.filter(pl.col("ds") <= cutoff)
    private, _ = key_pair(tmp_path)
    for name in names:
        edge = score(_bundle(tmp_path, history, name, cfg, private, name), history, horizon=14)
        joined = edge.with_columns(unique_id=pl.concat_str("store_id", "item_id", separator="/")).join(
            result.cv, on=["unique_id", "ds"]
        )
        assert joined.height == 8 * 14
        for lv in LEVELS:
            for side in ("lo", "hi"):
                np.testing.assert_allclose(
                    joined[f"forecast-{side}-{lv}"].to_numpy(),
                    joined[f"{name}-{side}-{lv}"].to_numpy(),
                    rtol=1e-6,
                )


def test_manifest_without_interval_settings_keeps_statsforecast_intervals() -> None:
    """An older manifest (no ``intervals`` key) decodes with statsforecast's intervals and no floor at 0."""
    manifest = Manifest(model_name="demand", version=1, created_at=utcnow())
    data = encode_manifest(manifest)
    assert b'"intervals"' not in data
    assert decode_manifest(data).interval_settings() == IntervalSettings(
        method="statsforecast", conformal_windows=2, nonnegative=False
    )
    y, lengths = _matrix([np.arange(60, dtype=np.float64) % 5])
    entry = ModelEntry(state="refit-at-edge", family="WindowAverage", params={"window_size": 4})
    legacy = forecast_batch(entry, 7, y, lengths, 7, LEVELS)
    assert np.allclose(
        legacy["lo-80"],
        calibration.conformal(lambda a, b, c: kernels.window_mean(a, b, c, 4), y, lengths, 7, LEVELS)[
            "lo-80"
        ],
    )


def test_m5_mini_held_out_coverage_with_the_bundle_path(tmp_path: Path, shared_data: Path) -> None:
    """m5_mini (10 real items), 28 days held out: 80 % and 95 % intervals cover near nominal, none below 0."""
    cfg: TrainConfig = load_train_config([PROJECT / "configs" / "m5.toml"])
    frame = load_canonical(shared_data / "m5_mini" / "sales_d1-d1885.csv", cfg.data).frame
    cutoff = frame.select(pl.col("ds").max()).item() - timedelta(days=28)
    history, held_out = frame.filter(pl.col("ds") <= cutoff), frame.filter(pl.col("ds") > cutoff)
    private, _ = key_pair(tmp_path)
    write_run(train(history, cfg), tmp_path / "bundle", signing_key=private)
    scored = score(tmp_path / "bundle", history)
    ev = scored.join(held_out.select("store_id", "item_id", "ds", "y"), on=["store_id", "item_id", "ds"])
    assert ev.height == 10 * 28
    cover = ev.select(c80=_covered(ev, 80).mean(), c95=_covered(ev, 95).mean()).row(0, named=True)
    assert 0.70 <= cover["c80"] <= 0.90, cover
    assert 0.88 <= cover["c95"] <= 1.0, cover
    assert ev.select(pl.min_horizontal(pl.col("forecast"), pl.col("^forecast-lo-.*$")).min()).item() >= 0


@pytest.mark.parametrize("method", ["statsforecast", "calibrated"])
def test_interval_method_is_recorded_in_the_manifest(method: str) -> None:
    """The [train] interval settings travel in the manifest so the edge uses what the training used."""
    cfg = TrainSection(interval_method=method, conformal_windows=7)  # type: ignore[arg-type]
    settings = interval_settings(cfg, pl.DataFrame({"y": [0.0, 3.0]}))
    assert settings == IntervalSettings(method=method, conformal_windows=7, nonnegative=True)  # type: ignore[arg-type]


def test_ensemble_intervals_are_calibrated_on_the_ensemble_mean() -> None:
    """An ensemble's bounds come from its own mean: count quantiles on unit sales, conformal otherwise."""
    rng = np.random.default_rng(8)
    counts = [np.where(rng.random(240) < 0.3, rng.poisson(3, 240) + 1, 0) for _ in range(3)]
    dollars = [rng.normal(50, 8, 240).round(2) for _ in range(3)]
    y, lengths = _matrix([*counts, *dollars])
    members = [
        (ModelEntry(state="refit-at-edge", family="SimpleExponentialSmoothingOptimized"), None),
        (ModelEntry(state="refit-at-edge", family="TSB", params={"alpha_d": None, "alpha_p": None}), None),
    ]
    out = ensemble_forecast(members, [0.5, 0.5], 7, y, lengths, 14, LEVELS, 6)
    single = [forecast_batch(e, 7, y, lengths, 14, [])["mean"] for e, _ in members]
    np.testing.assert_allclose(out["mean"], 0.5 * single[0] + 0.5 * single[1])
    assert (out["lo-80"][:3] == 0).all() and np.array_equal(out["hi-95"][:3], np.round(out["hi-95"][:3]))
    np.testing.assert_allclose(out["hi-80"][3:] - out["mean"][3:], out["mean"][3:] - out["lo-80"][3:])
    assert (out["hi-95"][3:] > out["hi-80"][3:]).all()
