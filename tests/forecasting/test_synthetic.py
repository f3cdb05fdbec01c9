"""The synthetic retail generator: shape, determinism and the demand patterns it promises."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from forecasting.data.frames import read_frame, write_frame
from forecasting.data.synthetic import CATEGORIES, generate
from shelfcast.cli import cli

STORES, ITEMS, DAYS = 3, 240, 730


@pytest.fixture(scope="module")
def sales() -> pl.DataFrame:
    """Two years of daily sales for 3 stores x 240 items (525,600 rows)."""
    return generate(STORES, ITEMS, DAYS, seed=11)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_schema_ids_and_order(sales: pl.DataFrame) -> None:
    """Canonical columns and types, ids S001../I00001.., one row per series and day, sorted."""
    assert sales.schema == pl.Schema(
        {
            "store_id": pl.String,
            "item_id": pl.String,
            "category": pl.String,
            "ds": pl.Date,
            "y": pl.Float64,
            "is_holiday": pl.Boolean,
            "on_promo": pl.Boolean,
        }
    )
    assert sales.height == STORES * ITEMS * DAYS
    assert sales["store_id"].unique().sort().to_list() == ["S001", "S002", "S003"]
    assert sales["item_id"].min() == "I00001"
    assert sales["item_id"].max() == f"I{ITEMS:05d}"
    assert sales["ds"].min() == date(2023, 1, 1)
    assert sales["ds"].max() == date(2024, 12, 30)
    assert sales.is_unique().all() and sales.select("store_id", "item_id", "ds").is_unique().all()
    assert sales.equals(sales.sort("store_id", "item_id", "ds"))
    assert sales.null_count().sum_horizontal().item() == 0


def test_same_seed_same_parquet_bytes(tmp_path: Path) -> None:
    """The same arguments give byte-identical Parquet files; another seed gives other sales."""
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_frame(generate(2, 30, 120, seed=5), a)
    write_frame(generate(2, 30, 120, seed=5), b)
    assert _sha256(a) == _sha256(b)
    assert not generate(2, 30, 120, seed=6)["y"].equals(read_frame(a)["y"])


def test_item_category_is_fixed_by_item_number() -> None:
    """An item's category depends only on its id, not on the seed or the size of the store."""
    small = generate(1, 40, 3, seed=0).select("item_id", "category").unique()
    large = generate(2, 90, 5, seed=99).select("item_id", "category").unique()
    joined = small.join(large, on="item_id", suffix="_large")
    assert joined.height == 40
    assert (joined["category"] == joined["category_large"]).all()


def test_categories_have_different_levels(sales: pl.DataFrame) -> None:
    """At least 8 named categories appear and their mean sales differ by an order of magnitude."""
    means = dict(sales.group_by("category").agg(pl.col("y").mean()).iter_rows())
    assert len(means) >= 8
    assert set(means) <= {c.name for c in CATEGORIES}
    assert max(means.values()) > 5 * min(means.values())
    assert means["produce"] > 3 * means["household"]


def test_weekly_and_yearly_seasonality(sales: pl.DataFrame) -> None:
    """Saturdays sell more than Tuesdays; beverages sell more in July than in January."""
    by_weekday = dict(sales.group_by(pl.col("ds").dt.weekday()).agg(pl.col("y").mean()).iter_rows())
    assert by_weekday[6] > 1.25 * by_weekday[2]  # ISO weekday: 6 = Saturday, 2 = Tuesday
    beverages = sales.filter(pl.col("category") == "beverages")
    by_month = dict(beverages.group_by(pl.col("ds").dt.month()).agg(pl.col("y").mean()).iter_rows())
    assert by_month[7] > 1.3 * by_month[1]


def test_holidays_flagged_and_felt(sales: pl.DataFrame) -> None:
    """Fixed and movable holidays are flagged, and shopping peaks the day before Thanksgiving."""
    flagged = set(sales.filter(pl.col("is_holiday"))["ds"].unique().to_list())
    for day in (
        date(2023, 12, 25),
        date(2023, 7, 4),
        date(2023, 11, 23),
        date(2023, 4, 9),
        date(2024, 3, 31),
    ):
        assert day in flagged
    assert date(2023, 11, 22) not in flagged
    daily = dict(sales.group_by("ds").agg(pl.col("y").sum()).iter_rows())
    wednesdays_before = [daily[date(2023, 11, d)] for d in (1, 8, 15)]
    assert daily[date(2023, 11, 22)] > 1.3 * max(wednesdays_before)
    assert daily[date(2023, 12, 25)] < 0.7 * daily[date(2023, 12, 18)]


