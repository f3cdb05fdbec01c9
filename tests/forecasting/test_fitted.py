"""Fitted state without pickle: bundle forecasts (fresh process) equal the in-memory fitted models'."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from forecasting.bundle.format import read_manifest
from forecasting.data.synthetic import generate
from forecasting.models import ets_kernel, kernels
from forecasting.models.fitted import (
    CONFORMAL_WINDOWS,
    FITTED_STATE_CODECS,
    export_fitted,
    fit_models,
    load_fitted,
    make_model,
    model_state,
)
from tests.forecasting._bundles import build_bundle, key_pair

H = 14
LEVELS = [80, 95]
TOL = 1e-9


def _rel_diff(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    """Largest |a-b| / max(|b|, 1) (relative, with an absolute floor for values near zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    return float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1.0), initial=0.0))


def _series(frame: pl.DataFrame) -> dict[tuple[str, str], np.ndarray[Any, Any]]:
    out = {}
    for (store, item), part in frame.sort("store_id", "item_id", "ds").group_by(
        ["store_id", "item_id"], maintain_order=True
    ):
        out[(str(store), str(item))] = part["y"].to_numpy().astype(np.float64)
    return out


def _in_memory(
    family: str, y: np.ndarray[Any, Any], season_length: int, params: dict[str, Any] | None = None
) -> dict[str, np.ndarray[Any, Any]]:
    """What statsforecast itself gives: fit in memory and predict (fitted-state) or forecast (refit)."""
    kwargs = dict(params or {})
    if family in {"CrostonClassic", "ADIDA", "TSB", "WindowAverage"}:
        from statsforecast.utils import ConformalIntervals

        kwargs["prediction_intervals"] = ConformalIntervals(h=H, n_windows=CONFORMAL_WINDOWS)
    model = make_model(family, season_length, kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model_state(family) == "fitted-state":
            res: dict[str, np.ndarray[Any, Any]] = model.fit(y).predict(h=H, level=LEVELS)
        else:
            res = model.forecast(y=y, h=H, level=LEVELS)
    return res


def _score_in_fresh_process(bundle: Path, history: Path, out: Path) -> pl.DataFrame:
    """Run the scoring engine in a new interpreter (nothing shared with this process but files)."""
    code = (
        "import sys, polars as pl; from pathlib import Path; from forecasting.bundle.scoring import score; "
        f"score(Path(sys.argv[1]), pl.read_parquet(sys.argv[2]), horizon={H}, levels={LEVELS}, "
        "out=Path(sys.argv[3]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(history), str(out)],
        check=True,
        timeout=300,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return pl.read_parquet(out)


def _compare(
    scored: pl.DataFrame,
    series: dict[tuple[str, str], np.ndarray[Any, Any]],
    assignment: dict[tuple[str, str], str],
    season_length: int,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Worst relative difference per model between bundle forecasts and in-memory forecasts."""
    worst: dict[str, float] = {}
    by_key = scored.partition_by(["store_id", "item_id"], as_dict=True, maintain_order=True)
    for key, y in series.items():
        family = assignment[key]
        ref = _in_memory(family, y, season_length, (params or {}).get(family))
        got = by_key[key]
        assert got["model"].unique().to_list() == [family]
        diff = _rel_diff(got["forecast"].to_numpy(), ref["mean"])
        for lv in LEVELS:
            for side in ("lo", "hi"):
                diff = max(diff, _rel_diff(got[f"forecast-{side}-{lv}"].to_numpy(), ref[f"{side}-{lv}"]))
        worst[family] = max(worst.get(family, 0.0), diff)
    return worst


@pytest.fixture(scope="module")
def synthetic() -> pl.DataFrame:
    """One synthetic store: 16 items x 200 days (regular and intermittent items)."""
    return generate(stores=1, items=16, days=200, seed=7)


SYNTHETIC_MODELS = [
    "AutoETS",
    "AutoTheta",
    "SeasonalNaive",
    "Naive",
    "HistoricAverage",
    "RandomWalkWithDrift",
    "CrostonClassic",
    "TSB",
]
TSB_PARAMS = {"alpha_d": 0.2, "alpha_p": 0.2}


def test_declared_states() -> None:
    """AutoETS and the Theta family keep fitted state; naive and intermittent models refit at the edge."""
    for family in ["AutoETS", "AutoTheta", "Theta", "OptimizedTheta", "DynamicOptimizedTheta"]:
        assert model_state(family) == "fitted-state"
    for family in ["Naive", "SeasonalNaive", "HistoricAverage", "CrostonClassic", "ADIDA", "IMAPA", "TSB"]:
        assert model_state(family) == "refit-at-edge"


def test_fitted_state_is_plain_columns_and_roundtrips(tmp_path: Path, synthetic: pl.DataFrame) -> None:
    """Fitted AutoETS/AutoTheta parameters are Parquet columns that rebuild statsforecast's model_ exactly."""
    frame = synthetic.filter(pl.col("item_id").is_in(["I00001", "I00002"]))
    fitted = fit_models(frame, "AutoETS", season_length=7)
    table = pl.read_parquet(fitted.payloads["fitted/AutoETS.parquet"])
    assert set(table.columns) == {"store_id", "item_id", "m", "components", "par", "n_params"}
    assert all(not isinstance(t, pl.Object) for t in table.dtypes)
    y = _series(frame)[("S001", "I00001")]
    model = make_model("AutoETS", 7).fit(y)
    row = table.filter(pl.col("item_id") == "I00001").row(0, named=True)
    decoded = FITTED_STATE_CODECS["AutoETS"].decode(row)
    assert decoded["components"] == model.model_["components"]
    np.testing.assert_array_equal(decoded["par"], model.model_["par"])
    theta = make_model("AutoTheta", 7).fit(y)
    encoded = pl.read_parquet(export_fitted("AutoTheta", [("S001", "I00001")], [theta.model_]))
    assert FITTED_STATE_CODECS["AutoTheta"].decode(encoded.row(0, named=True))["par"] == {
        k: float(v) for k, v in theta.model_["par"].items()
    }


def test_bundle_in_fresh_process_matches_in_memory_synthetic(tmp_path: Path, synthetic: pl.DataFrame) -> None:
    """Every supported model: bundle forecasts scored in a new process equal in-memory ones (rel <= 1e-9)."""
    series = _series(synthetic)
    keys = sorted(series)
    assignment = {key: SYNTHETIC_MODELS[i % len(SYNTHETIC_MODELS)] for i, key in enumerate(keys)}
    table = pl.DataFrame(
        {
            "store_id": [k[0] for k in keys],
            "item_id": [k[1] for k in keys],
            "model": [assignment[k] for k in keys],
        }
    )
    fitted = fit_models(synthetic, table, season_length=7, model_params={"TSB": TSB_PARAMS})
    from forecasting.bundle.format import Manifest, utcnow, write_bundle

    private, _ = key_pair(tmp_path)
    manifest = Manifest(model_name="demand", version=1, created_at=utcnow(), horizon=H, models=fitted.models)
    bundle = write_bundle(tmp_path / "bundle", manifest, fitted.payloads, private)
    synthetic.write_parquet(tmp_path / "history.parquet")
    scored = _score_in_fresh_process(bundle, tmp_path / "history.parquet", tmp_path / "f.parquet")
    worst = _compare(scored, series, assignment, 7, {"TSB": TSB_PARAMS})
    assert set(worst) == set(SYNTHETIC_MODELS)
    assert max(worst.values()) <= TOL, worst


def test_bundle_matches_in_memory_on_walmart(tmp_path: Path, shared_data: Path) -> None:
    """Walmart weekly departments (one store, complete series): AutoETS and SeasonalNaive bundles match."""
    raw = pl.read_csv(shared_data / "walmart" / "train.csv.gz", try_parse_dates=True)
    frame = raw.filter(pl.col("Store") == 1, pl.col("Dept") <= 12).select(
        store_id=pl.col("Store").cast(pl.Utf8),
        item_id=pl.col("Dept").cast(pl.Utf8).str.zfill(2),
        category=pl.col("Dept").cast(pl.Utf8).str.zfill(2),
        ds=pl.col("Date").cast(pl.Date),
        y=pl.col("Weekly_Sales").cast(pl.Float64),
    )
    frame = frame.filter(pl.len().over("item_id") == pl.len().over("item_id").max())
    assert frame.select("item_id").n_unique() >= 8
    series = _series(frame)
    keys = sorted(series)
    assignment = {key: ("AutoETS" if i % 3 else "SeasonalNaive") for i, key in enumerate(keys)}
    by_category = {key[1]: model for key, model in assignment.items()}  # category == department == item
    private, _ = key_pair(tmp_path)
    bundle = build_bundle(tmp_path / "bundle", frame, by_category, private, season_length=52, freq="W")
    assert read_manifest(bundle).season_length == 52
    frame.write_parquet(tmp_path / "history.parquet")
    scored = _score_in_fresh_process(bundle, tmp_path / "history.parquet", tmp_path / "f.parquet")
    worst = _compare(scored, series, assignment, 52)
    assert max(worst.values()) <= TOL, worst


def test_load_fitted_reads_every_state_table(tmp_path: Path, synthetic: pl.DataFrame) -> None:
    """load_fitted returns the per-series choice and one state table per fitted-state model."""
    frame = synthetic.filter(pl.col("item_id").is_in(["I00001", "I00003", "I00005"]))
    private, _ = key_pair(tmp_path)
    categories = frame["category"].unique().sort().to_list()
    assignment = {c: ("AutoETS" if i == 0 else "Naive") for i, c in enumerate(categories)}
    bundle = build_bundle(tmp_path / "b", frame, assignment, private)
    manifest = read_manifest(bundle)
    loaded = load_fitted(bundle, manifest)
    assert loaded.series.height == 3
    assert set(loaded.states) == {"AutoETS"}
    assert set(loaded.series["model"].to_list()) == set(assignment.values())


@pytest.mark.parametrize(
    ("model", "damped"),
    [
        ("ANN", False),
        ("AAN", True),
        ("AAA", False),
        ("MNA", False),
        ("MAN", True),
        ("MNM", False),
        ("MAM", True),
    ],
)
def test_ets_kernel_matches_statsforecast_forward(model: str, damped: bool) -> None:
    """The vectorised ETS forward equals statsforecast's forward for each model form (ragged lengths)."""
    rng = np.random.default_rng(len(model) + int(damped))
    t = np.arange(160)
    ys = [
        np.abs(20 + 5 * np.sin(2 * np.pi * t / 7) + 0.03 * t + rng.normal(0, 2, 160))[k:] + 1
        for k in (0, 9, 30)
    ]
    fits = [make_model("AutoETS", 7, {"model": model, "damped": damped}).fit(y[:80]) for y in ys]
    packed = np.concatenate(ys)
    offsets = np.concatenate([[0], np.cumsum([len(y) for y in ys])]).astype(np.int64)
    mat, lengths = kernels.pad_right_aligned(packed, offsets, np.arange(3))
    for comp in {f.model_["components"] for f in fits}:
        rows = [i for i, f in enumerate(fits) if f.model_["components"] == comp]
        par = np.stack([fits[i].model_["par"] for i in rows])
        n_params = np.array([fits[i].model_["n_params"] for i in rows])
        out = ets_kernel.ets_forward(mat[:, rows], lengths[rows], comp, 7, par, n_params, 28, LEVELS)
        for r, i in enumerate(rows):
            ref = fits[i].forward(ys[i], h=28, level=LEVELS)
            for key, values in ref.items():
                assert _rel_diff(out[key][r], values) <= TOL, (comp, key)


def test_ets_kernel_constant_series() -> None:
    """A constant fresh history is forecast as that constant with zero-width intervals, like statsforecast."""
    rng = np.random.default_rng(0)
    fit = make_model("AutoETS", 7).fit(np.abs(rng.normal(10, 2, 80)) + 1)
    y = np.full((50, 1), 4.0)
    out = ets_kernel.ets_forward(
        y, np.array([50]), fit.model_["components"], 7, fit.model_["par"][None, :], np.array([3]), 5, LEVELS
    )
    ref = fit.forward(y[:, 0], h=5, level=LEVELS)
    for key, values in ref.items():
        assert _rel_diff(out[key][0], values) <= TOL


@pytest.mark.parametrize("family", ["TSB", "CrostonClassic", "WindowAverage", "SeasonalWindowAverage"])
def test_conformal_kernels_match_statsforecast(family: str) -> None:
    """Intermittent and window models with conformal intervals equal statsforecast's (ragged, zero, short)."""
    from statsforecast.utils import ConformalIntervals

    from forecasting.bundle.format import ModelEntry
    from forecasting.models.fitted_forecast import forecast_batch

    rng = np.random.default_rng(5)
    ys = [np.where(rng.random(n) < 0.3, rng.poisson(3, n) + 1, 0).astype(float) for n in (40, 70, 95, 25)]
    ys += [np.zeros(60), rng.poisson(5, 80).astype(float)]
    packed = np.concatenate(ys)
    offsets = np.concatenate([[0], np.cumsum([len(y) for y in ys])]).astype(np.int64)
    mat, lengths = kernels.pad_right_aligned(packed, offsets, np.arange(len(ys)))
    params: dict[str, Any] = {
        "TSB": {"alpha_d": 0.2, "alpha_p": 0.3},
        "CrostonClassic": {},
        "WindowAverage": {"window_size": 4},
        "SeasonalWindowAverage": {"season_length": 7, "window_size": 2},
    }[family]
    entry = ModelEntry(state="refit-at-edge", family=family, params=params)
    out = forecast_batch(entry, 7, mat, lengths, 10, LEVELS)
    for i, y in enumerate(ys):
        enough = len(y) > CONFORMAL_WINDOWS * 10
        kwargs = dict(params)
        if enough:
            kwargs["prediction_intervals"] = ConformalIntervals(h=10, n_windows=CONFORMAL_WINDOWS)
        ref = make_model(family, 7, kwargs).forecast(y=y, h=10, level=LEVELS if enough else None)
        for key, values in ref.items():
            assert _rel_diff(out[key][i], values) <= TOL, (i, key)
        if not enough:
            assert np.isnan(out["lo-80"][i]).all()
