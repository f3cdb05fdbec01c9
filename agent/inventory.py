"""``POST /v1/inventory``: the inventory system's position and replenishment policy, validated row by row.

One row per item (``item_id``): ``on_hand`` (required), ``backorders``, one open order (``on_order`` and
its ``on_order_due`` date) and policy fields; several rows of one item add their open orders, and the
item's first row gives its position and policy. A row with a ``category`` and no ``item_id`` sets that
category's default policy. Policy fields: ``lead_time_days`` (at least 1), ``review_period_days`` (at
least 1), ``service_metric`` (``cycle_service_level`` or ``fill_rate``), ``target_service_level``
(between 0 and 1), ``pack_size`` (above 0), ``min_order`` and ``shelf_capacity``. An item's missing field
takes its category's default (see :data:`agent.store.POLICY_DEFAULTS` for the rest); the lead time has no
default. Bad rows (negative stock, unknown items, a lead time or pack size of zero, ...) go to quarantine
with the reason and never reach a proposal; a posted item replaces its earlier position and orders.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import msgspec

from agent.errors import IngestError
from agent.ingest import SalesFormat
from agent.store import POLICY_FIELDS
from forecasting.common.logs import get_logger
from forecasting.replenishment.policy import CYCLE, FILL_RATE

if TYPE_CHECKING:
    from agent.store import LocalStore

log = get_logger("agent.inventory")

COLUMNS = (
    "item_id",
    "category",
    "on_hand",
    "backorders",
    "on_order",
    "on_order_due",
    *POLICY_FIELDS,
)
_INTEGERS = frozenset({"lead_time_days", "review_period_days"})
_NUMBERS = frozenset({"on_hand", "backorders", "on_order", "target_service_level", "pack_size", "min_order"})
_NUMBERS |= {"shelf_capacity"}


@dataclass(frozen=True)
class InventoryResult:
    """What one post contributed."""

    source: str
    items: int
    categories: int
    rows_quarantined: int
    reasons: dict[str, int]


class RowError(ValueError):
    """One rule a row breaks: ``rule: detail``."""


def read_inventory(data: bytes, fmt: SalesFormat) -> list[dict[str, str | None]]:
    """The rows of a post as strings (``None`` for a blank), in the order given; unknown columns ignored."""
    import polars as pl

    try:
        if fmt == "json":
            return [{c: _text(r.get(c)) for c in COLUMNS} for r in _json_rows(data)]
        frame = (
            pl.read_csv(io.BytesIO(data), infer_schema=False)
            if fmt == "csv"
            else pl.read_parquet(io.BytesIO(data))
        )
    except IngestError:
        raise
    except Exception as exc:  # polars/msgspec raise many types for unreadable input
        raise IngestError(f"cannot read {fmt} inventory: {exc}") from exc
    if "item_id" not in frame.columns and "category" not in frame.columns:
        raise IngestError("inventory lacks an item_id (or category) column")
    present = [c for c in COLUMNS if c in frame.columns]
    frame = frame.select(pl.col(c).cast(pl.Utf8) for c in present)
    return [{c: _text(row.get(c)) for c in COLUMNS} for row in frame.iter_rows(named=True)]


def _json_rows(data: bytes) -> list[dict[str, Any]]:
    rows = msgspec.json.decode(data)
    if isinstance(rows, dict):
        rows = rows.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise IngestError('JSON inventory must be a list of row objects (or {"rows": [...]})')
    return rows


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def ingest_inventory(
    store: LocalStore, data: bytes, fmt: SalesFormat, *, source: str, max_periods: int
) -> InventoryResult:
    """Validate a post and store its items, open orders and category defaults; quarantine bad rows.

    ``max_periods`` is the scoring horizon: lead time plus review period must fit in it.
    """
    import polars as pl

    policy_schema, item_schema, order_schema = _schemas()
    rows = read_inventory(data, fmt)
    first_line = 2 if fmt == "csv" else 1
    known = store.item_categories()
    defaults = store.policy_defaults()
    bad: list[tuple[int, str, str]] = []
    policies: dict[str, dict[str, Any]] = {}
    item_rows: list[tuple[int, dict[str, Any]]] = []
    for number, row in enumerate(rows, start=first_line):
        try:
            parsed = _parse(row)
            if row["item_id"] is None:
                policies[_category(parsed, max_periods)] = {f: parsed[f] for f in POLICY_FIELDS}
            else:
                item_rows.append((number, parsed))
        except RowError as exc:
            bad.append((number, str(exc), msgspec.json.encode(row).decode()))
    items: dict[str, dict[str, Any]] = {}
    orders: list[tuple[str, date, float]] = []
    for number, parsed in item_rows:
        item = str(parsed["item_id"])
        try:
            if item not in items:
                _check_item(parsed, known, defaults | policies, max_periods)
                items[item] = parsed
            if parsed["on_order"]:
                orders.append((item, parsed["on_order_due"], parsed["on_order"]))
        except RowError as exc:
            raw = {k: (v if not isinstance(v, date) else v.isoformat()) for k, v in parsed.items()}
            bad.append((number, str(exc), msgspec.json.encode(raw).decode()))
    item_frame = pl.DataFrame(
        [
            {"item_id": k, "on_hand": v["on_hand"], "backorders": v["backorders"] or 0.0}
            | {f: v[f] for f in POLICY_FIELDS}
            for k, v in items.items()
        ],
        schema=item_schema,
    )
    order_frame = pl.DataFrame(orders, schema=order_schema, orient="row")
    policy_frame = pl.DataFrame(
        [{"category": k} | v for k, v in policies.items()], schema={"category": pl.Utf8, **policy_schema}
    )
    store.save_inventory(item_frame, order_frame, policy_frame)
    store.quarantine(sorted(bad), source)
    reasons: dict[str, int] = {}
    for _, reason, _ in bad:
        reasons[reason] = reasons.get(reason, 0) + 1
    result = InventoryResult(source, len(items), len(policies), len(bad), reasons)
    log.info(
        "inventory_ingested",
        source=source,
        items=result.items,
        categories=result.categories,
        rows_quarantined=result.rows_quarantined,
        reasons=reasons,
    )
    return result


def _category(parsed: dict[str, Any], max_periods: int) -> str:
    """The category a defaults row sets, once its policy is checked."""
    if parsed["category"] is None:
        raise RowError("missing_key: a row needs an item_id or a category")
    _check_policy(parsed, max_periods, complete=False)
    return str(parsed["category"])


def _check_item(
    parsed: dict[str, Any], known: dict[str, str], defaults: dict[str, dict[str, Any]], max_periods: int
) -> None:
    """An item's first row: a known item with a position, whose policy (resolved) is sound."""
    item = str(parsed["item_id"])
    if item not in known:
        raise RowError(f"unknown_item: item {item!r} has no sales in this store")
    if parsed["on_hand"] is None:
        raise RowError("missing_on_hand: on_hand is required for an item's first row")
    category = defaults.get(known[item], {})
    resolved = {f: parsed[f] if parsed[f] is not None else category.get(f) for f in POLICY_FIELDS}
    _check_policy(resolved, max_periods, complete=True)


