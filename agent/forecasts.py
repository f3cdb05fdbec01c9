"""The served forecasts: one immutable view per scoring run, swapped atomically when a new run lands.

The per-item JSON path is the hot one (an inventory system asks item by item): it renders from
NumPy slices with msgspec and caches the bytes; filtered listings and exports go through Polars.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from agent.serving import (
    DAYS_FILE,
    ITEMS_FILE,
    VALUES_FILE,
    ServingItems,
    ServingPointer,
    write_serving_index,
)

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

OutputFormat = Literal["json", "csv", "parquet", "arrow"]
# Litestar adds "; charset=utf-8" to text/* types itself.
MEDIA_TYPES: dict[OutputFormat, str] = {
    "json": "application/json",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}
ACCEPT_ALIASES: dict[str, OutputFormat] = {
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.arrow.file": "arrow",
    "application/x-arrow": "arrow",
}
EPOCH = date(1970, 1, 1)
ITEM_CACHE_SIZE = 4096


class CursorError(ValueError):
    """A pagination cursor is malformed or belongs to another scoring run or query."""


def negotiate(accept: str | None, explicit: str | None) -> OutputFormat | None:
    """``format=`` wins; else the first supported type of ``Accept``; JSON when nothing is asked.

    Returns None when the client accepts none of the formats (the API answers 406).
    """
    if explicit:
        name = explicit.lower()
        return name if name in MEDIA_TYPES else None
    if not accept or accept in ("*/*", "application/json"):
        return "json"
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        ranked.append((-quality, index, media.lower()))
    for neg_quality, _index, media in sorted(ranked):
        if neg_quality == 0:
            continue
        if media in ACCEPT_ALIASES:
            return ACCEPT_ALIASES[media]
        if media in ("*/*", "application/*"):
            return "json"
    return None


@dataclass(frozen=True)
class ItemEntry:
    """Where an item's rows are and what is constant over them."""

    start: int
    end: int
    store_id: str
    category: str
    model: str | None


