"""Reading and writing canonical frames: formats by extension, typed CSV, atomic writes, clear errors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from forecasting.common.errors import DataError
from forecasting.data.frames import read_frame, write_frame
from forecasting.data.synthetic import generate


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    """A small canonical frame with the optional boolean columns."""
    return generate(2, 5, 20, seed=2)


@pytest.mark.parametrize("name", ["sales.parquet", "sales.pq", "sales.csv", "SALES.CSV"])
def test_round_trip_keeps_types(tmp_path: Path, frame: pl.DataFrame, name: str) -> None:
    """Parquet and CSV round-trip the canonical frame with its types (ids strings, ds dates, y floats)."""
    path = write_frame(frame, tmp_path / name)
    assert read_frame(path).equals(frame)


def test_csv_ids_that_look_like_numbers_stay_strings(tmp_path: Path) -> None:
    """CSV ids such as 001 keep their leading zeros and integer sales become floats."""
    path = tmp_path / "sales.csv"
    path.write_text("store_id,item_id,category,ds,y\n001,0042,7,2024-01-01,3\n")
    got = read_frame(path)
    assert got.row(0) == ("001", "0042", "7", date(2024, 1, 1), 3.0)
    assert got.schema["y"] == pl.Float64


def test_write_creates_folders_and_leaves_no_temp_files(tmp_path: Path, frame: pl.DataFrame) -> None:
    """Missing parent folders are created and only the destination file remains."""
    path = write_frame(frame, tmp_path / "a" / "b" / "sales.parquet")
    assert sorted(p.name for p in path.parent.iterdir()) == ["sales.parquet"]


def test_failed_write_keeps_previous_file(tmp_path: Path, frame: pl.DataFrame) -> None:
    """A write that fails half-way leaves the previous file untouched and no temporary file behind."""
    path = write_frame(frame, tmp_path / "sales.parquet")
    before = path.read_bytes()
    unwritable = pl.DataFrame({"x": pl.Series([object()], dtype=pl.Object)})
    with pytest.raises(DataError, match="cannot write as parquet"):
        write_frame(unwritable, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sales.parquet"]


def test_unwritable_destination_is_a_data_error(tmp_path: Path, frame: pl.DataFrame) -> None:
    """A destination under a regular file (not a folder) raises DataError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot write"):
        write_frame(frame, blocker / "sales.parquet")


@pytest.mark.parametrize("name", ["sales.txt", "sales", "sales.json"])
def test_unknown_extension_is_a_data_error(tmp_path: Path, frame: pl.DataFrame, name: str) -> None:
    """Writing or reading a file whose extension is neither Parquet nor CSV raises DataError."""
    with pytest.raises(DataError, match="unknown file extension"):
        write_frame(frame, tmp_path / name)
    with pytest.raises(DataError, match="unknown file extension"):
        read_frame(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_missing_or_unreadable_file_is_a_data_error(tmp_path: Path) -> None:
    """A missing file, or a file that is not Parquet, raises DataError naming the file."""
    with pytest.raises(DataError, match="no such file"):
        read_frame(tmp_path / "nope.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"garbage\.parquet: cannot read as parquet"):
        read_frame(garbage)