def _parse(row: dict[str, str | None]) -> dict[str, Any]:
    """Typed values of a row; ``RowError`` for a value that is not a number, date or known metric."""
    out: dict[str, Any] = {"item_id": row["item_id"], "category": row["category"]}
    for name in _NUMBERS | _INTEGERS:
        text = row[name]
        if text is None:
            out[name] = None
            continue
        try:
            value = float(text)
        except ValueError:
            raise RowError(f"bad_number: {name} is not a number ({text!r})") from None
        if not math.isfinite(value):
            raise RowError(f"bad_number: {name} is not finite")
        if name in _INTEGERS and value != int(value):
            raise RowError(f"bad_number: {name} must be a whole number of days ({text!r})")
        out[name] = int(value) if name in _INTEGERS else value
    metric = row["service_metric"]
    if metric is not None and metric not in (CYCLE, FILL_RATE):
        raise RowError(f"bad_service_metric: {metric!r} (use {CYCLE} or {FILL_RATE})")
    out["service_metric"] = metric
    for name in ("on_hand", "backorders", "on_order"):
        if out[name] is not None and out[name] < 0:
            what = "negative_stock" if name == "on_hand" else f"negative_{name}"
            raise RowError(f"{what}: {name} is {out[name]:g}")
    due = row["on_order_due"]
    out["on_order_due"] = None
    if out["on_order"]:
        if due is None:
            raise RowError("missing_due_date: on_order needs on_order_due (YYYY-MM-DD)")
        try:
            out["on_order_due"] = date.fromisoformat(due)
        except ValueError:
            raise RowError(f"bad_date: on_order_due {due!r} is not YYYY-MM-DD") from None
    return out


def _check_policy(policy: dict[str, Any], max_periods: int, *, complete: bool) -> None:
    """The rules of a policy; ``complete``: an item's resolved policy, which must have a lead time."""
    lead, review = policy["lead_time_days"], policy["review_period_days"]
    if lead is None and complete:
        raise RowError("missing_lead_time: no lead_time_days for the item or its category")
    if lead is not None and lead < 1:
        raise RowError(f"bad_lead_time: lead_time_days must be at least 1 (got {lead})")
    if review is not None and review < 1:
        raise RowError(f"bad_review_period: review_period_days must be at least 1 (got {review})")
    if lead is not None and lead + (review or 1) > max_periods:
        raise RowError(
            f"beyond_horizon: lead time + review period ({lead + (review or 1)} days) exceeds the "
            f"forecast horizon ({max_periods} days)"
        )
    target = policy["target_service_level"]
    if target is not None and not 0 < target < 1:
        raise RowError(f"bad_target: target_service_level must be between 0 and 1 (got {target:g})")
    pack = policy["pack_size"]
    if pack is not None and pack <= 0:
        raise RowError(f"bad_pack_size: pack_size must be above 0 (got {pack:g})")
    for name in ("min_order", "shelf_capacity"):
        if policy[name] is not None and policy[name] < 0:
            raise RowError(f"bad_{name}: {name} must not be negative (got {policy[name]:g})")


def _schemas() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    import polars as pl

    policy: dict[str, Any] = {
        "lead_time_days": pl.Int32,
        "review_period_days": pl.Int32,
        "service_metric": pl.Utf8,
        "target_service_level": pl.Float64,
        "pack_size": pl.Float64,
        "min_order": pl.Float64,
        "shelf_capacity": pl.Float64,
    }
    item = {"item_id": pl.Utf8, "on_hand": pl.Float64, "backorders": pl.Float64, **policy}
    order = {"item_id": pl.Utf8, "due_date": pl.Date, "quantity": pl.Float64}
    return policy, item, order
