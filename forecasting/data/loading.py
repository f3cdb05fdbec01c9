"""Reading sales extracts (CSV or Parquet; long, M5-wide or M4-wide) and mapping them to canonical columns.

The loader keeps every value as it was written (text for CSV) plus the ``line`` it came from, so that
``forecasting.data.validation`` can name each bad row; it never drops a row. Type parsing, rule checks and
quarantine happen in validation.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import msgspec
import polars as pl

from forecasting.common.config import DataConfig
from forecasting.common.errors import DataError

LINE = "line"
CANONICAL = ("store_id", "item_id", "category", "ds", "y")
FREQ_INTERVAL = {"D": "1d", "W": "1w", "H": "1h"}
PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_LISTED_COLUMNS = 30


def read_text_table(path: Path, *, separator: str = ",") -> pl.DataFrame:
    """A CSV as all-text columns, whatever its line endings (``\\r\\n``, ``\\n`` or a bare ``\\r``)."""
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    try:
        return pl.read_csv(io.BytesIO(raw), separator=separator, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None


def _separator(path: Path) -> str | None:
    """``","`` or ``"\\t"`` for a text table, ``None`` for Parquet; DataError for anything else."""
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return None
    if suffixes.endswith((".csv", ".csv.gz", ".txt", ".txt.gz")):
        return ","
    if suffixes.endswith((".tsv", ".tsv.gz")):
        return "\t"
    raise DataError(f"{path}: unknown data file type (expected .csv, .csv.gz, .tsv or .parquet)")


def read_table(path: Path) -> pl.DataFrame:
    """CSV or TSV (optionally .gz; text columns) or Parquet (typed columns), chosen by extension."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    separator = _separator(path)
    if separator is None:
        try:
            return pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    return read_text_table(path, separator=separator)


