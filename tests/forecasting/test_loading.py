"""Loading extracts: column mapping, bare-CR line ends, M5 and M4 wide formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl

from forecasting.config import DataConfig
from forecasting.loading import load_extract, read_text_table

WALMART = DataConfig(
    freq="W",
    store_id="Store",
    item_id="Dept",
    category="Dept",
    ds="Date",
    y="Weekly_Sales",
    holiday="IsHoliday",
    store_file="stores.csv",
    store_key="Store",
    store_columns=["Type", "Size"],
)


def _walmart_slice(shared_data: Path, tmp_path: Path, rows: int = 3000) -> Path:
    lines = gzip.decompress((shared_data / "walmart" / "train.csv.gz").read_bytes()).decode().splitlines()
    out = tmp_path / "train.csv"
    out.write_text("\n".join(lines[: rows + 1]) + "\n")
    (tmp_path / "stores.csv").write_bytes((shared_data / "walmart" / "stores.csv").read_bytes())
    return out


def test_stores_file_with_bare_carriage_returns_reads_all_rows(shared_data: Path) -> None:
    """stores.csv ends its lines with a bare CR; all 45 stores and 3 columns are read."""
    raw = (shared_data / "walmart" / "stores.csv").read_bytes()
    assert b"\r" in raw and b"\n" not in raw
    stores = read_text_table(shared_data / "walmart" / "stores.csv")
    assert stores.columns == ["Store", "Type", "Size"]
    assert stores.height == 45
    assert stores.row(0) == ("1", "A", "151315")


def test_walmart_mapping_gives_canonical_columns_with_lines_and_store_attributes(
    shared_data: Path, tmp_path: Path
) -> None:
    """Store/Dept/Date/Weekly_Sales/IsHoliday map to canonical names; line numbers start at 2."""
    frame = load_extract(_walmart_slice(shared_data, tmp_path), WALMART)
    assert frame.columns[:6] == ["line", "store_id", "item_id", "category", "ds", "y"]
    assert {"is_holiday", "Type", "Size"} <= set(frame.columns)
    assert frame["line"][0] == 2
    assert frame.height == 3000
    assert frame.filter(pl.col("store_id") == "1")["Size"].unique().to_list() == ["151315"]
    assert (frame["item_id"] == frame["category"]).all()


def test_m5_wide_unpivots_days_and_maps_calendar_dates(shared_data: Path) -> None:
    """The M5 wide file becomes 10 series x 1885 days, dated by the official calendar, events as holidays."""
    cfg = DataConfig(format="m5_wide", category="dept_id", calendar_file="calendar.csv")
    frame = load_extract(shared_data / "m5_mini" / "sales_d1-d1885.csv", cfg)
    assert frame.select("store_id", "item_id").n_unique() == 10
    assert frame.height == 10 * 1885
    assert frame["ds"].min() == "2011-01-29"
    assert frame["ds"].max() == "2016-03-27"
    assert frame["is_holiday"].sum() > 0


def test_m4_wide_counts_periods_from_start(shared_data: Path) -> None:
    """M4 Hourly rows become 414 hourly series starting at [data] start, trailing blanks dropped."""
    cfg = DataConfig(format="m4_wide", freq="H", start="2000-01-01T00:00:00")
    frame = load_extract(shared_data / "m4" / "Hourly-train.csv", cfg)
    assert frame["item_id"].n_unique() == 414
    lengths = frame.group_by("item_id").agg(pl.len())["len"]
    assert set(lengths.unique().to_list()) <= {700, 960}
    first = frame.filter(pl.col("item_id") == "H1").sort("ds")
    assert str(first["ds"][0]) == "2000-01-01 00:00:00"
    assert str(first["ds"][1]) == "2000-01-01 01:00:00"
