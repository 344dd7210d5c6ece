"""Hand-written SVG charts (line, scatter, horizontal bars) for self-contained HTML reports.

No plotting library: a chart is a string of SVG, deterministic for the same data. Infinite values
(identical outputs) are drawn at the top of the axis with an "inf" mark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
W, H = 600, 280
ML, MR, MT, MB = 58, 16, 30, 42


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out = []
    v = start
    while v <= hi + 1e-9 * step:
        out.append(round(v, 12))
        v += step
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.6g}"


class _Axes:
    def __init__(
        self, xs: Sequence[float], ys: Sequence[float], log_x: bool = False, int_x: bool = False
    ) -> None:
        self.log_x, self.int_x = log_x, int_x
        fx = [self._tx(x) for x in xs if x is not None and math.isfinite(x) and (not log_x or x > 0)]
        fy = [y for y in ys if y is not None and math.isfinite(y)]
        self.has_inf = any(y is not None and math.isinf(y) and y > 0 for y in ys)
        self.x0, self.x1 = (min(fx), max(fx)) if fx else (0.0, 1.0)
        self.y0, self.y1 = (min(fy), max(fy)) if fy else (0.0, 1.0)
        if self.x1 == self.x0:
            d = 0.5 if int_x or self.x0 == 0 else abs(self.x0) * 0.25
            self.x0, self.x1 = self.x0 - d, self.x1 + d
        span = max(self.y1 - self.y0, 0.01 * max(abs(self.y0), abs(self.y1)), 1e-9)
        mid = (self.y0 + self.y1) / 2
        self.y0, self.y1 = min(self.y0, mid - span / 2), max(self.y1, mid + span / 2)
        pad = span * 0.08
        self.y0, self.y1 = self.y0 - pad, self.y1 + pad * (3 if self.has_inf else 1)
        self.inf_y = self.y1 - pad

    def _tx(self, x: float) -> float:
        return math.log10(x) if self.log_x else x

    def px(self, x: float) -> float:
        return ML + (self._tx(x) - self.x0) / (self.x1 - self.x0) * (W - ML - MR)

    def py(self, y: float) -> float:
        if math.isinf(y):
            y = self.inf_y if y > 0 else self.y0
        return H - MB - (y - self.y0) / (self.y1 - self.y0) * (H - MT - MB)

    def frame(self, title: str, xlabel: str, ylabel: str) -> list[str]:
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'font-family="sans-serif" font-size="11" role="img" aria-label="{escape(title)}">',
            f'<rect width="{W}" height="{H}" fill="#fff"/>',
            f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
            f'<line x1="{ML}" y1="{H - MB}" x2="{W - MR}" y2="{H - MB}" stroke="#333"/>',
            f'<line x1="{ML}" y1="{MT}" x2="{ML}" y2="{H - MB}" stroke="#333"/>',
            f'<text x="{(ML + W - MR) / 2}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>',
            f'<text x="14" y="{(MT + H - MB) / 2}" text-anchor="middle" transform="rotate(-90 14 {(MT + H - MB) / 2})">'
            f"{escape(ylabel)}</text>",
        ]
        for t in _nice_ticks(self.y0, self.y1):
            if self.has_inf and t > self.inf_y - (self.y1 - self.y0) * 0.05:
                continue
            y = self.py(t)
            out.append(f'<line x1="{ML - 4}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        if self.has_inf:
            y = self.py(math.inf)
            out.append(
                f'<line x1="{ML - 4}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" stroke="#ccc" stroke-dasharray="4 3"/>'
            )
            out.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">inf</text>')
        if self.log_x:
            ticks = [10**e for e in range(math.floor(self.x0), math.ceil(self.x1) + 1)]
            ticks = [t for t in ticks if self.x0 <= math.log10(t) <= self.x1] or [10**self.x0, 10**self.x1]
        else:
            ticks = _nice_ticks(self.x0, self.x1)
            if self.int_x:
                ticks = [t for t in ticks if float(t).is_integer()]
        for t in ticks:
            x = self.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{H - MB}" x2="{x:.1f}" y2="{H - MB + 4}" stroke="#333"/>')
            out.append(f'<text x="{x:.1f}" y="{H - MB + 16}" text-anchor="middle">{_fmt(t)}</text>')
        return out


def _legend(labels: Sequence[str]) -> list[str]:
    out = []
    for i, lab in enumerate(labels[:10]):
        y = MT + 6 + 14 * i
        out.append(f'<rect x="{W - MR - 190}" y="{y - 8}" width="10" height="10" fill="{color(i)}"/>')
        out.append(f'<text x="{W - MR - 176}" y="{y + 1}">{escape(lab[:32])}</text>')
    return out


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> str:
    """One polyline per (label, xs, ys); ``None`` values break nothing, they are skipped."""
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if y is not None]
    ax = _Axes(xs, ys)
    out = ax.frame(title, xlabel, ylabel)
    for i, (_, sx, sy) in enumerate(series):
        pts = [(ax.px(x), ax.py(y)) for x, y in zip(sx, sy) if y is not None and not math.isnan(y)]
        if len(pts) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color(i)}" stroke-width="1.8"/>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{color(i)}"/>')
    out += _legend([lab for lab, _, _ in series])
    out.append("</svg>")
    return "\n".join(out)


def scatter(
    points: Sequence[tuple[str, float, float | None, int]],
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    legend: Sequence[str] = (),
) -> str:
    """Labelled points (label, x, y, colour index); ``legend`` names the colours in index order;
    ``log_x`` for size ratios spanning decades."""
    pts = [p for p in points if p[2] is not None and p[1] is not None and math.isfinite(p[1])]
    ax = _Axes([p[1] for p in pts], [p[2] for p in pts], log_x=log_x)
    out = ax.frame(title, xlabel, ylabel)
    for label, x, y, ci in pts:
        cx, cy = ax.px(x), ax.py(y)  # type: ignore[arg-type]
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color(ci)}" fill-opacity="0.85"/>')
        out.append(f'<text x="{cx + 6:.1f}" y="{cy - 5:.1f}" font-size="9">{escape(label[:28])}</text>')
    for i, name in enumerate(legend[:10]):
        y = H - MB - 12 - 14 * (len(legend[:10]) - 1 - i)
        out.append(f'<rect x="{W - MR - 150}" y="{y - 8}" width="10" height="10" fill="{color(i)}"/>')
        out.append(f'<text x="{W - MR - 136}" y="{y + 1}">{escape(name[:24])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def hbars(rows: Sequence[tuple[str, float]], title: str, xlabel: str, highlight: int = 0) -> str:
    """Horizontal bars (label, value), first ``highlight`` rows in red; infinite values are clipped."""
    n = max(len(rows), 1)
    h = MT + 16 * n + 40
    finite = [v for _, v in rows if math.isfinite(v)]
    hi = max(finite) if finite else 1.0
    lo = min(0.0, min(finite)) if finite else 0.0
    left = 300
    width = W + 200 - left - MR
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W + 200} {h}" width="{W + 200}" height="{h}" '
        f'font-family="sans-serif" font-size="10" role="img" aria-label="{escape(title)}">',
        f'<rect width="{W + 200}" height="{h}" fill="#fff"/>',
        f'<text x="{(W + 200) / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<text x="{left + width / 2}" y="{h - 8}" text-anchor="middle">{escape(xlabel)}</text>',
    ]
    for i, (label, v) in enumerate(rows):
        y = MT + 16 * i
        vv = hi if not math.isfinite(v) else v
        x0 = left + (0 - lo) / ((hi - lo) or 1) * width
        x1 = left + (vv - lo) / ((hi - lo) or 1) * width
        fill = "#d62728" if i < highlight else "#1f77b4"
        out.append(
            f'<rect x="{min(x0, x1):.1f}" y="{y}" width="{abs(x1 - x0):.1f}" height="12" fill="{fill}"/>'
        )
        out.append(f'<text x="{left - 6}" y="{y + 10}" text-anchor="end">{escape(label[-48:])}</text>')
        out.append(
            f'<text x="{max(x0, x1) + 4:.1f}" y="{y + 10}">{_fmt(v) if math.isfinite(v) else "inf"}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
