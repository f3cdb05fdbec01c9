"""Local sales data: extracts dropped into ``sales_dir`` and ``POST /v1/sales`` bodies become canonical rows.

Bad rows are quarantined in the local store with the reason, never dropped silently.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from agent.errors import IngestError
from forecasting.common.logs import get_logger

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


def validate(
    raw: pl.DataFrame, *, store_id: str, today: date, first_line: int = 1, source: str = ""
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split an extract into canonical good rows and bad rows (``row_number``, ``reason``, original values).

    The rules are the forecasting library's (``forecasting.data.validation``: keys present, dates parse and
    are not in the future, sales finite, no duplicate store/item/day), with the settings of an
    incremental extract (a series may have a single row; gaps are not filled: earlier days are already
    in the store), plus one rule of the agent: rows of another store are not this agent's.
    """
    import polars as pl

    from forecasting.common.config import DataConfig
    from forecasting.data.loading import LINE
    from forecasting.data.validation import validate as validate_rows

    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise IngestError(f"sales extract lacks required column(s): {', '.join(missing)}")
    framed = raw.select(
        (pl.int_range(pl.len(), dtype=pl.Int64) + first_line).alias(LINE),
        *[pl.col(c) for c in REQUIRED],
    )
    config = DataConfig(min_series_length=1, fill_gaps="none", negative_values="keep")
    now = datetime.combine(today, datetime.max.time())
    result = validate_rows(framed, config, source=source, now=now)
    good = result.frame.select(*REQUIRED)
    bad = result.quarantine.select(
        pl.col(LINE).alias("row_number"),
        pl.concat_str(pl.col("rule"), pl.lit(": "), pl.col("reason")).alias("reason"),
        *[pl.col(c) for c in REQUIRED],
    )
    foreign = good.filter(pl.col("store_id") != store_id)
    if foreign.height:
        # Line numbers of the foreign rows, found again by their key (keys are unique among good rows).
        lines = framed.with_columns(pl.col("store_id").cast(pl.Utf8).str.strip_chars()).filter(
            pl.col("store_id") != store_id
        )
        bad = pl.concat(
            [
                bad,
                lines.select(
                    pl.col(LINE).alias("row_number"),
                    pl.lit(f"other_store: store_id is not this store ({store_id})").alias("reason"),
                    *[pl.col(c).cast(pl.Utf8) for c in REQUIRED],
                ).join(bad.select("row_number"), on="row_number", how="anti"),
            ],
            how="vertical_relaxed",
        ).sort("row_number")
        good = good.filter(pl.col("store_id") == store_id)
    return good, bad


def ingest_bytes(
    store: LocalStore, data: bytes, fmt: SalesFormat, *, source: str, store_id: str, today: date
) -> IngestResult:
    """Validate and append one extract; bad rows go to quarantine with their reason."""
    raw = read_extract(data, fmt)
    good, bad = validate(
        raw, store_id=store_id, today=today, first_line=2 if fmt == "csv" else 1, source=source
    )
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
