"""Validation that loses nothing: every rule counted, offending rows named by line and quarantined.

``validate(raw, cfg)`` takes the loader's text-faithful frame (``forecasting.data.loading.load_extract``) and
returns the canonical frame (``store_id, item_id, category, ds, y`` + flags and extra columns, sorted),
the quarantined rows (original values, ``line``, ``rule``, ``reason``) and a report that is written as
JSON for programs and as text for people.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import polars as pl

from forecasting.common.config import DataConfig
from forecasting.common.errors import DataError
from forecasting.data.loading import FREQ_INTERVAL, LINE, load_extract

Severity = Literal["error", "warning", "info"]
KEYS = ["store_id", "item_id"]
FLAG_TRUE = ("true", "t", "1", "yes", "y")
FLAG_FALSE = ("false", "f", "0", "no", "n", "")

RULES: dict[str, tuple[Severity, str]] = {
    "missing_key": ("error", "store, item or date is empty"),
    "bad_date": ("error", "date cannot be parsed"),
    "missing_value": ("error", "sales value is empty"),
    "bad_number": ("error", "sales value is not a finite number"),
    "bad_flag": ("error", "holiday/promo flag is not true/false"),
    "future_date": ("error", "date lies in the future"),
    "unknown_category": ("error", "category is not in [data] known_categories"),
    "negative_value": ("warning", "negative sales (returns)"),
    "duplicate_key": ("error", "same store, item and date as an earlier row (the first one is kept)"),
    "too_short": ("error", "series has fewer rows than [data] min_series_length"),
    "gap": ("info", "missing periods inside a series"),
}


class RuleCount(msgspec.Struct, frozen=True, kw_only=True):
    """One rule's outcome: how many rows (or periods) it hit, what was done, the first examples."""

    rule: str
    severity: str
    action: str
    count: int
    description: str
    examples: list[dict[str, Any]]


class ValidationReport(msgspec.Struct, frozen=True, kw_only=True):
    """Machine-readable validation report (``validation.json``)."""

    source: str
    format: str
    freq: str
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    rows_filled: int
    series: int
    stores: int
    categories: int
    first_ds: str | None
    last_ds: str | None
    usable: bool
    rules: list[RuleCount]


@dataclass(frozen=True)
class ValidationResult:
    """Canonical frame, quarantined rows and the report of one validation."""

    frame: pl.DataFrame
    quarantine: pl.DataFrame
    report: ValidationReport


def _is_blank(col: str) -> pl.Expr:
    c = pl.col(col)
    return c.is_null() | (c.cast(pl.Utf8).str.strip_chars() == "")


def _parse_ds(raw: pl.DataFrame, cfg: DataConfig) -> pl.Expr:
    dtype = raw.schema["ds"]
    target: pl.DataType = pl.Datetime("us") if cfg.freq == "H" else pl.Date()
    if dtype == pl.Utf8:
        text = pl.col("ds").str.strip_chars()
        if cfg.freq == "H":
            return text.str.to_datetime(cfg.date_format or None, strict=False, time_unit="us")
        if cfg.date_format:
            return text.str.to_date(cfg.date_format, strict=False)
        return pl.coalesce(text.str.to_date(strict=False), text.str.to_datetime(strict=False).dt.date())
    if cfg.freq != "H" and isinstance(dtype, pl.Datetime):
        return pl.col("ds").dt.date()
    return pl.col("ds").cast(target, strict=False)


def _parse_float(raw: pl.DataFrame, col: str) -> pl.Expr:
    if raw.schema[col] == pl.Utf8:
        return pl.col(col).str.strip_chars().cast(pl.Float64, strict=False)
    return pl.col(col).cast(pl.Float64, strict=False)


def _parse_flag(raw: pl.DataFrame, col: str) -> pl.Expr:
    if raw.schema[col] == pl.Boolean:
        return pl.col(col).fill_null(value=False)
    text = pl.col(col).cast(pl.Utf8).str.strip_chars().str.to_lowercase().fill_null("")
    return pl.when(text.is_in(FLAG_TRUE)).then(True).when(text.is_in(FLAG_FALSE)).then(False).otherwise(None)


