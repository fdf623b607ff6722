"""Plots for the analysts' pages: inline SVG written here, no JavaScript, no external asset.

Two shapes serve the questions analysts ask (reports.pages supplies the data):
- `line_chart`: one line per series over the last runs (quarantine per area; the top rules);
- `bar_chart`: one bar per bucket (time from first seen to released).

Every value has a tooltip (<title>), every chart a text alternative (aria-label) and its numbers in
the page's tables, so a chart is never the only place a number is.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from markupsafe import Markup, escape

#: Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito, then two greys).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#7f7f7f", "#b8860b",
           "#4b0082")
WIDTH, HEIGHT = 900, 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 340, 14, 44
_FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif" font-size="12"'


def _ticks(top: float, count: int = 4) -> list[int]:
    """Round whole-number ticks from 0 to at least `top` (0, 1, 2 or 0, 5, 10 or 0, 200, 400 ...): the
    plots count records."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(1, int(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)))
    return list(range(0, int(math.ceil(top / step)) * step + 1, step))


def _number(value: float) -> str:
    return f"{value:,.0f}"


Frame = tuple[list[str], float, float]  # SVG parts so far, plot width, top of the y scale


def _frame(what: str, y_label: str, top: float, x_labels: Sequence[str], slots: int) -> Frame:
    """SVG opening, axes, grid and x labels."""
    ticks = _ticks(top)
    ymax = ticks[-1]
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    parts = [f'<svg class="plot" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(what)}" {_FONT}>', f"<title>{escape(what)}</title>"]
    for t in ticks:
        y = _TOP + plot_h - t / ymax * plot_h
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}" stroke="#e3e7ed"/>'
                     f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#5b6576">{_number(t)}</text>')
    parts.append(f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}" '
                 'stroke="#9aa3b1"/>')
    parts.append(f'<text x="14" y="{_TOP + plot_h / 2:.0f}" text-anchor="middle" fill="#5b6576" '
                 f'transform="rotate(-90 14 {_TOP + plot_h / 2:.0f})">{escape(y_label)}</text>')
    every = max(1, math.ceil(len(x_labels) / 8))  # at most about eight labels under the axis
    for i, label in enumerate(x_labels):
        if i % every and i != len(x_labels) - 1:
            continue
        x = _x(i, slots, plot_w)
        parts.append(f'<text x="{x:.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle" fill="#5b6576">'
                     f"{escape(label)}</text>")
    return parts, plot_w, ymax


def _x(i: int, slots: int, plot_w: float) -> float:
    return _LEFT + (i + 0.5) * plot_w / max(slots, 1)


def _y(value: float, ymax: float) -> float:
    plot_h = HEIGHT - _TOP - _BOTTOM
    return _TOP + plot_h - value / ymax * plot_h


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    parts = []
    for i, (label, color) in enumerate(entries[:12]):
        y = _TOP + 8 + i * 18
        x = WIDTH - _RIGHT + 16
        parts.append(f'<rect x="{x}" y="{y - 9}" width="14" height="4" fill="{color}"/>'
                     f'<text x="{x + 20}" y="{y - 3}" fill="#1d2430">{escape(label)}</text>')
    return parts


def line_chart(series: Sequence[tuple[str, Sequence[int | None]]], x_labels: Sequence[str], *, what: str,
               y_label: str, tooltips: Sequence[str] | None = None, dashed: Collection[str] = ()) -> Markup:
    """One line per (label, values) over the x labels (oldest left); None leaves a gap.

    A series with a single point shows as a dot; the legend gives each line's last value. Series named
    in `dashed` are drawn dashed (e.g. warnings beside errors).
    """
    slots = len(x_labels)
    top = max((v for _, values in series for v in values if v is not None), default=0)
    parts, plot_w, ymax = _frame(what, y_label, top, x_labels, slots)
    legend = []
    for n, (label, values) in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        path, previous = [], None
        for i, v in points:
            command = "L" if previous is not None and previous == i - 1 else "M"
            path.append(f"{command}{_x(i, slots, plot_w):.1f},{_y(v, ymax):.1f}")
            previous = i
        if path:
            dash = ' stroke-dasharray="6 4"' if label in dashed else ""
            parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"{dash} '
                         f'data-series="{escape(label)}"/>')
        for i, v in points:
            tip = tooltips[i] if tooltips else x_labels[i]
            parts.append(f'<circle cx="{_x(i, slots, plot_w):.1f}" cy="{_y(v, ymax):.1f}" r="3" fill="{color}">'
                         f"<title>{escape(label)}, {escape(tip)}: {v}</title></circle>")
        last = points[-1][1] if points else "-"
        legend.append((f"{label}: {last}", color))
    parts += _legend(legend)
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(buckets: Sequence[tuple[str, int]], *, what: str, y_label: str, color: str = "#0072b2") -> Markup:
    """One bar per (label, count), with its count above it."""
    labels = [label for label, _ in buckets]
    top = max((count for _, count in buckets), default=0)
    parts, plot_w, ymax = _frame(what, y_label, top, labels, len(buckets))
    width = plot_w / max(len(buckets), 1) * 0.6
    for i, (label, count) in enumerate(buckets):
        x, y = _x(i, len(buckets), plot_w), _y(count, ymax)
        parts.append(f'<rect x="{x - width / 2:.1f}" y="{y:.1f}" width="{width:.1f}" '
                     f'height="{_y(0, ymax) - y:.1f}" fill="{color}" data-bucket="{escape(label)}">'
                     f"<title>{escape(label)}: {count}</title></rect>"
                     f'<text x="{x:.1f}" y="{y - 4:.1f}" text-anchor="middle" fill="#1d2430">{count}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
