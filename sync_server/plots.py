"""Plots for the dashboard as inline SVG made on the server: no script, no library, nothing fetched.

Each function returns :class:`markupsafe.Markup` holding one ``<svg>``; every label in it is
escaped (device names and labels are data, not markup). Colours are SVG presentation
attributes, which the dashboard's Content-Security-Policy allows (no ``style`` attributes).
Each point or bar carries a ``<title>``, so hovering it shows the exact figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from markupsafe import Markup, escape

SERIES = ("#1d4ed8", "#b45309", "#15803d", "#7e22ce", "#be123c")
INK = "#334155"
GRID = "#cbd5e1"
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(label)}">'
        f"<title>{escape(label)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")


def _nice_max(v: float) -> float:
    """A round axis maximum at or above ``v`` (1, 2 or 5 times a power of ten)."""
    if v <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if v <= m * p:
            return float(m * p)
    return float(10 * p)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 or v == int(v) else f"{v:.2g}"


def columns(
    items: Sequence[tuple[str, Sequence[float]]],
    series: Sequence[str],
    label: str,
    *,
    width: int = 720,
    height: int = 200,
    colours: Sequence[str] = SERIES,
) -> Markup:
    """Vertical stacked columns, one per (label, values per series): counts per class."""
    left, bottom, top = 40, 22, 22
    n = max(1, len(items))
    plot_w, plot_h = width - left - 8, height - bottom - top
    vmax = _nice_max(max((sum(vs) for _, vs in items), default=0))
    step = plot_w / n
    body = _axis_y(left, top, plot_w, plot_h, vmax)
    if len(series) > 1:
        body += _legend(series, left, 12, colours)
    for i, (name, values) in enumerate(items):
        x = left + i * step + step * 0.15
        y = float(top + plot_h)
        for j, v in enumerate(values):
            h = plot_h * v / vmax
            if h > 0:
                y -= h
                body.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" height="{h:.1f}" '
                    f'fill="{colours[j % len(colours)]}"><title>{escape(name)}, '
                    f"{escape(series[j])}: {_fmt(v)}</title></rect>"
                )
        body.append(
            f'<text x="{x + step * 0.35:.1f}" y="{height - 8}" text-anchor="middle" {FONT} '
            f'fill="{INK}">{escape(name)}</text>'
        )
    return _svg(width, height, label, body)


def bars(
    items: Sequence[tuple[str, Sequence[float]]],
    series: Sequence[str],
    label: str,
    *,
    width: int = 720,
) -> Markup:
    """Horizontal stacked bars, one row per (name, values per series): corrections per device."""
    left, row, top = 150, 22, 24
    height = top + row * max(1, len(items)) + 24
    plot_w = width - left - 60
    vmax = _nice_max(max((sum(vs) for _, vs in items), default=0))
    body = _legend(series, left, 14)
    for i, (name, values) in enumerate(items):
        y = top + i * row
        short = name if len(name) <= 22 else name[:21] + "…"
        body.append(
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" {FONT} fill="{INK}">'
            f"<title>{escape(name)}</title>{escape(short)}</text>"
        )
        x = float(left)
        for j, v in enumerate(values):
            w = plot_w * v / vmax
            if w > 0:
                body.append(
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" '
                    f'fill="{SERIES[j % len(SERIES)]}"><title>{escape(name)}, '
                    f"{escape(series[j])}: {_fmt(v)}</title></rect>"
                )
            x += w
        body.append(
            f'<text x="{x + 4:.1f}" y="{y + 15}" {FONT} fill="{INK}">{_fmt(sum(values))}</text>'
        )
    return _svg(width, height, label, body)


def timeline(
    series: dict[str, Sequence[tuple[float, float]]],
    label: str,
    *,
    width: int = 720,
    height: int = 200,
) -> Markup:
    """One line per series over days (unix times at midnight UTC): corrections over time."""
    left, bottom, top = 40, 22, 22
    plot_w, plot_h = width - left - 12, height - bottom - top
    points = [p for s in series.values() for p in s]
    vmax = _nice_max(max((v for _, v in points), default=0))
    t0 = min((t for t, _ in points), default=0.0)
    t1 = max((t for t, _ in points), default=1.0)
    span = max(t1 - t0, 1.0)
    body = _axis_y(left, top, plot_w, plot_h, vmax) + _legend(list(series), left, 12)
    for k, (name, pts) in enumerate(series.items()):
        colour = SERIES[k % len(SERIES)]
        xy = [
            (left + plot_w * (t - t0) / span, top + plot_h - plot_h * v / vmax, t, v)
            for t, v in pts
        ]
        body.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in xy)
            + '"/>'
        )
        for x, y, t, v in xy:
            day = time.strftime("%Y-%m-%d", time.gmtime(t))
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(name)} {day}: {_fmt(v)}</title></circle>"
            )
    for t, anchor in ((t0, "start"), (t0 + span / 2, "middle"), (t1, "end")):
        x = left + plot_w * (t - t0) / span
        body.append(
            f'<text x="{x:.1f}" y="{height - 6}" text-anchor="{anchor}" {FONT} fill="{INK}">'
            f"{time.strftime('%d %b', time.gmtime(t))}</text>"
        )
    return _svg(width, height, label, body)


def dots(
    items: Sequence[tuple[str, float | None]],
    label: str,
    *,
    width: int = 360,
    height: int = 180,
    percent: bool = True,
) -> Markup:
    """One dot per (name, value) left to right, a scale fitted to the values: accuracy by version."""
    left, bottom, top = 48, 34, 12
    plot_w, plot_h = width - left - 12, height - bottom - top
    known = [v for _, v in items if v is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    pad = max((hi - lo) * 0.2, 0.002)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad) if percent else hi + pad
    if hi <= lo:
        lo, hi = lo - 0.01, hi + 0.01
    body = []
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        v = lo + (hi - lo) * frac
        text = f"{v * 100:.2f}%" if percent else _fmt(v)
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT} fill="{INK}">'
            f"{text}</text>"
        )
    n = max(1, len(items))
    prev = None
    for i, (name, v) in enumerate(items):
        x = left + plot_w * (i + 0.5) / n
        body.append(
            f'<text x="{x:.1f}" y="{height - 14}" text-anchor="middle" {FONT} fill="{INK}">'
            f"{escape(name)}</text>"
        )
        if v is None:
            continue
        y = top + plot_h * (1 - (v - lo) / (hi - lo))
        if prev is not None:
            body.append(
                f'<line x1="{prev[0]:.1f}" y1="{prev[1]:.1f}" x2="{x:.1f}" y2="{y:.1f}" '
                f'stroke="{SERIES[0]}" stroke-width="1.5"/>'
            )
        text = f"{v * 100:.2f}%" if percent else _fmt(v)
        body.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{SERIES[0]}">'
            f"<title>{escape(name)}: {text}</title></circle>"
        )
        prev = (x, y)
    return _svg(width, height, label, body)


def confusion(
    labels: Sequence[str], matrix: Sequence[Sequence[float]], label: str, *, cell: int = 0
) -> Markup:
    """A confusion matrix as a heat map: rows the true class, columns the prediction.

    Each row is shaded by its share of the row's total (blue on the diagonal, red off it), so
    a class read as another stands out whatever its size; each cell's title has the count.
    """
    n = len(labels)
    cell = cell or (24 if n <= 12 else 12)
    left, top = 28, 28
    size = left + cell * n + 4
    body = [
        f'<text x="{left + cell * n / 2:.0f}" y="10" text-anchor="middle" {FONT} '
        f'fill="{INK}">predicted</text>'
    ]
    for i, truth in enumerate(labels):
        row = matrix[i] if i < len(matrix) else []
        total = sum(row) or 1
        body.append(
            f'<text x="{left - 4}" y="{top + i * cell + cell * 0.7:.1f}" text-anchor="end" '
            f'{FONT} fill="{INK}">{escape(truth)}</text>'
            f'<text x="{left + i * cell + cell / 2:.1f}" y="{top - 4}" text-anchor="middle" '
            f'{FONT} fill="{INK}">{escape(truth)}</text>'
        )
        for j, v in enumerate(row[:n]):
            share = v / total
            body.append(
                f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                f'fill="{_shade(share, i == j)}"><title>true {escape(truth)}, predicted '
                f"{escape(labels[j])}: {_fmt(v)} ({share * 100:.1f}%)</title></rect>"
            )
    return _svg(size, top + cell * n + 4, label, body)


def _shade(share: float, diagonal: bool) -> str:
    """White to blue (diagonal) or white to red (errors; small shares made visible)."""
    if diagonal:
        base = (29, 78, 216)
        t = share
    else:
        base = (190, 18, 60)
        t = min(1.0, math.sqrt(share * 4)) if share > 0 else 0.0
    r, g, b = (round(255 + (c - 255) * t) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def _axis_y(left: int, top: int, plot_w: float, plot_h: float, vmax: float) -> list[str]:
    out = []
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID}"/><text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT} '
            f'fill="{INK}">{_fmt(vmax * frac)}</text>'
        )
    return out


def _legend(names: Sequence[str], x: int, y: int, colours: Sequence[str] = SERIES) -> list[str]:
    out = []
    for k, name in enumerate(names):
        cx = x + k * 120
        out.append(
            f'<rect x="{cx}" y="{y - 9}" width="10" height="10" fill="{colours[k % len(colours)]}"/>'
            f'<text x="{cx + 14}" y="{y}" {FONT} fill="{INK}">{escape(name)}</text>'
        )
    return out


__all__ = ["bars", "columns", "confusion", "dots", "timeline"]
