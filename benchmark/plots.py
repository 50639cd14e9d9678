"""Small deterministic SVG scatter plots, written at build time (no plotting library, no fonts to embed)."""
from __future__ import annotations

from xml.sax.saxutils import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def scatter(points: list[tuple[float, float, str, str]], xlabel: str, ylabel: str, title: str,
            width: int = 460, height: int = 360, diagonal: bool = False) -> str:
    """points: (x in [0,1], y in [0,1], label, series). Series get colours in sorted order."""
    left, right, top, bottom = 56, 150, 34, 46
    pw, ph = width - left - right, height - top - bottom
    X = lambda v: left + v * pw  # noqa: E731
    Y = lambda v: top + (1 - v) * ph  # noqa: E731
    series = sorted({p[3] for p in points})
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(series)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="sans-serif" font-size="11" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>']
    for t in (0, 0.25, 0.5, 0.75, 1):
        out.append(f'<line x1="{X(t):.1f}" y1="{top + ph}" x2="{X(t):.1f}" y2="{top + ph + 4}" stroke="#999"/>')
        out.append(f'<text x="{X(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:.2f}</text>')
        out.append(f'<line x1="{left - 4}" y1="{Y(t):.1f}" x2="{left}" y2="{Y(t):.1f}" stroke="#999"/>')
        out.append(f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:.2f}</text>')
    if diagonal:
        out.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(1)}" y2="{Y(1)}" stroke="#ccc" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}</text>')
    for x, y, label, s in sorted(points, key=lambda p: (p[3], p[2], p[0], p[1])):
        x, y = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
        out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="4.5" fill="{colour[s]}" fill-opacity="0.8">'
                   f'<title>{escape(label)}: ({x:.3f}, {y:.3f})</title></circle>')
    for i, s in enumerate(series):
        y0 = top + 6 + 16 * i
        out.append(f'<circle cx="{left + pw + 14}" cy="{y0}" r="4.5" fill="{colour[s]}"/>')
        out.append(f'<text x="{left + pw + 24}" y="{y0 + 4}">{escape(s[:20])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
