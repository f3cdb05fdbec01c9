"""Reading and writing canonical frames: Parquet or CSV, chosen by the file extension.

Writes are atomic: the frame goes to a temporary file in the destination folder, is flushed to disk, and
replaces the destination in one rename, so a reader never sees a half-written file and a crash leaves the
previous file (if any) intact. Reading a CSV keeps ids as strings, ``y`` as a float and parses ISO dates.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import polars as pl

from forecasting.common.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
# Canonical columns whose type must not be left to CSV inference (ids like "001" stay strings).
_CSV_TYPES: dict[str, type[pl.DataType]] = {
    "store_id": pl.String,
    "item_id": pl.String,
    "category": pl.String,
    "y": pl.Float64,
}


def frame_format(path: Path) -> str:
    """``"parquet"`` or ``"csv"`` from the extension; :class:`DataError` for anything else."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    known = ", ".join(PARQUET_SUFFIXES + CSV_SUFFIXES)
    raise DataError(f"{path}: unknown file extension {path.suffix!r} (expected one of {known})")


def write_frame(df: pl.DataFrame, path: Path | str) -> Path:
    """Write ``df`` to ``path`` (Parquet or CSV by extension) atomically; creates missing parent folders.

    Raises :class:`DataError` when the file cannot be written (the previous file, if any, stays as it was).
    """
    path = Path(path)
    fmt = frame_format(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL reserves a fresh name (never an existing file or link); mode 0o666 lets the umask decide,
        # as for any new file. Polars then writes to the path itself: cheaper than through a file object.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise DataError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    try:
        if fmt == "parquet":
            df.write_parquet(tmp)
        else:
            df.write_csv(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError | pl.exceptions.PolarsError):
            raise DataError(f"{path}: cannot write as {fmt}: {exc}") from exc
        raise
    return path


def read_frame(path: Path | str) -> pl.DataFrame:
    """Read a frame written by :func:`write_frame` (or any Parquet/CSV file with a header)."""
    path = Path(path)
    fmt = frame_format(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if fmt == "parquet":
            return pl.read_parquet(path)
        header = pl.read_csv(path, n_rows=0).columns
        overrides = {name: dtype for name, dtype in _CSV_TYPES.items() if name in header}
        return pl.read_csv(path, try_parse_dates=True, schema_overrides=overrides)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from exc