def test_promotions_lift_sales(sales: pl.DataFrame) -> None:
    """Promoted item-days sell clearly more than the same items' other days, and promotions are weekly."""
    promoted = sales.filter(pl.col("on_promo").any().over("store_id", "item_id"))
    lift = promoted.group_by("on_promo").agg(pl.col("y").mean())
    means = dict(lift.iter_rows())
    assert means[True] > 1.3 * means[False]
    share = sales["on_promo"].mean()
    assert share is not None and 0.01 < float(share) < 0.15
    # A promotion runs Monday to Sunday and is the same in every store.
    weeks = promoted.group_by("store_id", "item_id", pl.col("ds").dt.truncate("1w")).agg(
        pl.col("on_promo").n_unique()
    )
    assert weeks["on_promo"].max() == 1
    per_store = promoted.group_by("item_id", "ds").agg(pl.col("on_promo").n_unique())
    assert per_store["on_promo"].max() == 1


def test_intermittent_items_and_rare_returns(sales: pl.DataFrame) -> None:
    """20-30% of items sell nothing on most days; a few rows are net returns (negative y), very rarely."""
    zero_share = sales.group_by("item_id").agg((pl.col("y") == 0).mean().alias("zeros"))
    intermittent = zero_share.filter(pl.col("zeros") > 0.6).height / ITEMS
    assert 0.15 <= intermittent <= 0.35
    negative = sales.filter(pl.col("y") < 0).height / sales.height
    assert 0 < negative < 0.003
    assert (sales["y"] == sales["y"].round()).all()


def test_store_sizes_differ(sales: pl.DataFrame) -> None:
    """Stores of different sizes sell different volumes of the same assortment."""
    totals = sales.group_by("store_id").agg(pl.col("y").sum())["y"]
    assert totals.max() > 1.3 * totals.min()


def test_weekly_frequency_uses_monday_buckets() -> None:
    """freq="W" gives days // 7 weekly rows per series, each labelled by a Monday on or after start."""
    weekly = generate(2, 20, 730, freq="W", seed=1)
    assert weekly.height == 2 * 20 * 104
    assert weekly["ds"].dt.weekday().unique().to_list() == [1]
    assert weekly["ds"].min() == date(2023, 1, 2)
    christmas_week = weekly.filter(pl.col("ds") == date(2023, 12, 25))
    assert christmas_week["is_holiday"].all()
    assert weekly.filter(pl.col("ds") == date(2023, 2, 6))["is_holiday"].sum() == 0
    daily = generate(2, 20, 728, seed=1)
    weekly_mean = float(weekly["y"].mean())
    daily_mean = float(daily["y"].mean())
    assert 5 * daily_mean < weekly_mean < 9 * daily_mean


@pytest.mark.parametrize(
    ("stores", "items", "days", "freq"), [(0, 1, 1, "D"), (1, 1, 0, "D"), (1, 1, 5, "H")]
)
def test_bad_arguments_rejected(stores: int, items: int, days: int, freq: str) -> None:
    """Zero sizes and unknown frequencies raise ValueError."""
    with pytest.raises(ValueError, match="must be"):
        generate(stores, items, days, freq=freq)


def test_cli_generate_writes_file_and_summary(tmp_path: Path) -> None:
    """`data generate` writes the frame and prints one line: rows, series, date range, seconds."""
    out = tmp_path / "sub" / "sales.parquet"
    args = [
        "data",
        "generate",
        "--stores",
        "2",
        "--items",
        "7",
        "--days",
        "30",
        "--seed",
        "4",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert "\n" not in line
    assert "420 rows" in line and "14 series" in line and "2023-01-01..2023-01-30" in line and " s " in line
    assert read_frame(out).equals(generate(2, 7, 30, seed=4))


def test_cli_generate_errors(tmp_path: Path) -> None:
    """A bad extension is a clear error (exit 1, nothing written); a bad --freq is a usage error (exit 2)."""
    bad = CliRunner().invoke(cli, ["data", "generate", "--days", "5", "--out", str(tmp_path / "x.txt")])
    assert bad.exit_code == 1
    assert "unknown file extension" in bad.output
    assert list(tmp_path.iterdir()) == []
    usage = CliRunner().invoke(cli, ["data", "generate", "--freq", "M", "--out", str(tmp_path / "x.csv")])
    assert usage.exit_code == 2
