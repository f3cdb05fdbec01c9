"""Training runs: signed bundle + run record, lineage, defaults without a config, byte-identical forecasts."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from forecasting.bundle.format import verify
from forecasting.bundle.signing import generate_key_files
from forecasting.common.config import TrainConfig, TrainSection
from forecasting.data.synthetic import generate
from forecasting.training.pipeline import config_hash, dataset_fingerprint
from shelfcast.cli import cli


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A small synthetic extract (2 stores x 4 items x 120 days), a signing key and its public key."""
    root = tmp_path_factory.mktemp("train")
    data = root / "sales.parquet"
    generate(stores=2, items=4, days=120, seed=3).write_parquet(data)
    key, pub, _ = generate_key_files(root / "signing.key")
    return data, key, pub


def _train(data: Path, key: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(
        cli, ["train", "--data", str(data), "--out", str(out), "--signing-key", str(key), *extra]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_train_without_config_writes_verified_bundle_and_run_record(
    workspace: tuple[Path, Path, Path],
) -> None:
    """With defaults only, train writes a bundle that verifies with the public key and a complete run.json."""
    data, key, pub = workspace
    out = data.parent / "b1"
    _train(data, key, out, "--model-name", "demand", "--version", "3")
    manifest = verify(out, [pub])
    assert (manifest.model_name, manifest.version) == ("demand", 3)
    assert manifest.selection and manifest.metrics["all"]["mae"] > 0
    record = json.loads((data.parent / "b1.run" / "run.json").read_text())
    frame = pl.read_parquet(data)
    assert record["dataset_fingerprint"] == dataset_fingerprint(frame)
    assert record["config_hash"] == config_hash(TrainConfig())
    assert record["code_version"] and record["packages"]["statsforecast"]
    assert record["seed"] == 0
    assert record["candidates"] == TrainConfig().train.models
    assert set(record["metrics"]["candidates"]) == set(record["candidates"])
    assert sum(record["selection"]["models"].values()) == 8
    assert manifest.lineage.run_id == record["run_id"]
    for name in ("selection.csv", "metrics_category.json", "metrics_overall.csv", "forecasts.parquet"):
        assert (data.parent / "b1.run" / name).is_file()
    forecasts = pl.read_parquet(data.parent / "b1.run" / "forecasts.parquet")
    assert forecasts.height == 8 * 28
    assert {"forecast", "forecast-lo-80", "forecast-hi-95", "model"} <= set(forecasts.columns)


def test_same_inputs_give_byte_identical_forecasts(workspace: tuple[Path, Path, Path]) -> None:
    """Two runs on the same data and config: byte-identical forecasts, one content hash, two run ids."""
    data, key, _ = workspace
    _train(data, key, data.parent / "r1")
    _train(data, key, data.parent / "r2")
    first = (data.parent / "r1.run" / "forecasts.parquet").read_bytes()
    second = (data.parent / "r2.run" / "forecasts.parquet").read_bytes()
    assert first == second
    a = json.loads((data.parent / "r1.run" / "run.json").read_text())
    b = json.loads((data.parent / "r2.run" / "run.json").read_text())
    assert a["run_id"] != b["run_id"], "each training is a run of its own"
    assert a["content_hash"] == b["content_hash"] and len(a["content_hash"]) == 64
    assert a["metrics"] == b["metrics"]


def test_backtest_command_writes_tables_and_plots(workspace: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """backtest writes metric tables (CSV+JSON) per level, the selection table and two PNG plots."""
    data, _, _ = workspace
    config = tmp_path / "bt.toml"
    config.write_text('[train]\nhorizon = 14\nmodels = ["Naive", "SeasonalNaive", "CrostonOptimized"]\n')
    out = tmp_path / "bt"
    result = CliRunner().invoke(
        cli, ["backtest", "--config", str(config), "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "SeasonalNaive" in result.output
    for level in ("series", "category", "store", "overall"):
        assert (out / f"metrics_{level}.csv").is_file() and (out / f"metrics_{level}.json").is_file()
    assert (out / "forecasts.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "errors_by_category.png").stat().st_size > 1000
    table = pl.read_csv(out / "selection.csv")
    assert {"category", "selected", "mae", "Naive", "SeasonalNaive"} <= set(table.columns)


def test_forecast_selected_averages_ensemble_members_including_the_global_model() -> None:
    """Ensemble(SeasonalNaive+LightGBM) forecasts are the mean of its members' forecasts."""
    import msgspec

    from forecasting.common.config import TrainSection
    from forecasting.training.pipeline import forecast_selected
    from tests.forecasting.test_models import _weekly_frame

    frame = _weekly_frame()
    cfg = msgspec.structs.replace(TrainSection(), horizon=4, season_length=52, gbm_rounds=20)
    ids = pl.DataFrame({"unique_id": ["S1/A", "S1/B"]})
    single = {
        name: forecast_selected(frame, ids.with_columns(pl.lit(name).alias("model")), cfg, "W")
        for name in ("SeasonalNaive", "LightGBM")
    }
    ensemble = forecast_selected(
        frame, ids.with_columns(pl.lit("Ensemble(SeasonalNaive+LightGBM)").alias("model")), cfg, "W"
    )
    assert ensemble.height == 2 * 4
    expected = (single["SeasonalNaive"]["forecast"] + single["LightGBM"]["forecast"]) / 2
    assert ensemble["forecast"].to_list() == pytest.approx(expected.to_list())
    assert (ensemble["ds"] == single["LightGBM"]["ds"]).all()


def test_a_model_that_cannot_forecast_leaves_no_bundle_and_is_named(
    workspace: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle is scored once before it takes its place: when its model family fails there (a fault
    injected into SeasonalNaive's kernel after training), no bundle is left and the error names the
    model, the category and a series."""
    import forecasting.models.fitted_forecast as fitted_module
    from forecasting.common.errors import BundleError
    from forecasting.training.pipeline import train, write_run

    data, key, _ = workspace
    cfg = TrainConfig(train=TrainSection(models=["SeasonalNaive"], fallback="SeasonalNaive"))
    result = train(pl.read_parquet(data), cfg)

    def broken(*args: object, **kwargs: object) -> None:
        raise FloatingPointError("injected fault")

    monkeypatch.setattr(fitted_module, "_seasonal_naive", broken)
    out = tmp_path / "b"
    with pytest.raises(
        BundleError, match=r"model 'SeasonalNaive' \(SeasonalNaive\) failed on \d+ series of category"
    ):
        write_run(result, out, signing_key=key)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
