"""Forecast adjustments: a signed manifest field applied by scoring, written by `shelfcast bundle adjust`."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from forecasting.bundle.format import read_manifest, verify
from forecasting.bundle.scoring import score
from shelfcast.cli import cli
from tests.agent.support import make_bundle, make_keys, sales_frame


def _adjust(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["bundle", "adjust", *args])
    return result.exit_code, result.output


def test_adjusted_bundle_scales_forecasts_and_intervals_per_category(tmp_path: Path) -> None:
    """x1.3 everywhere and x2 for one category: point forecasts and interval bounds scale, signed anew."""
    private, public = make_keys(tmp_path)
    make_bundle(tmp_path, private, 1)
    source, out = tmp_path / "demand-v1", tmp_path / "demand-v2"
    code, output = _adjust(
        str(source), str(out), "--version", "2", "--signing-key", str(private), "--multiply", "1.3",
        "--category", "food=2", "--reason", "promotion", "--key", str(public),
    )  # fmt: skip
    assert code == 0, output
    manifest = verify(out, [public])
    assert manifest.version == 2
    assert manifest.adjustments.multiply == 1.3  # type: ignore[union-attr]
    assert manifest.adjustments.categories == {"food": 2.0}  # type: ignore[union-attr]
    history = sales_frame()
    base = score(source, history, threads=1)
    adjusted = score(out, history, threads=1)
    keys = ["store_id", "item_id", "ds"]
    joined = base.join(adjusted, on=keys, suffix="_adj")
    for column in ("forecast", "forecast-lo-80", "forecast-hi-95"):
        ratio = joined.select((pl.col(f"{column}_adj") / pl.col(column)).alias("r"), "category")
        for category, factor in (("food", 2.0), ("drinks", 1.3)):
            values = ratio.filter(pl.col("category") == category)["r"].to_list()
            assert values and all(abs(v - factor) < 1e-9 for v in values), (column, category)


def test_manifest_without_adjustments_has_no_such_key(tmp_path: Path) -> None:
    """Bundles that never use adjustments carry no `adjustments` key (older readers still accept them)."""
    private, _ = make_keys(tmp_path)
    make_bundle(tmp_path, private, 1)
    raw = json.loads((tmp_path / "demand-v1" / "manifest.json").read_text())
    assert "adjustments" not in raw
    assert read_manifest(tmp_path / "demand-v1").version == 1


def test_adjust_refuses_an_older_version_and_bad_factors(tmp_path: Path) -> None:
    """The new version must be above the source's; factors must be positive and CATEGORY=FACTOR."""
    private, _ = make_keys(tmp_path)
    make_bundle(tmp_path, private, 3)
    source = str(tmp_path / "demand-v3")
    code, output = _adjust(source, str(tmp_path / "a"), "--version", "3", "--signing-key", str(private))
    assert code == 1 and "must be above the source's version 3" in output
    code, output = _adjust(source, str(tmp_path / "b"), "--version", "4", "--signing-key", str(private),
                           "--multiply", "0")  # fmt: skip
    assert code == 1 and "must be finite and > 0" in output
    code, output = _adjust(source, str(tmp_path / "c"), "--version", "4", "--signing-key", str(private),
                           "--category", "food")  # fmt: skip
    assert code == 2 and "CATEGORY=FACTOR" in output
