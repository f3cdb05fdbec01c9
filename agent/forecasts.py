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

from agent.scoring import ServingPointer

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

OutputFormat = Literal["json", "csv", "parquet", "arrow"]
MEDIA_TYPES: dict[OutputFormat, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
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
    if not accept:
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

    Kept compact (categorical strings, NumPy views of the float columns, one small entry per item):
    a whole store of 20,000 series x 28 days costs tens of MB, not hundreds.
    """

    pointer: ServingPointer
    frame: pl.DataFrame
    value_columns: list[str]
    items: dict[str, ItemEntry]
    _numeric: list[np.ndarray[Any, Any]] = field(repr=False)
    _ds_days: np.ndarray[Any, Any] = field(repr=False)
    _cache: OrderedDict[tuple[str, int, str], bytes] = field(default_factory=OrderedDict, repr=False)
    _lock: Lock = field(default_factory=Lock, repr=False)
    _dates: dict[int, str] = field(default_factory=dict, repr=False)
    _row_types: dict[bool, type[msgspec.Struct]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: Path, pointer: ServingPointer) -> ForecastView:
        import polars as pl

        raw = pl.read_parquet(root / pointer.path)
        value_columns = [c for c in raw.columns if c == "forecast" or c.startswith("forecast-")]
        has_model = "model" in raw.columns
        frame = (
            raw.lazy()
            .select(
                pl.col("store_id").cast(pl.Utf8).cast(pl.Categorical),
                pl.col("item_id").cast(pl.Utf8),
                (pl.col("category") if "category" in raw.columns else pl.lit(""))
                .cast(pl.Utf8)
                .cast(pl.Categorical)
                .alias("category"),
                pl.col("ds").cast(pl.Date),
                *[pl.col(c).cast(pl.Float64) for c in value_columns],
                *([pl.col("model").cast(pl.Utf8).cast(pl.Categorical)] if has_model else []),
            )
            .sort("item_id", "ds")
            .with_columns(step=pl.int_range(1, pl.len() + 1, dtype=pl.Int16).over("item_id"))
            .collect()
        )
        del raw
        firsts = (
            frame.select("item_id", "store_id", "category", *(["model"] if has_model else []))
            .with_row_index("row")
            .group_by("item_id", maintain_order=True)
            .agg(pl.all().first(), pl.len().alias("n"))
        )
        models = firsts["model"].cast(pl.Utf8).to_list() if has_model else [None] * firsts.height
        items = {
            item: ItemEntry(int(row), int(row) + int(n), store, category, model)
            for item, row, n, store, category, model in zip(
                firsts["item_id"].to_list(),
                firsts["row"].to_list(),
                firsts["n"].to_list(),
                firsts["store_id"].cast(pl.Utf8).to_list(),
                firsts["category"].cast(pl.Utf8).to_list(),
                models,
                strict=True,
            )
        }
        numeric = [frame[c].to_numpy() for c in value_columns]
        ds_days = frame["ds"].to_physical().to_numpy()
        return cls(pointer, frame, value_columns, items, numeric, ds_days)

    @property
    def max_step(self) -> int:
        return max((entry.end - entry.start for entry in self.items.values()), default=0)

    @property
    def etag_base(self) -> str:
        return f"{self.pointer.model_name}-v{self.pointer.version}-{self.pointer.run_id}"

    def etag(self, *parts: object) -> str:
        digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()
        return f'"{self.etag_base}-{digest}"'

    def meta(self) -> dict[str, Any]:
        first = next(iter(self.items.values()), None)
        return {
            "store_id": first.store_id if first else None,
            "model_name": self.pointer.model_name,
            "model_version": self.pointer.version,
            "run_id": self.pointer.run_id,
            "scored_at": self.pointer.scored_at,
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
        values = [arr[start:end].tolist() for arr in self._numeric]
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

    def public(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Rows as clients see them: plain strings, model name and version on every row."""
        import polars as pl

        extra = ["model"] if "model" in frame.columns else []
        return frame.select(
            pl.col("store_id").cast(pl.Utf8),
            "item_id",
            pl.col("category").cast(pl.Utf8),
            "ds",
            *self.value_columns,
            *[pl.col(c).cast(pl.Utf8) for c in extra],
            pl.lit(self.pointer.model_name).alias("model_name"),
            pl.lit(self.pointer.version, dtype=pl.Int64).alias("model_version"),
        )

    def item_frame(self, item_id: str, horizon: int) -> pl.DataFrame | None:
        entry = self.items.get(item_id)
        if entry is None:
            return None
        return self.public(self.frame.slice(entry.start, min(entry.end - entry.start, horizon)))

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
        import polars as pl

        offset = self._decode_cursor(cursor, query_key) if cursor else 0
        lazy = self.frame.lazy()
        if item_ids:
            lazy = lazy.filter(pl.col("item_id").is_in(item_ids))
        if category:
            lazy = lazy.filter(pl.col("category") == category)
        if horizon < self.max_step:
            lazy = lazy.filter(pl.col("step") <= horizon)
        if offset or limit is not None:
            lazy = lazy.slice(offset, None if limit is None else limit + 1)
        page = self.public(lazy.collect())
        next_cursor = None
        if limit is not None and page.height > limit:
            page = page.head(limit)
            next_cursor = self._encode_cursor(offset + limit, query_key)
        return page, next_cursor

    def _encode_cursor(self, offset: int, query_key: str) -> str:
        raw = msgspec.json.encode({"r": self.pointer.run_id, "q": query_key, "o": offset})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode_cursor(self, cursor: str, query_key: str) -> int:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            data = msgspec.json.decode(raw)
            offset = int(str(data["o"]))
            run, query = data["r"], data["q"]
        except (ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
            raise CursorError("malformed cursor") from exc
        if run != self.pointer.run_id:
            raise CursorError("cursor belongs to an earlier scoring run; start again without a cursor")
        if query != query_key or offset < 0:
            raise CursorError("cursor was issued for different filters")
        return offset


def render(frame: pl.DataFrame, fmt: OutputFormat, meta: dict[str, Any], next_cursor: str | None) -> bytes:
    """Serialise a page of rows in the negotiated format."""
    if fmt == "json":
        return msgspec.json.encode({**meta, "rows": frame.to_dicts(), "next_cursor": next_cursor})
    buffer = io.BytesIO()
    if fmt == "csv":
        frame.write_csv(buffer)
    elif fmt == "parquet":
        frame.write_parquet(buffer, compression="zstd", statistics=False)
    else:
        frame.write_ipc_stream(buffer, compression="uncompressed")
    return buffer.getvalue()