def _extra_expr(raw: pl.DataFrame, col: str) -> pl.Expr:
    """Extra columns become floats when every non-empty value is numeric, else stay text."""
    if raw.schema[col] != pl.Utf8:
        return pl.col(col)
    values = raw[col].str.strip_chars()
    present = values.is_not_null() & ~values.is_in(["", "NA", "NaN", "nan", "null"])
    parsed = values.cast(pl.Float64, strict=False)
    if int((present & parsed.is_null()).sum()) == 0:
        return (
            pl.when(pl.col(col).str.strip_chars().is_in(["", "NA", "null"]))
            .then(None)
            .otherwise(pl.col(col).str.strip_chars().cast(pl.Float64, strict=False))
            .alias(col)
        )
    return pl.col(col).str.strip_chars()


def validate(
    raw: pl.DataFrame,
    cfg: DataConfig,
    *,
    source: str = "",
    now: datetime | None = None,
    max_examples: int = 5,
) -> ValidationResult:
    """Apply every rule to the loader's frame; bad rows go to quarantine with the first rule they broke."""
    now = now or datetime.now()
    flags: list[str] = [c for c in ("is_holiday", "on_promo") if c in raw.columns]
    extras = [c for c in raw.columns if c not in {LINE, "store_id", "item_id", "category", "ds", "y", *flags}]
    work = raw.with_columns(
        pl.col("store_id").cast(pl.Utf8).str.strip_chars().alias("_store"),
        pl.col("item_id").cast(pl.Utf8).str.strip_chars().alias("_item"),
        pl.col("category").cast(pl.Utf8).str.strip_chars().fill_null("").alias("_category"),
        _parse_ds(raw, cfg).alias("_ds"),
        _parse_float(raw, "y").alias("_y"),
        *[_parse_flag(raw, f).alias(f"_{f}") for f in flags],
    )
    limit: date | datetime = now if cfg.freq == "H" else now.date()
    checks: list[tuple[str, pl.Expr]] = [
        ("missing_key", _is_blank("store_id") | _is_blank("item_id") | _is_blank("ds")),
        ("bad_date", pl.col("_ds").is_null()),
        ("missing_value", _is_blank("y")),
        ("bad_number", pl.col("_y").is_null() | ~pl.col("_y").is_finite()),
    ]
    if flags:
        checks.append(("bad_flag", pl.any_horizontal(*[pl.col(f"_{f}").is_null() for f in flags])))
    if not cfg.allow_future_dates:
        checks.append(("future_date", pl.col("_ds") > pl.lit(limit)))
    if cfg.known_categories:
        checks.append(("unknown_category", ~pl.col("_category").is_in(cfg.known_categories)))
    if cfg.negative_values == "quarantine":
        checks.append(("negative_value", pl.col("_y") < 0))
    rule_expr: pl.Expr = pl.lit(None, dtype=pl.Utf8)
    for name, cond in reversed(checks):
        rule_expr = pl.when(cond.fill_null(value=True)).then(pl.lit(name)).otherwise(rule_expr)
    work = work.with_columns(rule_expr.alias("_rule"))
    # Duplicates among otherwise-good rows: the first occurrence (by line) stays.
    dup = (pl.col("_rule").is_null()) & (
        pl.int_range(pl.len()).over(["_store", "_item", "_ds", pl.col("_rule").is_null()], order_by=LINE) > 0
    )
    work = work.with_columns(
        pl.when(dup).then(pl.lit("duplicate_key")).otherwise(pl.col("_rule")).alias("_rule")
    )
    short = pl.col("_rule").is_null() & (
        pl.col("_rule").is_null().sum().over(["_store", "_item"]) < cfg.min_series_length
    )
    work = work.with_columns(
        pl.when(short).then(pl.lit("too_short")).otherwise(pl.col("_rule")).alias("_rule")
    )

    rule_counts: list[RuleCount] = []
    display_cols = [c for c in raw.columns if c != LINE]
    bad = work.filter(pl.col("_rule").is_not_null())
    for name, (rule_severity, description) in RULES.items():
        severity = rule_severity
        hits = bad.filter(pl.col("_rule") == name)
        if name == "negative_value" and cfg.negative_values != "quarantine":
            hits = work.filter(pl.col("_rule").is_null() & (pl.col("_y") < 0))
            action = "set to 0" if cfg.negative_values == "zero" else "kept"
            severity = "warning" if cfg.negative_values == "keep" else "info"
        else:
            action = "quarantined"
        if name == "gap" or hits.height == 0:
            continue
        rule_counts.append(
            RuleCount(
                rule=name,
                severity=severity,
                action=action,
                count=hits.height,
                description=description,
                examples=_examples(hits.sort(LINE), display_cols, max_examples),
            )
        )

    quarantine = bad.sort(LINE).select(
        pl.col(LINE),
        pl.col("_rule").alias("rule"),
        pl.col("_rule").replace_strict({k: v[1] for k, v in RULES.items()}, default="").alias("reason"),
        *[pl.col(c).cast(pl.Utf8) for c in display_cols],
    )
    good = work.filter(pl.col("_rule").is_null())
    y_expr = pl.col("_y")
    if cfg.negative_values == "zero":
        y_expr = pl.when(y_expr < 0).then(0.0).otherwise(y_expr)
    canonical = good.select(
        pl.col("_store").alias("store_id"),
        pl.col("_item").alias("item_id"),
        pl.col("_category").first().over(["_store", "_item"], order_by=LINE).alias("category"),
        pl.col("_ds").alias("ds"),
        y_expr.alias("y"),
        *[pl.col(f"_{f}").alias(f) for f in flags],
        *[_extra_expr(raw, c) for c in extras],
    ).sort([*KEYS, "ds"])

    canonical, filled, gap_examples, series_with_gaps = _fill_gaps(canonical, cfg, flags, max_examples)
    if series_with_gaps:
        rule_counts.append(
            RuleCount(
                rule="gap",
                severity="info",
                action="filled with 0" if cfg.fill_gaps == "zero" else "kept",
                count=filled,
                description=f"missing periods inside {series_with_gaps} series",
                examples=gap_examples,
            )
        )
    report = ValidationReport(
        source=source,
        format=cfg.format,
        freq=cfg.freq,
        rows_read=raw.height,
        rows_accepted=good.height,
        rows_quarantined=bad.height,
        rows_filled=filled if cfg.fill_gaps == "zero" else 0,
        series=canonical.select(KEYS).n_unique() if canonical.height else 0,
        stores=canonical["store_id"].n_unique(),
        categories=canonical["category"].n_unique(),
        first_ds=str(canonical["ds"].min()) if canonical.height else None,
        last_ds=str(canonical["ds"].max()) if canonical.height else None,
        usable=canonical.height > 0,
        rules=rule_counts,
    )
    return ValidationResult(frame=canonical, quarantine=quarantine, report=report)


