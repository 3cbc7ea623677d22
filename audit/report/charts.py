"""Inline SVG charts for the report, drawn in Python: no JavaScript, no network, they print as vectors.

Reads and writes no table: each function takes plain numbers and labels
(already redacted by the caller) and returns an SVG fragment as
``markupsafe.Markup``. Every piece of text is escaped here, so a label that
holds ``<script>`` is drawn as those characters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# A palette that survives greyscale printing (distinct lightness) and colour blindness (Okabe-Ito).
COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


def money(value: float | None) -> str:
    """$1.2M, $87k, $950, $0.42 (and B, T for a runaway projection): short enough for an axis or a bar end."""
    if value is None:
        return "-"
    sign, value = ("-" if value < 0 else ""), abs(value)
    for unit, size in (("T", 1e12), ("B", 1e9)):
        if value >= size:
            scaled = value / size
            return f"{sign}${scaled:,.0f}{unit}" if scaled >= 100 else f"{sign}${scaled:.3g}{unit}"
    if value >= 1e6:
        return f"{sign}${value / 1e6:,.1f}M"
    if value >= 1e4:
        return f"{sign}${value / 1e3:,.0f}k"
    if value >= 1e3:
        return f"{sign}${value / 1e3:,.1f}k"
    if value >= 10:
        return f"{sign}${value:,.0f}"
    return f"{sign}${value:,.2f}"


def _truncate(label: str, width: int) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round axis ticks from 0 to at least ``top`` (1, 2, 2.5 or 5 × a power of ten apart)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-12:
        ticks.append(ticks[-1] + step)
    return ticks


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    # role=img + <title>: screen readers announce the chart; viewBox: scales with the page.
    return Markup(
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" preserveAspectRatio="xMinYMin meet" style="max-width:{width}px;{FONT}">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def bar_chart(items: Sequence[tuple[str, float]], *, title: str, value_format: Callable[[float], str] = money,
              label_width: int = 42, width: int = 760) -> Markup:
    """Horizontal bars, largest first as given; the value written at each bar's end."""
    row, label_px, right_px = 22, 300, 80
    height = 10 + row * max(1, len(items))
    top = max((v for _, v in items), default=0.0) or 1.0
    span = width - label_px - right_px
    body = []
    for i, (label, value) in enumerate(items):
        y = 5 + i * row
        length = max(0.0, value) / top * span
        body.append(
            f'<text x="{label_px - 8}" y="{y + 15}" text-anchor="end" font-size="12" fill="#222">'
            f"<title>{escape(label)}</title>{escape(_truncate(label, label_width))}</text>"
            f'<rect x="{label_px}" y="{y + 3}" width="{length:.1f}" height="{row - 6}" fill="{COLORS[0]}" rx="2"/>'
            f'<text x="{label_px + length + 5:.1f}" y="{y + 15}" font-size="12" fill="#222">{escape(value_format(value))}</text>'
        )
    return _svg(width, height, title, body)


@dataclass
class Series:
    name: str
    values: Sequence[float | None]   # one per x position; None leaves a gap
    color: str = COLORS[0]
    dash: str | None = None          # SVG stroke-dasharray
    width: float = 2.0


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks per decade covering [low, high] (both > 0); fewer per decade over many decades."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1, 2, 5) if last - first <= 4 else (1,)
    ticks = [m * 10 ** e for e in range(first, last + 1) for m in steps]
    below = [t for t in ticks if t <= low]
    above = [t for t in ticks if t >= high]
    start = below[-1] if below else ticks[0]
    end = above[0] if above else ticks[-1]
    return [t for t in ticks if start <= t <= end]


