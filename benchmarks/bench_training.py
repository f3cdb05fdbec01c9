"""Training on the Walmart weekly data: throughput and shelfcast's overhead over plain statsforecast.

``train_walmart``: shelfcast's training path on the 3,331 store-department series with the statistical
candidates of ``configs/walmart.toml`` (validated canonical frame in, rolling-origin backtest of the
configured candidates, per-category selection, final fit and forecast of the selected models). Baseline
``statsforecast_direct``: the same work done by calling statsforecast directly in the same run -
``StatsForecast.cross_validation`` with the same model objects, windows and levels, then ``forecast`` of
each selected model on its series - without our metrics, selection tables, ordering or frame handling.
``train_walmart / statsforecast_direct`` is our overhead (target <= 1.10). CPU-time figures are reported
beside the wall times (the machine is shared).

The data comes from the shared real-data folder (``SHELFCAST_TEST_DATA`` or ``../shared/data``); the tiny size
uses a small synthetic weekly frame instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from forecasting.common.config import TrainConfig, load_train_config
from forecasting.data.synthetic import generate
from forecasting.data.validation import load_canonical
from forecasting.models.families import GLOBAL_MODELS, build_models
from forecasting.training.backtest import SF_FREQ, run_backtest, sf_frame
from forecasting.training.pipeline import forecast_selected
from forecasting.training.selection import select_models

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SHELFCAST_TEST_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def setup(bench_size: str) -> tuple[pl.DataFrame, TrainConfig]:
    """The canonical frame and the training config of the benchmark."""
    cfg = load_train_config([ROOT / "configs" / "walmart.toml"])
    # The statistical candidates of the shipped config, one model per group: the part statsforecast alone
    # can do (the held-out accuracy suite trains the config as shipped, global model and ensembles too).
    local = [m for m in cfg.train.models if m not in GLOBAL_MODELS]
    cfg = msgspec.structs.replace(
        cfg, train=msgspec.structs.replace(cfg.train, models=local, ensemble_top_k=0, select_by="category")
    )
    # Warm-up: pay the libraries' import and first-call costs before anything is timed.
    shelfcast_train(generate(stores=1, items=2, days=7 * 120, freq="W", seed=2), cfg)
    if bench_size == "tiny":
        frame = generate(stores=2, items=10, days=7 * 120, freq="W", seed=1)
        return frame, cfg
    train_file = DATA / "walmart" / "train.csv.gz"
    if not train_file.is_file():
        pytest.skip(f"Walmart data not found at {train_file}")
    return load_canonical(train_file, cfg.data).frame, cfg


def shelfcast_train(frame: pl.DataFrame, cfg: TrainConfig) -> pl.DataFrame:
    """Backtest, select per category, fit and forecast the selected models (what ``train`` models)."""
    tr = cfg.train
    result = run_backtest(frame, tr, cfg.data.freq)
    selection = select_models(result, metric=tr.metric, by=tr.select_by, fallback=tr.fallback)
    return forecast_selected(frame, selection.assignment, tr, cfg.data.freq)


def direct_statsforecast(frame: pl.DataFrame, cfg: TrainConfig, assignment: pl.DataFrame) -> list[Any]:
    """The same model work through statsforecast alone: one cross_validation, one forecast per model."""
    from statsforecast import StatsForecast

    tr = cfg.train
    freq = SF_FREQ[cfg.data.freq]
    data = sf_frame(frame)
    sf = StatsForecast(models=build_models(tr.models, tr, tr.horizon), freq=freq)
    # The series long enough for the backtest (the others go straight to the fallback, as in shelfcast).
    tested = data.join(
        assignment.filter(pl.col("reason") == "backtest").select("unique_id"), on="unique_id", how="semi"
    )
    outputs = [
        sf.cross_validation(
            df=tested, h=tr.horizon, n_windows=tr.windows, step_size=tr.step or tr.horizon, level=tr.levels
        )
    ]
    for label, ids in assignment.group_by("model"):
        sub = data.join(ids.select("unique_id"), on="unique_id", how="semi")
        model_sf = StatsForecast(
            models=build_models([str(label[0])], tr, tr.horizon, intervals=False), freq=freq
        )
        outputs.append(model_sf.forecast(df=sub, h=tr.horizon))
    return outputs


@pytest.fixture(scope="module")
def assignment(setup: tuple[pl.DataFrame, TrainConfig]) -> pl.DataFrame:
    """The per-series models shelfcast selects (the direct baseline fits the same ones)."""
    frame, cfg = setup
    tr = cfg.train
    result = run_backtest(frame, tr, cfg.data.freq, intervals=False)
    return select_models(result, metric=tr.metric, by=tr.select_by, fallback=tr.fallback).assignment


def test_train_walmart(benchmark: Any, figures: Any, setup: tuple[pl.DataFrame, TrainConfig]) -> None:
    """shelfcast's training path on every Walmart series."""
    frame, cfg = setup
    figures.timing("train_walmart", baseline="statsforecast_direct", target="ratio <= 1.1")
    out = benchmark.pedantic(figures.with_cpu(shelfcast_train), args=(frame, cfg), rounds=1, iterations=1)
    n_series = frame.select("store_id", "item_id").n_unique()
    assert out["unique_id"].n_unique() > 0
    figures.value("train_walmart_cpu", figures.cpu_seconds(), "cpu-s", baseline="statsforecast_direct_cpu")
    figures.value("train_series_per_second", n_series / figures.seconds(), "series/s")


def test_statsforecast_direct(
    benchmark: Any, figures: Any, setup: tuple[pl.DataFrame, TrainConfig], assignment: pl.DataFrame
) -> None:
    """Baseline: the same models, windows and final fits through statsforecast alone."""
    frame, cfg = setup
    figures.timing("statsforecast_direct")
    benchmark.pedantic(
        figures.with_cpu(direct_statsforecast), args=(frame, cfg, assignment), rounds=1, iterations=1
    )
    figures.value("statsforecast_direct_cpu", figures.cpu_seconds(), "cpu-s")
