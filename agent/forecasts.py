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


@dataclass
class ForecastView:
    """The forecasts of one scoring run, indexed by item, with the metadata every response carries."""

    pointer: ServingPointer
    frame: pl.DataFrame
    value_columns: list[str]
    item_index: dict[str, tuple[int, int]]
    _numeric: list[np.ndarray[Any, Any]] = field(repr=False)
    _ds_days: np.ndarray[Any, Any] = field(repr=False)
    _text: dict[str, list[str]] = field(repr=False)
    _cache: OrderedDict[tuple[str, int, str], bytes] = field(default_factory=OrderedDict, repr=False)
    _lock: Lock = field(default_factory=Lock, repr=False)

    @classmethod
    def load(cls, root: Path, pointer: ServingPointer) -> ForecastView:
        import polars as pl

        raw = pl.read_parquet(root / pointer.path)
        value_columns = [c for c in raw.columns if c == "forecast" or c.startswith("forecast-")]
        base = ["store_id", "item_id", "category", "ds"]
        extra = [c for c in ("model",) if c in raw.columns]
        frame = (
            raw.select(
                *[pl.col(c).cast(pl.Utf8) for c in ("store_id", "item_id", "category") if c in raw.columns],
                pl.col("ds").cast(pl.Date),
                *[pl.col(c).cast(pl.Float64) for c in value_columns],
                *[pl.col(c).cast(pl.Utf8) for c in extra],
            )
            .with_columns(
                *([] if "category" in raw.columns else [pl.lit("").alias("category")]),
                pl.lit(pointer.model_name).alias("model_name"),
                pl.lit(pointer.version, dtype=pl.Int64).alias("model_version"),
            )
            .select(*base, *value_columns, *extra, "model_name", "model_version")
            .sort("item_id", "ds")
            .with_columns(step=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("item_id"))
        )
        bounds = (
            frame.with_row_index("row")
            .group_by("item_id", maintain_order=True)
            .agg(pl.col("row").min().alias("start"), pl.col("row").max().alias("end"))
        )
        index = {
            item: (int(start), int(end) + 1)
            for item, start, end in zip(
                bounds["item_id"].to_list(), bounds["start"].to_list(), bounds["end"].to_list(), strict=True
            )
        }
        numeric = [frame[c].to_numpy() for c in value_columns]
        ds_days = frame["ds"].cast(pl.Int32).to_numpy()
        text = {c: frame[c].to_list() for c in ("store_id", "category", *extra)}
        return cls(pointer, frame, value_columns, index, numeric, ds_days, text)

    @property
    def etag_base(self) -> str:
        return f"{self.pointer.model_name}-v{self.pointer.version}-{self.pointer.run_id}"

    def etag(self, *parts: object) -> str:
        digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()
        return f'"{self.etag_base}-{digest}"'

    def meta(self) -> dict[str, Any]:
        return {
            "store_id": self.frame["store_id"][0] if self.frame.height else None,
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
        bounds = self.item_index.get(item_id)
        if bounds is None:
            return None
        start, end = bounds
        end = min(end, start + horizon)
        names = ["ds", *self.value_columns]
        columns: list[list[Any]] = [
            [(EPOCH + timedelta(days=int(d))).isoformat() for d in self._ds_days[start:end]],
            *[arr[start:end].tolist() for arr in self._numeric],
        ]
        constant = {"store_id": self._text["store_id"][start], "item_id": item_id}
        constant["category"] = self._text["category"][start]
        rows = []
        for offset, values in enumerate(zip(*columns, strict=True)):
            row: dict[str, Any] = dict(constant)
            row.update(zip(names, values, strict=True))
            if "model" in self._text:
                row["model"] = self._text["model"][start + offset]
            row["model_name"] = self.pointer.model_name
            row["model_version"] = self.pointer.version
            rows.append(row)
        body = msgspec.json.encode({**self.meta(), "item_id": item_id, "rows": rows})
        with self._lock:
            self._cache[key] = body
            if len(self._cache) > ITEM_CACHE_SIZE:
                self._cache.popitem(last=False)
        return body

    def item_frame(self, item_id: str, horizon: int) -> pl.DataFrame | None:
        bounds = self.item_index.get(item_id)
        if bounds is None:
            return None
        start, end = bounds
        return self.frame.slice(start, min(end - start, horizon)).drop("step")

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
        max_step = int(str(self.frame["step"].max() or 0)) if self.frame.height else 0
        if horizon < max_step:
            lazy = lazy.filter(pl.col("step") <= horizon)
        if offset or limit is not None:
            lazy = lazy.slice(offset, None if limit is None else limit + 1)
        page = lazy.drop("step").collect()
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