def line_chart(x_labels: Sequence[str], series: Sequence[Series], *, title: str,
               value_format: Callable[[float], str] = money, label_every: int | None = None,
               width: int = 760, height: int = 300, area: bool = False, log_scale: bool = False) -> Markup:
    """Lines over a shared x axis, y from zero (or logarithmic), a legend on top; ``area`` fills under the first series."""
    left, right, bottom = 64, 16, 40
    # Room for the legend: one 18 px row per line of series names.
    legend_rows, x = 1, left
    for s in series:
        step = 40 + 7 * len(s.name)
        if x > left and x + step > width:
            legend_rows, x = legend_rows + 1, left
        x += step
    top_px = 16 + 18 * legend_rows
    height += 18 * (legend_rows - 1)
    plot_w, plot_h = width - left - right, height - top_px - bottom
    values = [v for s in series for v in s.values if v is not None]
    peak = max(values, default=0.0)
    positive = [v for v in values if v > 0]
    log_scale = log_scale and bool(positive)
    if log_scale:
        # Compounding growth over a year spans decades: a log axis keeps every line readable.
        ticks = log_ticks(min(positive), max(positive))
        y_low, y_high = math.log10(ticks[0]), math.log10(ticks[-1])
    else:
        ticks = nice_ticks(peak)
        y_low, y_high = 0.0, ticks[-1] or 1.0
    y_span = (y_high - y_low) or 1.0
    n = max(1, len(x_labels) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        scaled = math.log10(max(v, ticks[0])) if log_scale else v
        return left + plot_w * i / n, top_px + plot_h * (1 - (scaled - y_low) / y_span)

    body = []
    for t in ticks:
        _, y = xy(0, t)
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd" stroke-width="1"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
                    f"{escape(value_format(t))}</text>")
    every = label_every or max(1, math.ceil(len(x_labels) / 7))
    for i, label in enumerate(x_labels):
        if i % every == 0 or i == len(x_labels) - 1 and len(x_labels) <= 13:
            x, _ = xy(i, 0)
            body.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11" fill="#555">'
                        f"{escape(label)}</text>")
    for k, s in enumerate(series):
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(xy(i, v))
        for run in (r for r in runs if r):
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
            if area and k == 0 and len(run) > 1:
                base = top_px + plot_h
                body.append(f'<polygon points="{run[0][0]:.1f},{base} {points} {run[-1][0]:.1f},{base}" '
                            f'fill="{s.color}" fill-opacity="0.15" stroke="none"/>')
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            body.append(f'<polyline points="{points}" fill="none" stroke="{s.color}" stroke-width="{s.width}"{dash}/>')
            if len(run) == 1:
                body.append(f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="3" fill="{s.color}"/>')
    # The legend: one swatch and name per series, left to right, wrapping above the plot.
    x, y = left, 14
    for s in series:
        step = 40 + 7 * len(s.name)
        if x > left and x + step > width:
            x, y = left, y + 18
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        body.append(f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{s.color}" stroke-width="{s.width + 1}"{dash}/>'
                    f'<text x="{x + 27}" y="{y + 4}" font-size="12" fill="#222">{escape(s.name)}</text>')
        x += step
    body.append(f'<line x1="{left}" x2="{left}" y1="{top_px}" y2="{top_px + plot_h}" stroke="#999"/>'
                f'<line x1="{left}" x2="{width - right}" y1="{top_px + plot_h}" y2="{top_px + plot_h}" stroke="#999"/>')
    return _svg(width, height, title, body)


def interval_chart(rows: Sequence[tuple[str, float | None, float | None, float | None, float | None]], *,
                   title: str, width: int = 760, label_width: int = 46) -> Markup:
    """Pass rates: per row (label, point, low, high, threshold) a dot, its interval and the bar it must clear (0–100%)."""
    row, label_px, right_px = 24, 340, 60
    height = 30 + row * max(1, len(rows))
    span = width - label_px - right_px

    def x(v: float) -> float:
        return label_px + span * max(0.0, min(1.0, v))

    body = []
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        body.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="18" y2="{height - 4}" stroke="#e3e3e3"/>'
                    f'<text x="{x(t):.1f}" y="12" text-anchor="middle" font-size="11" fill="#555">{t:.0%}</text>')
    for i, (label, point, low, high, threshold) in enumerate(rows):
        y = 22 + i * row + row / 2
        body.append(f'<text x="{label_px - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="#222">'
                    f"<title>{escape(label)}</title>{escape(_truncate(label, label_width))}</text>")
        if threshold is not None:
            body.append(f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="{y - 9:.1f}" y2="{y + 9:.1f}" '
                        f'stroke="{COLORS[5]}" stroke-width="2"/>')
        if low is not None and high is not None:
            body.append(f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{COLORS[0]}" stroke-width="3"/>')
        if point is not None:
            body.append(f'<circle cx="{x(point):.1f}" cy="{y:.1f}" r="5" fill="{COLORS[0]}"/>'
                        f'<text x="{width - right_px + 8}" y="{y + 4:.1f}" font-size="12" fill="#222">{point:.0%}</text>')
    return _svg(width, height, title, body)


__all__ = ["bar_chart", "line_chart", "interval_chart", "Series", "money", "nice_ticks", "log_ticks", "COLORS"]
