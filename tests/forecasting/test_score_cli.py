"""`shelfcast score` reads what `train` reads: the bundle's [data] mapping, --config, csv.gz and Parquet."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result
from polars.testing import assert_frame_equal

from forecasting.bundle.format import read_manifest
from forecasting.bundle.signing import generate_key_files
from forecasting.data.synthetic import generate
from shelfcast.cli import cli

RAW_NAMES = {
    "store_id": "Shop",
    "item_id": "Sku",
    "category": "Dept",
    "ds": "Day",
    "y": "Units",
    "is_holiday": "Holiday",
    "on_promo": "Promo",
}

TRAIN_SECTION = """
[train]
horizon = 7
season_length = 7
models = ["Naive", "SeasonalNaive", "WindowAverage"]
windows = 1
"""

RAW_CONFIG = (
    """
[data]
freq = "D"
store_id = "Shop"
item_id = "Sku"
category = "Dept"
ds = "Day"
y = "Units"
date_format = "%d/%m/%Y"
holiday = "Holiday"
promo = "Promo"
store_file = "shops.csv"
store_key = "Shop"
store_columns = ["Size"]
"""
    + TRAIN_SECTION
)

OTHER_CONFIG = """
[data]
freq = "D"
store_id = "branch"
item_id = "article"
category = "group"
ds = "date"
y = "qty"
"""


@dataclass(frozen=True)
class Trained:
    """A bundle trained on a raw extract with a mapping, and the canonical frame behind the extract."""

    root: Path
    bundle: Path
    raw: Path
    config: Path
    key: Path
    canonical: pl.DataFrame


def _write_raw(canonical: pl.DataFrame, folder: Path, name: str = "sales.csv.gz") -> Path:
    """The canonical frame as a raw long extract: other column names, day-first dates, gzip, a shops file."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = canonical.with_columns(pl.col("ds").dt.strftime("%d/%m/%Y")).rename(RAW_NAMES)
    path = folder / name
    path.write_bytes(gzip.compress(raw.write_csv().encode()))
    shops = pl.DataFrame({"Shop": ["S001", "S002"], "Size": [1200, 800]})
    shops.write_csv(folder / "shops.csv")
    return path


