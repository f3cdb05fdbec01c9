"""Charts drawn on the server as inline SVG (no JavaScript): bars, lines, thresholds, heat maps, histograms.

Each function returns ``markupsafe.Markup`` ready for a template; every label is escaped. Charts carry
``role="img"``, an ``aria-label`` and ``<title>`` tooltips on their marks, and a ``data-chart`` attribute
naming their kind (the browser test looks for it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#4b5563")
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    """One line: a name and a value per x label (None: no point there)."""

    name: str
    values: Sequence[float | None]


@dataclass(frozen=True)
class Threshold:
    label: str
    value: float


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _open(kind: str, width: int, height: int, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{kind}" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" aria-label="{escape(label)}">'
        f"<title>{escape(label)}</title>"
    )


def _markup(parts: list[str]) -> Markup:
    """The finished chart: every text and attribute value in ``parts`` was escaped where it was written."""
    return Markup("".join(parts))  # noqa: S704 - labels pass through escape() above, numbers are formatted


def _empty(kind: str, width: int, label: str, message: str) -> Markup:
    text = f'<text x="8" y="24" {FONT} fill="#6b7280">{escape(message)}</text></svg>'
    return _markup([_open(kind, width, 40, label), text])


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    base = 10**exponent
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * base:
            return float(step * base)
    return float(10 * base)


def bar_chart(items: Sequence[tuple[str, float]], *, label: str, width: int = 520) -> Markup:
    """Horizontal bars, one per (name, value), largest scale first."""
    if not items:
        return _empty("bars", width, label, "no data yet")
    row, left, right = 22, 150, 60
    height = row * len(items) + 10
    top = max(v for _, v in items) or 1.0
    parts = [_open("bars", width, height, label)]
    for i, (name, value) in enumerate(items):
        y = 5 + i * row
        bar = max(1.0, (width - left - right) * value / top)
        color = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" {FONT}>{escape(name[:24])}</text>'
            f'<rect x="{left}" y="{y + 3}" width="{bar:.1f}" height="{row - 8}" fill="{color}">'
            f"<title>{escape(name)}: {escape(_fmt(value))}</title></rect>"
            f'<text x="{left + bar + 4:.1f}" y="{y + 14}" {FONT}>{escape(_fmt(value))}</text>'
        )
    parts.append("</svg>")
    return _markup(parts)


def line_chart(
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    label: str,
    thresholds: Sequence[Threshold] = (),
    width: int = 640,
    height: int = 240,
    y_label: str = "",
) -> Markup:
    """Lines over categorical x positions (dates, decisions), with dashed threshold lines and a legend."""
    points = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    if not x_labels or not points:
        return _empty("lines", width, label, "no data yet")
    left, right, top, bottom = 52, 12, 24 if y_label else 12, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = _nice_max(max([*points, *(t.value for t in thresholds)]) * 1.05)
    n = len(x_labels)

    def x_at(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y_at(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    parts = [_open("lines", width, height, label)]
    for k in range(5):  # grid and y ticks
        v = y_max * k / 4
        y = y_at(v)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{escape(_fmt(v))}</text>'
        )
    every = max(1, math.ceil(n / 6))
    for i, name in enumerate(x_labels):
        if i % every == 0 or i == n - 1:
            parts.append(
                f'<text x="{x_at(i):.1f}" y="{top + plot_h + 14}" text-anchor="middle" {FONT}>'
                f"{escape(name[:18])}</text>"
            )
    for t in thresholds:
        y = y_at(t.value)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#111827" '
            f'stroke-dasharray="5 4"><title>{escape(t.label)}: {escape(_fmt(t.value))}</title></line>'
            f'<text x="{width - right - 2}" y="{y - 3:.1f}" text-anchor="end" {FONT}>{escape(t.label)}</text>'
        )
    for s_i, s in enumerate(series):
        color = PALETTE[s_i % len(PALETTE)]
        segment: list[str] = []
        for i, value in enumerate(s.values):
            if value is None or not math.isfinite(value):
                if len(segment) > 1:
                    parts.append(_polyline(segment, color))
                segment = []
                continue
            segment.append(f"{x_at(i):.1f},{y_at(value):.1f}")
            parts.append(
                f'<circle cx="{x_at(i):.1f}" cy="{y_at(value):.1f}" r="3" fill="{color}">'
                f"<title>{escape(s.name)} @ {escape(x_labels[i])}: {escape(_fmt(value))}</title></circle>"
            )
        if len(segment) > 1:
            parts.append(_polyline(segment, color))
    legend_y = height - 16
    x = left
    for s_i, s in enumerate(series):
        color = PALETTE[s_i % len(PALETTE)]
        parts.append(
            f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14}" y="{legend_y}" {FONT}>{escape(s.name[:28])}</text>'
        )
        x += 24 + 7 * min(len(s.name), 28)
    if y_label:
        parts.append(f'<text x="4" y="12" {FONT} fill="#6b7280">{escape(y_label)}</text>')
    parts.append("</svg>")
    return _markup(parts)


def _polyline(points: list[str], color: str) -> str:
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="2"/>'


def _heat_color(value: float, low: float, high: float) -> str:
    """Green (low WAPE) through yellow to red (high WAPE)."""
    t = 0.0 if high <= low else min(1.0, max(0.0, (value - low) / (high - low)))
    if t < 0.5:
        r, g = int(34 + (234 - 34) * t * 2), int(197 + (179 - 197) * t * 2)
    else:
        r, g = int(234 + (220 - 234) * (t - 0.5) * 2), int(179 + (38 - 179) * (t - 0.5) * 2)
    return f"#{r:02x}{g:02x}{40:02x}"


def heatmap(
    rows: Sequence[str],
    cols: Sequence[str],
    values: dict[tuple[str, str], float],
    *,
    label: str,
    low: float = 0.0,
    high: float = 1.0,
    cell: int = 22,
) -> Markup:
    """A rows x cols grid coloured by value (``low`` green .. ``high`` red); empty cells stay grey."""
    if not rows or not cols:
        return _empty("heatmap", 520, label, "no accuracy reports yet")
    left, top = 130, 90
    width = max(left + cell * len(cols) + 10, left + 5 * 50 + 40)
    height = top + cell * len(rows) + 30
    parts = [_open("heatmap", width, height, label)]
    for j, col in enumerate(cols):
        x = left + j * cell + cell / 2
        parts.append(
            f'<text transform="translate({x:.1f},{top - 6}) rotate(-55)" {FONT}>{escape(col[:16])}</text>'
        )
    for i, row in enumerate(rows):
        y = top + i * cell
        parts.append(
            f'<text x="{left - 6}" y="{y + cell * 0.7:.1f}" text-anchor="end" {FONT}>'
            f"{escape(row[:20])}</text>"
        )
        for j, col in enumerate(cols):
            value = values.get((row, col))
            fill = "#f3f4f6" if value is None else _heat_color(value, low, high)
            tip = f"{row} / {col}: " + ("no data" if value is None else f"WAPE {value:.3f}")
            parts.append(
                f'<rect x="{left + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    legend_y = top + cell * len(rows) + 10
    for k in range(5):
        v = low + (high - low) * k / 4
        color = _heat_color(v, low, high)
        parts.append(
            f'<rect x="{left + k * 50}" y="{legend_y}" width="48" height="10" fill="{color}"/>'
            f'<text x="{left + k * 50}" y="{legend_y + 20}" {FONT}>{escape(_fmt(v))}</text>'
        )
    parts.append("</svg>")
    return _markup(parts)


def histogram_pair(
    edges: Sequence[float],
    recent: Sequence[float],
    reference: Sequence[float],
    *,
    label: str,
    names: tuple[str, str] = ("recent", "reference"),
    width: int = 640,
    height: int = 240,
) -> Markup:
    """Two distributions over the same bins as side-by-side bars (shares of each side's total)."""
    if len(edges) < 2 or not (sum(recent) or sum(reference)):
        return _empty("histogram", width, label, "no observations to compare")
    left, right, top, bottom = 52, 12, 12, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    shares = [[v / (sum(side) or 1.0) for v in side] for side in (recent, reference)]
    y_max = _nice_max(max(max(s) for s in shares) * 1.05)
    n = len(edges) - 1
    slot = plot_w / n
    parts = [_open("histogram", width, height, label)]
    for k in range(5):
        v = y_max * k / 4
        y = top + plot_h * (1 - v / y_max)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{v:.0%}</text>'
        )
    for b in range(n):
        for side in (0, 1):
            share = shares[side][b]
            h = plot_h * share / y_max
            x = left + b * slot + side * slot / 2 + 1
            tip = f"{names[side]} {_fmt(edges[b])}..{_fmt(edges[b + 1])}: {share:.1%}"
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{max(1.0, slot / 2 - 2):.1f}" '
                f'height="{max(h, 0.5):.1f}" fill="{PALETTE[side]}"><title>{escape(tip)}</title></rect>'
            )
    every = max(1, math.ceil(n / 8))
    for b in range(0, n + 1, every):
        x = left + b * slot
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle" {FONT}>'
            f"{escape(_fmt(edges[b]))}</text>"
        )
    legend_y = height - 16
    for side in (0, 1):
        x = left + side * 140
        parts.append(
            f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{PALETTE[side]}"/>'
            f'<text x="{x + 14}" y="{legend_y}" {FONT}>{escape(names[side])}</text>'
        )
    parts.append("</svg>")
    return _markup(parts)