def table_columns(path: Path) -> list[str]:
    """The column names of a data file, from its header (CSV) or schema (Parquet) alone."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    separator = _separator(path)
    try:
        if separator is None:
            return list(pl.read_parquet_schema(path))
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        head = b""
        with opener(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                head += chunk
                if b"\n" in head or b"\r" in head:
                    break
        first = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n", 1)[0]
        return pl.read_csv(io.BytesIO(first + b"\n"), separator=separator, infer_schema=False).columns
    except (pl.exceptions.PolarsError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the column names ({exc})") from None


def _require(df: pl.DataFrame, wanted: Sequence[tuple[str, str]], path: Path) -> None:
    """DataError naming each missing column and the ``[data]`` key that names it (``(key, column)`` pairs)."""
    keys: dict[str, list[str]] = {}
    for key, column in wanted:
        if column and column not in df.columns:
            keys.setdefault(column, []).append(key)
    if not keys:
        return
    named = ", ".join(f"'{column}' (from [data] {', '.join(dict.fromkeys(k))})" for column, k in keys.items())
    shown = ", ".join(df.columns[:MAX_LISTED_COLUMNS])
    if len(df.columns) > MAX_LISTED_COLUMNS:
        shown += f", ... ({len(df.columns) - MAX_LISTED_COLUMNS} more)"
    noun = "column" if len(keys) == 1 else "columns"
    raise DataError(f"{path.name}: {noun} {named} not found; columns are: {shown or '(none)'}")


def _long_columns(cfg: DataConfig) -> list[tuple[str, str]]:
    """The ``([data] key, column)`` pairs a long extract must have."""
    return [
        ("store_id", cfg.store_id),
        ("item_id", cfg.item_id),
        ("category", "" if cfg.category_constant else cfg.category),
        ("ds", cfg.ds),
        ("y", cfg.y),
        ("holiday", cfg.holiday),
        ("promo", cfg.promo),
        *[("exogenous", c) for c in cfg.exogenous],
    ]


def mapping_for(path: Path, cfg: DataConfig) -> DataConfig:
    """``cfg``, or an identity mapping when the file at ``path`` is canonical and ``cfg`` does not fit it.

    A file is canonical when it has ``store_id, item_id, ds, y`` (``category`` optional); then it is read
    column for column, every other column kept as an exogenous one (``is_holiday`` and ``on_promo`` as
    flags), with ``cfg``'s frequency and validation rules. A file that is neither keeps ``cfg``, so the
    loader names the column that is missing.
    """
    columns = table_columns(path)
    present = set(columns)
    fits = cfg.format == "long" and all(c in present for _, c in _long_columns(cfg) if c)
    if fits or not {"store_id", "item_id", "ds", "y"} <= present:
        return cfg
    has_category = "category" in present
    return msgspec.structs.replace(
        cfg,
        format="long",
        store_id="store_id",
        item_id="item_id",
        category="category" if has_category else "",
        category_constant="" if has_category else cfg.category_constant,
        ds="ds",
        y="y",
        date_format="",
        holiday="",
        promo="",
        exogenous=[c for c in columns if c not in {LINE, *CANONICAL, "is_holiday", "on_promo"}],
        store_file="",
        store_key="store_id",
        store_columns=[],
        features_file="",
        features_columns=[],
        calendar_file="",
    )


def _resolve(data_path: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else data_path.parent / p


def load_extract(path: Path, cfg: DataConfig) -> pl.DataFrame:
    """The extract mapped to canonical column names (values untouched) with the source ``line`` number.

    Output columns: ``line, store_id, item_id, category, ds, y`` (+ ``is_holiday``, ``on_promo``, the
    configured exogenous, store and feature columns). Data rows start at line 2 (line 1 is the header).
    """
    if cfg.format == "m5_wide":
        frame = _load_m5(path, cfg)
    elif cfg.format == "m4_wide":
        frame = _load_m4(path, cfg)
    else:
        frame = _load_long(path, cfg)
    if cfg.store_file:
        frame = _join_stores(frame, _resolve(path, cfg.store_file), cfg)
    if cfg.features_file:
        frame = _join_features(frame, _resolve(path, cfg.features_file), cfg)
    return frame


def _load_long(path: Path, cfg: DataConfig) -> pl.DataFrame:
    raw = read_table(path)
    _require(raw, _long_columns(cfg), path)
    exprs: list[pl.Expr] = [
        (pl.int_range(pl.len(), dtype=pl.Int64) + 2).alias(LINE),
        pl.col(cfg.store_id).cast(pl.Utf8).alias("store_id"),
        pl.col(cfg.item_id).cast(pl.Utf8).alias("item_id"),
        _category_expr(cfg).alias("category"),
        pl.col(cfg.ds).alias("ds"),
        pl.col(cfg.y).alias("y"),
    ]
    if cfg.holiday:
        exprs.append(pl.col(cfg.holiday).alias("is_holiday"))
    elif "is_holiday" in raw.columns:
        exprs.append(pl.col("is_holiday"))
    if cfg.promo:
        exprs.append(pl.col(cfg.promo).alias("on_promo"))
    elif "on_promo" in raw.columns:
        exprs.append(pl.col("on_promo"))
    exprs.extend(pl.col(c) for c in cfg.exogenous)
    return raw.select(exprs)


def _category_expr(cfg: DataConfig) -> pl.Expr:
    """The constant category, the mapped category column, or an empty category when neither is set."""
    if cfg.category_constant:
        return pl.lit(cfg.category_constant)
    if cfg.category:
        return pl.col(cfg.category).cast(pl.Utf8)
    return pl.lit("", dtype=pl.Utf8)


def _load_m5(path: Path, cfg: DataConfig) -> pl.DataFrame:
    raw = read_table(path)
    day_cols = [c for c in raw.columns if c.startswith("d_")]
    category_col = "" if cfg.category_constant else cfg.category
    _require(raw, [("store_id", cfg.store_id), ("item_id", cfg.item_id), ("category", category_col)], path)
    if not day_cols:
        raise DataError(f"{path.name}: m5_wide format needs d_1..d_N columns")
    ids = raw.select(
        (pl.int_range(pl.len(), dtype=pl.Int64) + 2).alias(LINE),
        pl.col(cfg.store_id).cast(pl.Utf8).alias("store_id"),
        pl.col(cfg.item_id).cast(pl.Utf8).alias("item_id"),
        _category_expr(cfg).alias("category"),
        *[pl.col(c).cast(pl.Utf8) for c in day_cols],
    )
    long = ids.unpivot(index=[LINE, "store_id", "item_id", "category"], variable_name="d", value_name="y")
    if not cfg.calendar_file:
        raise DataError(f"{path}: m5_wide format needs [data] calendar_file")
    cal_path = _resolve(path, cfg.calendar_file)
    cal = read_table(cal_path)
    _require(cal, [("calendar_file", "d"), ("calendar_file", "date")], cal_path)
    holiday = pl.lit(value=False)
    if "event_name_1" in cal.columns:
        holiday = pl.col("event_name_1").is_not_null() & (pl.col("event_name_1") != "")
    cal = cal.select(pl.col("d"), pl.col("date").alias("ds"), holiday.alias("is_holiday"))
    out = long.join(cal, on="d", how="left", maintain_order="left").drop("d")
    return out.select(LINE, "store_id", "item_id", "category", "ds", "y", "is_holiday")


def _load_m4(path: Path, cfg: DataConfig) -> pl.DataFrame:
    raw = read_table(path)
    id_col = raw.columns[0]
    value_cols = raw.columns[1:]
    try:
        start = datetime.fromisoformat(cfg.start)
    except ValueError:
        raise DataError(f"[data] start: {cfg.start!r} is not an ISO date/time") from None
    ids = raw.select(
        (pl.int_range(pl.len(), dtype=pl.Int64) + 2).alias(LINE),
        pl.col(id_col).cast(pl.Utf8).alias("item_id"),
        *[pl.col(c).cast(pl.Utf8) for c in value_cols],
    )
    long = ids.unpivot(index=[LINE, "item_id"], variable_name="k", value_name="y")
    long = long.filter(pl.col("y").is_not_null() & (pl.col("y") != "") & (pl.col("y") != "NA"))
    k = pl.col("k").str.slice(1).cast(pl.Int64) - 2
    offset = pl.duration(hours=k) if cfg.freq == "H" else pl.duration(days=k * (7 if cfg.freq == "W" else 1))
    ds = pl.lit(start) + offset
    if cfg.freq != "H":
        ds = ds.dt.date()
    return long.select(
        LINE,
        pl.lit("all").alias("store_id"),
        "item_id",
        pl.lit(cfg.category_constant or "all").alias("category"),
        ds.alias("ds"),
        "y",
    ).sort(LINE, "ds")


def _join_stores(frame: pl.DataFrame, path: Path, cfg: DataConfig) -> pl.DataFrame:
    stores = read_table(path)
    _require(stores, [("store_key", cfg.store_key), *[("store_columns", c) for c in cfg.store_columns]], path)
    stores = stores.select(
        pl.col(cfg.store_key).cast(pl.Utf8).str.strip_chars().alias("store_id"),
        *[pl.col(c) for c in cfg.store_columns if c != cfg.store_key],
    ).unique("store_id", keep="first", maintain_order=True)
    return frame.join(stores, on="store_id", how="left", maintain_order="left")


def _join_features(frame: pl.DataFrame, path: Path, cfg: DataConfig) -> pl.DataFrame:
    feats = read_table(path)
    _require(
        feats,
        [
            ("store_id", cfg.store_id),
            ("ds", cfg.ds),
            *[("features_columns", c) for c in cfg.features_columns],
        ],
        path,
    )
    feats = feats.select(
        pl.col(cfg.store_id).cast(pl.Utf8).alias("store_id"),
        pl.col(cfg.ds).cast(pl.Utf8).alias("_ds_key"),
        *[pl.col(c) for c in cfg.features_columns],
    ).unique(["store_id", "_ds_key"], keep="first", maintain_order=True)
    keyed = frame.with_columns(pl.col("ds").cast(pl.Utf8).alias("_ds_key"))
    return keyed.join(feats, on=["store_id", "_ds_key"], how="left", maintain_order="left").drop("_ds_key")