@dataclass
class ForecastView:
    """The forecasts of one scoring run, indexed by item, with the metadata every response carries.

    The values are memory-mapped from the run's serving index (see :func:`write_serving_index`);
    one small entry per item says where its rows are. Polars is imported only for listings and exports.
    """

    pointer: ServingPointer
    value_columns: list[str]
    items: dict[str, ItemEntry]
    _values: np.ndarray[Any, Any] = field(repr=False)
    _ds_days: np.ndarray[Any, Any] = field(repr=False)
    _cache: OrderedDict[tuple[str, int, str], bytes] = field(default_factory=OrderedDict, repr=False)
    _lock: Lock = field(default_factory=Lock, repr=False)
    _dates: dict[int, str] = field(default_factory=dict, repr=False)
    _row_types: dict[bool, type[msgspec.Struct]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: Path, pointer: ServingPointer) -> ForecastView:
        """Open a run's serving index (written first if the run has none, e.g. an older run)."""
        import numpy as np

        forecasts = root / pointer.path
        run_dir = forecasts.parent
        if not (run_dir / ITEMS_FILE).is_file():
            write_serving_index(run_dir, forecasts)
        index = msgspec.json.decode((run_dir / ITEMS_FILE).read_bytes(), type=ServingItems)
        values = np.load(run_dir / VALUES_FILE, mmap_mode="r", allow_pickle=False)
        days = np.load(run_dir / DAYS_FILE, mmap_mode="r", allow_pickle=False)
        items: dict[str, ItemEntry] = {}
        start = 0
        for item, store_id, category, model, count in index.items:
            items[item] = ItemEntry(start, start + count, store_id, category or "", model)
            start += count
        if start != len(days) or values.shape != (start, len(index.value_columns)):
            raise ValueError(f"{run_dir}: serving index does not match its arrays")
        return cls(pointer, list(index.value_columns), items, values, days)

    def rows_frame(self, item_ids: list[str] | None, category: str | None, horizon: int) -> pl.DataFrame:
        """Rows of the selected items (all when None), the first ``horizon`` days each, as served."""
        import numpy as np
        import polars as pl

        names = list(self.items) if not item_ids else [i for i in sorted(set(item_ids)) if i in self.items]
        entries = [self.items[name] for name in names]
        if category:
            keep = [k for k, e in enumerate(entries) if e.category == category]
            names, entries = [names[k] for k in keep], [entries[k] for k in keep]
        starts = np.array([e.start for e in entries], dtype=np.int64)
        counts = np.array([min(e.end - e.start, horizon) for e in entries], dtype=np.int64)
        owner = np.repeat(np.arange(len(entries)), counts)
        rows = np.repeat(starts, counts) + (
            np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        data: dict[str, Any] = {
            "store_id": pl.Series([e.store_id for e in entries], dtype=pl.Utf8).gather(owner),
            "item_id": pl.Series(names, dtype=pl.Utf8).gather(owner),
            "category": pl.Series([e.category for e in entries], dtype=pl.Utf8).gather(owner),
            "ds": pl.Series(np.asarray(self._ds_days[rows], dtype=np.int32)).cast(pl.Date),
        }
        selected = np.asarray(self._values[rows])
        for k, name in enumerate(self.value_columns):
            data[name] = pl.Series(selected[:, k].copy())
        if entries and entries[0].model is not None:
            data["model"] = pl.Series([e.model or "" for e in entries], dtype=pl.Utf8).gather(owner)
        data["model_name"] = pl.repeat(self.pointer.model_name, len(rows), eager=True)
        data["model_version"] = pl.repeat(self.pointer.version, len(rows), dtype=pl.Int64, eager=True)
        return pl.DataFrame(data)

    @property
    def max_step(self) -> int:
        return max((entry.end - entry.start for entry in self.items.values()), default=0)

    @property
    def etag_base(self) -> str:
        return f"{self.pointer.model_name}-v{self.pointer.version}-{self.pointer.run_id}"

    def etag(self, *parts: object) -> str:
        digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()
        return f'"{self.etag_base}-{digest}"'

    @property
    def forecast_start(self) -> str | None:
        """The first forecast day served (ISO date; None for a run without rows)."""
        return self._iso(int(self._ds_days.min())) if len(self._ds_days) else None

    def meta(self) -> dict[str, Any]:
        first = next(iter(self.items.values()), None)
        history_end = self.pointer.history_end
        return {
            "store_id": first.store_id if first else None,
            "model_name": self.pointer.model_name,
            "model_version": self.pointer.version,
            "run_id": self.pointer.run_id,
            "scored_at": self.pointer.scored_at,
            "history_end": history_end.isoformat() if history_end else None,
            "forecast_start": self.forecast_start,
        }

    def headers(self, etag: str) -> dict[str, str]:
        """Headers of every forecast answer: validators, version, where history ends and forecasts start."""
        meta = self.meta()
        return {
            "ETag": etag,
            "Cache-Control": "no-cache",
            "X-Model-Version": str(self.pointer.version),
            "X-History-End": meta["history_end"] or "unknown",
            "X-Forecast-Start": meta["forecast_start"] or "unknown",
        }

    # -- the hot path --------------------------------------------------------------------------------

    def item_json(self, item_id: str, horizon: int) -> bytes | None:
        """JSON document for one item (cached); None when the item is unknown."""
        key = (item_id, horizon, "json")
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        entry = self.items.get(item_id)
        if entry is None:
            return None
        start, end = entry.start, min(entry.end, entry.start + horizon)
        dates = [self._iso(int(d)) for d in self._ds_days[start:end]]
        import numpy as np

        block = np.asarray(self._values[start:end])
        values = [block[:, k].tolist() for k in range(block.shape[1])]
        head = (entry.store_id, item_id, entry.category)
        tail = (
            (self.pointer.model_name, self.pointer.version)
            if entry.model is None
            else (entry.model, self.pointer.model_name, self.pointer.version)
        )
        make = self._row_type(with_model=entry.model is not None)
        rows = [make(*head, day, *vals, *tail) for day, *vals in zip(dates, *values, strict=True)]
        body = msgspec.json.encode({**self.meta(), "item_id": item_id, "rows": rows})
        with self._lock:
            self._cache[key] = body
            if len(self._cache) > ITEM_CACHE_SIZE:
                self._cache.popitem(last=False)
        return body

    def _iso(self, day: int) -> str:
        text = self._dates.get(day)
        if text is None:
            text = self._dates[day] = (EPOCH + timedelta(days=day)).isoformat()
        return text

    def _row_type(self, *, with_model: bool) -> type[msgspec.Struct]:
        """A msgspec Struct for one JSON row (field order = the listing's column order)."""
        cached = self._row_types.get(with_model)
        if cached is not None:
            return cached
        safe = {c: c.replace("-", "_") for c in self.value_columns}
        fields: list[tuple[str, type]] = [("store_id", str), ("item_id", str), ("category", str), ("ds", str)]
        fields += [(safe[c], float) for c in self.value_columns]
        fields += [("model", str)] if with_model else []
        fields += [("model_name", str), ("model_version", int)]
        row_type = msgspec.defstruct("ForecastRow", fields, rename={v: k for k, v in safe.items()})
        self._row_types[with_model] = row_type
        return row_type

    def item_frame(self, item_id: str, horizon: int) -> pl.DataFrame | None:
        if item_id not in self.items:
            return None
        return self.rows_frame([item_id], None, horizon)

    # -- listings and exports ------------------------------------------------------------------------

    def select(
        self,
        *,
        item_ids: list[str],
        category: str | None,
        horizon: int,
        cursor: str | None,
        limit: int | None,
        query_key: str,
    ) -> tuple[pl.DataFrame, str | None]:
        """Filtered page of rows and the cursor of the next page (None at the end)."""
        rows = self.rows_frame(item_ids or None, category, horizon)
        return page(rows, cursor, limit, self.pointer.run_id, query_key)


def encode_cursor(run: str, query_key: str, offset: int) -> str:
    """An opaque cursor: the row ``offset`` of a query's answer from the served data ``run``."""
    raw = msgspec.json.encode({"r": run, "q": query_key, "o": offset})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, run: str, query_key: str) -> int:
    """The row offset of ``cursor``; ``CursorError`` when it is malformed or from another run or query."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = msgspec.json.decode(raw)
        offset = int(str(data["o"]))
        issued_run, query = data["r"], data["q"]
    except (ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
        raise CursorError("malformed cursor") from exc
    if issued_run != run:
        raise CursorError("cursor belongs to an earlier scoring run; start again without a cursor")
    if query != query_key or offset < 0:
        raise CursorError("cursor was issued for different filters")
    return offset


def page(
    rows: pl.DataFrame, cursor: str | None, limit: int | None, run: str, query_key: str
) -> tuple[pl.DataFrame, str | None]:
    """The page of ``rows`` a cursor and limit select, and the next page's cursor (None at the end)."""
    offset = decode_cursor(cursor, run, query_key) if cursor else 0
    if offset or limit is not None:
        rows = rows.slice(offset, None if limit is None else limit + 1)
    next_cursor = None
    if limit is not None and rows.height > limit:
        rows = rows.head(limit)
        next_cursor = encode_cursor(run, query_key, offset + limit)
    return rows, next_cursor


def render(frame: pl.DataFrame, fmt: OutputFormat, meta: dict[str, Any], next_cursor: str | None) -> bytes:
    """Serialise a page of rows in the negotiated format."""
    if fmt == "json":
        return msgspec.json.encode({**meta, "rows": frame.to_dicts(), "next_cursor": next_cursor})
    buffer = io.BytesIO()
    if fmt == "csv":
        frame.write_csv(buffer)
    elif fmt == "parquet":
        frame.write_parquet(buffer, compression="lz4", statistics=False)
    else:
        frame.write_ipc_stream(buffer, compression="zstd")
    return buffer.getvalue()
