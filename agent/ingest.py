"""Local sales data: extracts dropped into ``sales_dir`` and ``POST /v1/sales`` bodies become canonical rows.

Bad rows are quarantined in the local store with the reason, never dropped silently.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from agent.errors import IngestError
from forecasting.logs import get_logger

if TYPE_CHECKING:
    import polars as pl

    from agent.store import LocalStore

log = get_logger("agent.ingest")

SalesFormat = Literal["csv", "parquet", "json"]
REQUIRED = ("store_id", "item_id", "category", "ds", "y")
SUFFIXES: dict[str, SalesFormat] = {".csv": "csv", ".parquet": "parquet", ".json": "json"}


@dataclass(frozen=True)
class IngestResult:
    """What one extract contributed."""

    source: str
    rows_ok: int
    rows_quarantined: int
    reasons: dict[str, int]


def read_extract(data: bytes, fmt: SalesFormat) -> pl.DataFrame:
    """Parse an extract into a frame of strings/values (types are checked by ``validate``)."""
    import polars as pl

    try:
        if fmt == "csv":
            return pl.read_csv(io.BytesIO(data), infer_schema=False)
        if fmt == "parquet":
            return pl.read_parquet(io.BytesIO(data))
        rows = _json_rows(data)
        if not rows:
            return pl.DataFrame({c: [] for c in REQUIRED}, schema=dict.fromkeys(REQUIRED, pl.Utf8))
        return pl.DataFrame(
            {c: [None if r.get(c) is None else str(r.get(c)) for r in rows] for c in REQUIRED}
        )
    except IngestError:
        raise
    except Exception as exc:  # polars/msgspec raise many types for unreadable input
        raise IngestError(f"cannot read {fmt} sales extract: {exc}") from exc


def _json_rows(data: bytes) -> list[dict[str, object]]:
    rows = msgspec.json.decode(data)
    if isinstance(rows, dict):
        rows = rows.get("rows", rows.get("data", []))
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise IngestError('JSON sales must be a list of row objects (or {"rows": [...]})')
    return rows


def validate(raw: pl.DataFrame, *, store_id: str, today: date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split an extract into canonical good rows and bad rows with a ``reason`` column.

    Rules: required columns present; ids and category non-empty; ``ds`` a date not in the future;
    ``y`` a finite number; ``store_id`` this store; (store, item, day) not duplicated in the extract.
    """
    import polars as pl

    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise IngestError(f"sales extract lacks required column(s): {', '.join(missing)}")
    frame = raw.with_row_index("row_number", offset=1)
    as_text = {c: pl.col(c).cast(pl.Utf8).str.strip_chars() for c in ("store_id", "item_id", "category")}
    ds_text = pl.col("ds").cast(pl.Utf8).str.slice(0, 10)
    typed = frame.with_columns(
        **as_text,
        ds_parsed=ds_text.str.to_date("%Y-%m-%d", strict=False),
        y_parsed=pl.col("y").cast(pl.Utf8).str.strip_chars().cast(pl.Float64, strict=False),
    )
    dup = pl.struct("store_id", "item_id", "ds_parsed").is_duplicated()
    reason = (
        pl.when(pl.col("store_id").is_null() | (pl.col("store_id") == ""))
        .then(pl.lit("missing store_id"))
        .when(pl.col("store_id") != store_id)
        .then(pl.lit(f"store_id is not this store ({store_id})"))
        .when(pl.col("item_id").is_null() | (pl.col("item_id") == ""))
        .then(pl.lit("missing item_id"))
        .when(pl.col("category").is_null() | (pl.col("category") == ""))
        .then(pl.lit("missing category"))
        .when(pl.col("ds_parsed").is_null())
        .then(pl.lit("ds is not a date (YYYY-MM-DD)"))
        .when(pl.col("ds_parsed") > pl.lit(today))
        .then(pl.lit("ds is in the future"))
        .when(pl.col("y_parsed").is_null() | pl.col("y_parsed").is_nan() | pl.col("y_parsed").is_infinite())
        .then(pl.lit("y is not a finite number"))
        .when(dup)
        .then(pl.lit("duplicate (store_id, item_id, ds) in the extract"))
        .otherwise(pl.lit(None, dtype=pl.Utf8))
    )
    checked = typed.with_columns(reason=reason)
    good = checked.filter(pl.col("reason").is_null()).select(
        "store_id", "item_id", "category", pl.col("ds_parsed").alias("ds"), pl.col("y_parsed").alias("y")
    )
    bad = checked.filter(pl.col("reason").is_not_null()).select("row_number", "reason", *raw.columns)
    return good, bad


def ingest_bytes(
    store: LocalStore, data: bytes, fmt: SalesFormat, *, source: str, store_id: str, today: date
) -> IngestResult:
    """Validate and append one extract; bad rows go to quarantine with their reason."""
    raw = read_extract(data, fmt)
    good, bad = validate(raw, store_id=store_id, today=today)
    store.append_sales(good, source)
    if bad.height:
        payload = bad.drop("row_number", "reason")
        rows = [
            (int(number), str(reason), msgspec.json.encode(row).decode())
            for number, reason, row in zip(
                bad["row_number"].to_list(), bad["reason"].to_list(), payload.to_dicts(), strict=True
            )
        ]
        store.quarantine(rows, source)
    reasons: dict[str, int] = {}
    for value in bad["reason"].to_list():
        reasons[value] = reasons.get(value, 0) + 1
    result = IngestResult(source, good.height, bad.height, reasons)
    log.info(
        "sales_ingested", source=source, rows_ok=good.height, rows_quarantined=bad.height, reasons=reasons
    )
    return result


def ingest_folder(store: LocalStore, folder: Path, *, store_id: str, today: date) -> list[IngestResult]:
    """Ingest every new extract in ``folder`` (oldest first) and move it to ``folder/processed``.

    Files still being written are skipped by convention: writers drop ``.tmp``/dot files and rename.
    """
    if not folder.is_dir():
        return []
    results: list[IngestResult] = []
    candidates = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    for path in candidates:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if store.file_seen(digest):
            _move(path, folder / "processed")
            continue
        try:
            result = ingest_bytes(
                store, data, SUFFIXES[path.suffix.lower()], source=path.name, store_id=store_id, today=today
            )
        except IngestError as exc:
            log.error("sales_rejected", source=path.name, reason=str(exc))  # noqa: TRY400 - no traceback
            store.quarantine([(None, str(exc), None)], path.name)
            store.record_file(digest, path.name, 0, 0)
            _move(path, folder / "rejected")
            continue
        store.record_file(digest, path.name, result.rows_ok, result.rows_quarantined)
        _move(path, folder / "processed")
        results.append(result)
    return results


def _move(path: Path, target_dir: Path) -> None:
    target_dir.mkdir(exist_ok=True)
    Path(path).replace(target_dir / path.name)
