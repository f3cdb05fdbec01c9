"""Rendering rows for people (aligned table) or programs (JSON) — the ``-o table|json`` of every listing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

OutputFormat = Literal["table", "json"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An aligned plain-text table; columns default to the keys of the first row."""
    if not rows:
        return "(none)"
    cols = list(columns) if columns is not None else list(rows[0].keys())
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def render(data: Any, fmt: OutputFormat, columns: Sequence[str] | None = None) -> str:
    """Rows (a list of mappings) or one object, as a table or as JSON."""
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(data), indent=2).decode()
    if isinstance(data, Mapping):
        return render_table([{"field": k, "value": v} for k, v in data.items()])
    return render_table(list(data), columns)
