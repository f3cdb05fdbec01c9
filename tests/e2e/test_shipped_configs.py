"""Every shipped training config trains, writes a bundle, and scores from it in a fresh process exactly as
``train`` forecast, on a slice of the real data it is written for."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from forecasting.bundle.signing import generate_key_files
from forecasting.data.synthetic import generate

PROJECT = Path(__file__).resolve().parents[2]
CONFIGS = PROJECT / "configs"


def _walmart(data: Path, out: Path) -> Path:
    """Two stores of the Walmart extract (gzip CSV, as published), with stores.csv and features.csv.gz."""
    raw = pl.read_csv(data / "walmart" / "train.csv.gz")
    target = out / "train.csv.gz"
    with gzip.open(target, "wb") as fh:
        raw.filter(pl.col("Store").is_in([1, 20])).write_csv(fh)
    for side_file in ("stores.csv", "features.csv.gz"):
        shutil.copy(data / "walmart" / side_file, out / side_file)
    return target


def _m5(data: Path, out: Path) -> Path:
    """All ten M5 series and the calendar (the extract is small)."""
    for name in ("sales_d1-d1885.csv", "calendar.csv"):
        shutil.copy(data / "m5_mini" / name, out / name)
    return out / "sales_d1-d1885.csv"


def _m4(name: str, rows: int) -> Callable[[Path, Path], Path]:
    def slice_rows(data: Path, out: Path) -> Path:
        """The header and the first ``rows`` series of an M4 file."""
        lines = (data / "m4" / name).read_text().splitlines(keepends=True)
        target = out / name
        target.write_text("".join(lines[: rows + 1]))
        return target

    return slice_rows


def _synthetic(_: Path, out: Path) -> Path:
    """The seeded synthetic extract the defaults are written for."""
    target = out / "sales.parquet"
    generate(stores=2, items=6, days=200, seed=5).write_parquet(target)
    return target


# Every config with a [train] section must appear here: a new one without a data slice fails the test.
SLICES: dict[str, Callable[[Path, Path], Path]] = {
    "walmart.toml": _walmart,
    "m5.toml": _m5,
    "m4-hourly.toml": _m4("Hourly-train.csv", 12),
    "m4-weekly.toml": _m4("Weekly-train.csv", 12),
    "train.toml": _synthetic,
}


def _training_configs() -> list[str]:
    return sorted(p.name for p in CONFIGS.glob("*.toml") if "train" in tomllib.loads(p.read_text()))


def test_every_training_config_has_a_data_slice() -> None:
    """The end-to-end test below covers every config in configs/ that trains."""
    assert set(_training_configs()) == set(SLICES)


def _shelfcast(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHELFCAST_LOGGING__LEVEL": "warning"}
    return subprocess.run(
        [sys.executable, "-m", "shelfcast", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=PROJECT,
        env=env,
    )


@pytest.mark.parametrize("config", sorted(SLICES))
def test_shipped_config_trains_and_scores_from_its_bundle(
    config: str, shared_data: Path, tmp_path: Path
) -> None:
    """train --config C writes a bundle; score from that bundle in a new process gives train's forecasts."""
    data = SLICES[config](shared_data, tmp_path)
    key, _, _ = generate_key_files(tmp_path / "signing.key")
    bundle = tmp_path / "model"
    trained = _shelfcast(
        "train", "--config", str(CONFIGS / config), "--data", str(data), "--out", str(bundle),
        "--signing-key", str(key),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "runner_up".upper() in trained.stdout  # the selection evidence is printed per group
    scored_file = tmp_path / "scored.parquet"
    scored = _shelfcast("score", "--bundle", str(bundle), "--history", str(data), "--out", str(scored_file))
    assert scored.returncode == 0, scored.stdout + scored.stderr
    expected = pl.read_parquet(tmp_path / "model.run" / "forecasts.parquet")
    got = pl.read_parquet(scored_file)
    assert expected.height > 0
    assert_frame_equal(got, expected, check_exact=False, rel_tol=1e-9)
    assert got["forecast"].is_finite().all()