def _run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _ok(*args: str | Path) -> Result:
    result = _run(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """`train` on a 2 stores x 3 items x 120 days raw CSV.gz with a [data] mapping and a stores file."""
    root = tmp_path_factory.mktemp("score_cli")
    canonical = generate(stores=2, items=3, days=120, seed=5)
    raw = _write_raw(canonical, root / "extract")
    config = root / "raw.toml"
    config.write_text(RAW_CONFIG)
    key, _, _ = generate_key_files(root / "signing.key")
    bundle = root / "bundle"
    _ok("train", "--config", config, "--data", raw, "--out", bundle, "--signing-key", key)
    return Trained(root=root, bundle=bundle, raw=raw, config=config, key=key, canonical=canonical)


def _train_forecasts(trained: Trained) -> pl.DataFrame:
    return pl.read_parquet(trained.root / "bundle.run" / "forecasts.parquet")


def test_score_applies_the_recorded_mapping_and_matches_train_forecasts(
    trained: Trained, tmp_path: Path
) -> None:
    """Without --config, a raw CSV.gz elsewhere (its shops file beside it) scores as train's own forecasts."""
    assert read_manifest(trained.bundle).data["store_id"] == "Shop"
    elsewhere = tmp_path / "store-42"
    elsewhere.mkdir()
    history = elsewhere / trained.raw.name
    shutil.copy(trained.raw, history)
    shutil.copy(trained.raw.parent / "shops.csv", elsewhere / "shops.csv")
    out = tmp_path / "forecasts.parquet"
    result = _ok("score", "--bundle", trained.bundle, "--history", history, "--out", out)
    assert "6 series, 42 rows" in result.output
    assert_frame_equal(pl.read_parquet(out), _train_forecasts(trained))


def test_score_reads_a_canonical_parquet_history_as_it_is(trained: Trained, tmp_path: Path) -> None:
    """A history already in canonical columns (Parquet) scores as it is, to the same forecasts."""
    history = tmp_path / "canonical.parquet"
    trained.canonical.write_parquet(history)
    out = tmp_path / "forecasts.csv"
    _ok("score", "--bundle", trained.bundle, "--history", history, "--out", out)
    scored = pl.read_csv(out, try_parse_dates=True)
    expected = _train_forecasts(trained)
    assert_frame_equal(scored, expected, check_dtypes=False)


def test_score_config_overrides_the_recorded_mapping(trained: Trained, tmp_path: Path) -> None:
    """--config maps a plain CSV in another layout that the recorded mapping cannot read."""
    other = trained.canonical.select(
        pl.col("store_id").alias("branch"),
        pl.col("item_id").alias("article"),
        pl.col("category").alias("group"),
        pl.col("ds").alias("date"),
        pl.col("y").alias("qty"),
    )
    history = tmp_path / "other.csv"
    other.write_csv(history)
    config = tmp_path / "other.toml"
    config.write_text(OTHER_CONFIG)
    out = tmp_path / "forecasts.parquet"
    _ok("score", "--config", config, "--bundle", trained.bundle, "--history", history, "--out", out)
    assert_frame_equal(pl.read_parquet(out), _train_forecasts(trained))
    refused = _run("score", "--bundle", trained.bundle, "--history", history, "--out", tmp_path / "x.parquet")
    assert refused.exit_code == 1
    assert refused.output.startswith("error: other.csv: columns 'Shop' (from [data] store_id), 'Sku' ")
    assert refused.output.rstrip().endswith("not found; columns are: branch, article, group, date, qty")


def test_score_config_with_another_frequency_is_refused(trained: Trained, tmp_path: Path) -> None:
    """A --config whose [data] freq is not the bundle's is a one-line error naming both."""
    config = tmp_path / "weekly.toml"
    config.write_text(RAW_CONFIG.replace('freq = "D"', 'freq = "W"'))
    out = tmp_path / "f.parquet"
    result = _run(
        "score", "--config", config, "--bundle", trained.bundle, "--history", trained.raw, "--out", out
    )
    assert result.exit_code == 1
    assert result.output.strip() == "error: [data] freq 'W' is not the bundle's freq 'D'"
    assert not out.exists()


def _without_shop(trained: Trained, folder: Path) -> Path:
    """The raw extract with its Shop column renamed to Branch (a mapping that no longer fits)."""
    path = _write_raw(trained.canonical, folder)
    frame = pl.read_csv(path, infer_schema=False).rename({"Shop": "Branch"})
    path.write_bytes(gzip.compress(frame.write_csv().encode()))
    return path


MISSING = (
    "error: sales.csv.gz: column 'Shop' (from [data] store_id) not found; "
    "columns are: Branch, Sku, Dept, Day, Units, Holiday, Promo"
)


def test_missing_column_is_one_line_for_train(trained: Trained, tmp_path: Path) -> None:
    """train on an extract without the mapped store column exits 1 with one line naming column and key."""
    data = _without_shop(trained, tmp_path / "bad")
    result = _run(
        "train",
        "--config",
        trained.config,
        "--data",
        data,
        "--out",
        tmp_path / "b",
        "--signing-key",
        trained.key,
    )
    assert result.exit_code == 1
    assert result.output.strip() == MISSING
    assert "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_missing_column_is_one_line_for_score(trained: Trained, tmp_path: Path) -> None:
    """score of a history without the mapped store column exits 1 with the same one-line message."""
    history = _without_shop(trained, tmp_path / "bad")
    out = tmp_path / "f.parquet"
    result = _run("score", "--bundle", trained.bundle, "--history", history, "--out", out)
    assert result.exit_code == 1
    assert result.output.strip() == MISSING
    assert not out.exists()


def test_missing_column_is_one_line_for_data_validate(trained: Trained, tmp_path: Path) -> None:
    """data validate reports the same missing column the same way."""
    data = _without_shop(trained, tmp_path / "bad")
    result = _run("data", "validate", "--config", trained.config, "--data", data, "--out", tmp_path / "v")
    assert result.exit_code == 1
    assert result.output.strip() == MISSING


def test_score_quarantines_bad_rows_like_train(trained: Trained, tmp_path: Path) -> None:
    """Rows train would quarantine are quarantined by score too: reported, and refused with --strict."""
    frame = pl.read_csv(trained.raw, infer_schema=False)
    broken = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("n/a")).otherwise(pl.col("Units")).alias("Units")
    )
    folder = tmp_path / "extract"
    history = _write_raw(trained.canonical, folder)
    history.write_bytes(gzip.compress(broken.write_csv().encode()))
    out = tmp_path / "f.parquet"
    reports = tmp_path / "validation"
    result = _ok(
        "score", "--bundle", trained.bundle, "--history", history, "--out", out, "--validation-out", reports
    )
    assert "1 row(s) quarantined (bad_number x1)" in result.output
    assert pl.read_csv(reports / "quarantine.csv")["line"].to_list() == [5]
    strict = _run(
        "score", "--bundle", trained.bundle, "--history", history, "--out", tmp_path / "g.parquet", "--strict"
    )
    assert strict.exit_code == 1
    assert "quarantined (--strict)" in strict.output


def test_environment_overrides_the_recorded_mapping(trained: Trained, tmp_path: Path) -> None:
    """SHELFCAST_DATA__STORE_ID overrides one key of the recorded mapping, the rest of it still applies."""
    history = _without_shop(trained, tmp_path / "renamed")
    out = tmp_path / "f.parquet"
    args = ["score", "--bundle", str(trained.bundle), "--history", str(history), "--out", str(out)]
    result = CliRunner().invoke(cli, args, env={"SHELFCAST_DATA__STORE_ID": "Branch"})
    assert result.exit_code == 0, result.output
    assert_frame_equal(pl.read_parquet(out), _train_forecasts(trained))
