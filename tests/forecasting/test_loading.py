"""Loading extracts: column mapping, file types, missing-column errors, bare-CR line ends, M5 and M4."""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import msgspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from forecasting.common.config import DataConfig
from forecasting.common.errors import DataError
from forecasting.data.loading import load_extract, mapping_for, read_text_table, table_columns
from forecasting.data.synthetic import generate
from forecasting.data.validation import load_canonical

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


RAW = DataConfig(store_id="Shop", item_id="Sku", category="Dept", ds="Day", y="Units", holiday="Holiday")
NOW = datetime(2024, 6, 1)


def _raw_frame() -> pl.DataFrame:
    frame = generate(stores=2, items=2, days=20, seed=1).drop("on_promo")
    return frame.rename(
        {
            "store_id": "Shop",
            "item_id": "Sku",
            "category": "Dept",
            "ds": "Day",
            "y": "Units",
            "is_holiday": "Holiday",
        }
    )


def test_csv_csv_gz_and_parquet_give_the_same_canonical_frame(tmp_path: Path) -> None:
    """The same extract as .csv, .csv.gz, .parquet and .pq validates to one and the same canonical frame."""
    frame = _raw_frame()
    (tmp_path / "s.csv").write_text(frame.write_csv())
    (tmp_path / "s.csv.gz").write_bytes(gzip.compress(frame.write_csv().encode()))
    frame.write_parquet(tmp_path / "s.parquet")
    frame.write_parquet(tmp_path / "s.pq")
    frames = [
        load_canonical(tmp_path / n, RAW, now=NOW).frame for n in ("s.csv", "s.csv.gz", "s.parquet", "s.pq")
    ]
    assert frames[0].height == 2 * 2 * 20
    for other in frames[1:]:
        assert_frame_equal(other, frames[0])


def test_missing_column_names_the_column_its_data_key_and_the_columns_present(tmp_path: Path) -> None:
    """A missing mapped column is one DataError line: the file, the column, its [data] key, the columns."""
    path = tmp_path / "sales.csv.gz"
    path.write_bytes(gzip.compress(_raw_frame().rename({"Shop": "Branch"}).write_csv().encode()))
    with pytest.raises(DataError) as info:
        load_extract(path, RAW)
    assert str(info.value) == (
        "sales.csv.gz: column 'Shop' (from [data] store_id) not found; "
        "columns are: Branch, Sku, Dept, Day, Units, Holiday"
    )


def test_one_column_named_by_two_keys_is_reported_once_with_both(tmp_path: Path) -> None:
    """Walmart-style item_id = category = "Dept": a missing Dept names both keys in one entry."""
    path = tmp_path / "sales.csv"
    path.write_text(_raw_frame().drop("Dept").rename({"Sku": "Item"}).write_csv())
    cfg = DataConfig(store_id="Shop", item_id="Dept", category="Dept", ds="Day", y="Units")
    with pytest.raises(DataError, match=r"column 'Dept' \(from \[data\] item_id, category\) not found"):
        load_extract(path, cfg)


def test_missing_column_of_a_side_file_names_that_file_and_key(tmp_path: Path) -> None:
    """A stores file without the store key column names stores.csv and [data] store_key."""
    path = tmp_path / "sales.csv"
    path.write_text(_raw_frame().write_csv())
    (tmp_path / "stores.csv").write_text("Store,Size\nS001,10\n")
    cfg = msgspec.structs.replace(RAW, store_file="stores.csv", store_key="Shop", store_columns=["Size"])
    with pytest.raises(DataError) as info:
        load_extract(path, cfg)
    assert str(info.value) == (
        "stores.csv: column 'Shop' (from [data] store_key) not found; columns are: Store, Size"
    )


def test_table_columns_reads_the_header_of_csv_gz_bare_cr_csv_and_parquet(tmp_path: Path) -> None:
    """Column names come from the header or the Parquet schema, whatever the compression or line ends."""
    frame = _raw_frame()
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(frame.write_csv().encode()))
    (tmp_path / "b.csv").write_bytes(frame.write_csv().replace("\n", "\r").encode())
    frame.write_parquet(tmp_path / "c.parquet")
    for name in ("a.csv.gz", "b.csv", "c.parquet"):
        assert table_columns(tmp_path / name) == frame.columns
    (tmp_path / "d.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="unknown data file type"):
        table_columns(tmp_path / "d.xlsx")


def test_mapping_for_keeps_a_fitting_mapping_and_reads_canonical_files_as_they_are(tmp_path: Path) -> None:
    """A file the mapping fits keeps the mapping; a canonical file gets the identity mapping, extras kept."""
    raw = tmp_path / "raw.csv"
    raw.write_text(_raw_frame().write_csv())
    assert mapping_for(raw, RAW) == RAW
    canonical = tmp_path / "canonical.parquet"
    generate(stores=1, items=2, days=10, seed=2).with_columns(price=pl.lit(1.5)).write_parquet(canonical)
    cfg = mapping_for(
        canonical, msgspec.structs.replace(RAW, negative_values="zero", store_file="stores.csv")
    )
    assert (cfg.store_id, cfg.item_id, cfg.category, cfg.ds, cfg.y) == (
        "store_id",
        "item_id",
        "category",
        "ds",
        "y",
    )
    assert (cfg.holiday, cfg.store_file, cfg.negative_values) == ("", "", "zero")
    assert cfg.exogenous == ["price"]
    frame = load_canonical(canonical, cfg, now=NOW).frame
    assert {"is_holiday", "on_promo", "price"} <= set(frame.columns)
    assert frame.height == 20