def _examples(hits: pl.DataFrame, cols: list[str], n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rec in hits.head(n).iter_rows(named=True):
        values = {c: (None if rec[c] is None else str(rec[c])) for c in cols}
        rows.append({"line": rec[LINE], "values": values})
    return rows


def _fill_gaps(
    frame: pl.DataFrame, cfg: DataConfig, flags: list[str], max_examples: int
) -> tuple[pl.DataFrame, int, list[dict[str, Any]], int]:
    if frame.height == 0:
        return frame, 0, [], 0
    interval = FREQ_INTERVAL[cfg.freq]
    spans = frame.group_by(KEYS, maintain_order=True).agg(
        pl.col("ds").min().alias("_start"), pl.col("ds").max().alias("_end"), pl.len().alias("_n")
    )
    ranges = (
        pl.datetime_ranges("_start", "_end", interval, time_unit="us")
        if cfg.freq == "H"
        else pl.date_ranges("_start", "_end", interval)
    )
    grid = spans.select(*KEYS, "_n", ranges.alias("ds")).explode("ds")
    expected = grid.group_by(KEYS).agg(pl.len().alias("_expected"), pl.col("_n").first())
    gappy = expected.filter(pl.col("_expected") != pl.col("_n")).sort(KEYS)
    if gappy.height == 0:
        return frame, 0, [], 0
    missing = (
        grid.drop("_n").join(frame.select([*KEYS, "ds"]), on=[*KEYS, "ds"], how="anti").sort([*KEYS, "ds"])
    )
    examples = [
        {"store_id": r["store_id"], "item_id": r["item_id"], "missing_ds": str(r["ds"])}
        for r in missing.head(max_examples).iter_rows(named=True)
    ]
    if cfg.fill_gaps == "none":
        return frame, missing.height, examples, gappy.height
    series_cols = [c for c in frame.columns if c not in {*KEYS, "ds", "y", *flags}]
    filled_rows = missing.with_columns(pl.lit(0.0).alias("y"), *[pl.lit(value=False).alias(f) for f in flags])
    merged = pl.concat([frame, filled_rows], how="diagonal_relaxed").sort([*KEYS, "ds"])
    if series_cols:
        merged = merged.with_columns(
            [pl.col(c).forward_fill().backward_fill().over(KEYS) for c in series_cols if c != "category"]
            + [pl.col("category").forward_fill().backward_fill().over(KEYS)]
        )
    return merged.select(frame.columns), missing.height, examples, gappy.height


def load_canonical(path: Path, cfg: DataConfig, *, now: datetime | None = None) -> ValidationResult:
    """Load an extract with the ``[data]`` mapping and validate it."""
    return validate(load_extract(path, cfg), cfg, source=path.name, now=now)


def render_text(report: ValidationReport) -> str:
    """The readable report (``validation.txt``)."""
    lines = [
        f"source: {report.source} ({report.format}, freq {report.freq})",
        f"rows read {report.rows_read}, accepted {report.rows_accepted},"
        f" quarantined {report.rows_quarantined}, filled {report.rows_filled}",
        f"series {report.series}, stores {report.stores}, categories {report.categories},"
        f" dates {report.first_ds} .. {report.last_ds}",
        f"usable: {'yes' if report.usable else 'NO'}",
        "",
    ]
    if not report.rules:
        lines.append("no rule was broken")
    for rule in report.rules:
        lines.append(f"[{rule.severity}] {rule.rule}: {rule.count} ({rule.description}; {rule.action})")
        for ex in rule.examples:
            if "line" in ex:
                vals = ", ".join(f"{k}={v}" for k, v in ex["values"].items())
                lines.append(f"    line {ex['line']}: {vals}")
            else:
                lines.append(f"    {', '.join(f'{k}={v}' for k, v in ex.items())}")
    return "\n".join(lines) + "\n"


def write_reports(result: ValidationResult, out_dir: Path) -> dict[str, Path]:
    """``validation.json``, ``validation.txt`` and ``quarantine.csv`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "validation.json",
        "text": out_dir / "validation.txt",
        "quarantine": out_dir / "quarantine.csv",
    }
    paths["json"].write_bytes(msgspec.json.format(msgspec.json.encode(result.report), indent=2) + b"\n")
    paths["text"].write_text(render_text(result.report), encoding="utf-8")
    result.quarantine.write_csv(paths["quarantine"])
    return paths


def require_usable(result: ValidationResult, *, strict: bool = False) -> None:
    """Raise ``DataError`` when nothing usable remains (or, with ``strict``, when any row was quarantined)."""
    if not result.report.usable:
        raise DataError(f"{result.report.source}: no usable rows remain after validation")
    if strict and result.report.rows_quarantined:
        raise DataError(
            f"{result.report.source}: {result.report.rows_quarantined} row(s) quarantined (--strict)"
        )


def finite(value: float) -> float | None:
    """``None`` for NaN/inf (JSON has no such numbers)."""
    return value if math.isfinite(value) else None
