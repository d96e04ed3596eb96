"""Charts as inline SVG, written in Python: line/scatter charts and bar charts.

Why not a JavaScript chart library: the report must open with no network, so a library would
be inlined into every file (plotly.js alone is ~4.6 MB); SVG drawn here needs no dependency,
renders with scripts disabled, prints, and gives the same bytes for the same evaluation, which
tests can check mark by mark (each series' marks carry ``data-series``). Tooltips are SVG
``<title>`` elements, which every browser shows on hover.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT = 640, 380
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 170, 36, 52

#: Twenty colours that stay apart on white (Tableau 20's order, dark shades first).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
)


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    colour: str
    tips: list[str] = field(default_factory=list)
    dashed: bool = False
    width: float = 2.0


@dataclass
class Bar:
    label: str
    value: float
    colour: str
    tip: str = ""
    group: str = ""


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 12))
    return ticks


def _label(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a >= 1:
        return f"{v:g}"
    return f"{v:.3g}"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _frame(
    chart_id: str, title: str, x_label: str, y_label: str, bottom: int = _BOTTOM
) -> list[str]:
    return [
        f'<svg class="chart" id="{_esc(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
        f'<text x="{_LEFT}" y="22" class="ct">{_esc(title)}</text>',
        f'<text x="{_LEFT + (WIDTH - _LEFT - _RIGHT) / 2}" y="{HEIGHT - 10}" '
        f'text-anchor="middle" class="al">{_esc(x_label)}</text>',
        f'<text transform="translate(16 {_TOP + (HEIGHT - _TOP - bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle" class="al">{_esc(y_label)}</text>',
    ]


def line_chart(
    chart_id: str,
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Series],
    *,
    hline: tuple[float, str] | None = None,
    markers: bool = True,
) -> str:
    """Lines through each series' points (a single point is a marker), an optional horizontal
    reference line (an SLO bound), and a legend on the right."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return _empty(chart_id, title, "no data points to draw")
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + ([hline[0]] if hline else [])
    xt = nice_ticks(min(0.0, min(xs)), max(xs))
    yt = nice_ticks(min(0.0, min(ys)), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return _TOP + ph - (y - y0) / (y1 - y0) * ph

    out = _frame(chart_id, title, x_label, y_label)
    out += _axes(xt, yt, sx, sy)
    if hline is not None:
        y = sy(hline[0])
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c00" '
            f'stroke-dasharray="6 4" stroke-width="1.5" class="ref"/>'
            f'<text x="{_LEFT + pw - 4}" y="{y - 4:.1f}" text-anchor="end" class="rl">'
            f"{_esc(hline[1])}</text>"
        )
    for s in series:
        if not s.points:
            continue
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        if len(s.points) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
            out.append(
                f'<polyline class="mark" data-series="{_esc(s.name)}" points="{path}" '
                f'fill="none" stroke="{s.colour}" stroke-width="{s.width}"{dash}/>'
            )
        if markers or len(s.points) == 1:
            for i, (x, y) in enumerate(s.points):
                tip = s.tips[i] if i < len(s.tips) else f"{s.name}: ({_label(x)}, {_label(y)})"
                out.append(
                    f'<circle class="mark" data-series="{_esc(s.name)}" cx="{sx(x):.1f}" '
                    f'cy="{sy(y):.1f}" r="4" fill="{s.colour}"><title>{_esc(tip)}</title>'
                    "</circle>"
                )
    out += _legend([(s.name, s.colour, s.dashed) for s in series if s.points])
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(
    chart_id: str,
    title: str,
    y_label: str,
    bars: Sequence[Bar],
    *,
    legend: Sequence[tuple[str, str]] = (),
) -> str:
    """Vertical bars in the given order, labelled below; bars of one ``group`` stand together
    with a gap between groups and the group's name under them."""
    if not bars:
        return _empty(chart_id, title, "no figures to draw")
    yt = nice_ticks(0.0, max(b.value for b in bars))
    y0, y1 = yt[0], yt[-1]
    # Rotated chip names need more room below than numeric ticks.
    bottom = 96
    pw, ph = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - bottom
    groups = list(dict.fromkeys(b.group for b in bars))
    slots = len(bars) + max(0, len(groups) - 1)
    slot = min(56.0, pw / max(1, slots))

    def sy(y: float) -> float:
        return _TOP + ph - (y - y0) / (y1 - y0) * ph

    out = _frame(chart_id, title, "", y_label, bottom)
    out += _axes([], yt, lambda x: x, sy, bottom)
    i = 0
    for g in groups:
        members = [b for b in bars if b.group == g]
        start = i
        for b in members:
            x = _LEFT + i * slot + slot * 0.1
            top = sy(max(0.0, b.value))
            out.append(
                f'<rect class="mark" data-series="{_esc(b.label)}" x="{x:.1f}" y="{top:.1f}" '
                f'width="{slot * 0.8:.1f}" height="{max(0.5, sy(0) - top):.1f}" '
                f'fill="{b.colour}"><title>{_esc(b.tip or f"{b.label}: {b.value:g}")}</title>'
                "</rect>"
            )
            if not g or len(bars) <= 24:
                cx = x + slot * 0.4
                out.append(
                    f'<text transform="translate({cx:.1f} {_TOP + ph + 8}) rotate(45)" '
                    f'class="bl">{_esc(b.label[:20])}</text>'
                )
            i += 1
        if g:
            mid = _LEFT + (start + (i - start) / 2) * slot
            out.append(
                f'<text x="{mid:.1f}" y="{_TOP - 4}" text-anchor="middle" class="gl">'
                f"{_esc(g)}</text>"
            )
        i += 1
    out += _legend([(name, colour, False) for name, colour in legend])
    out.append("</svg>")
    return "\n".join(out)


def _axes(
    xt: Sequence[float],
    yt: Sequence[float],
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    bottom: int = _BOTTOM,
) -> list[str]:
    pw, ph = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - bottom
    out = [
        f'<line x1="{_LEFT}" y1="{_TOP + ph}" x2="{_LEFT + pw}" y2="{_TOP + ph}" stroke="#333"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + ph}" stroke="#333"/>',
    ]
    for t in yt:
        y = sy(t)
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tk">{_label(t)}</text>'
        )
    for t in xt:
        x = sx(t)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP + ph}" y2="{_TOP + ph + 4}" stroke="#333"/>'
            f'<text x="{x:.1f}" y="{_TOP + ph + 18}" text-anchor="middle" class="tk">'
            f"{_label(t)}</text>"
        )
    return out


def _legend(entries: Sequence[tuple[str, str, bool]]) -> list[str]:
    out = []
    x = WIDTH - _RIGHT + 14
    rows = max(1, (HEIGHT - _TOP - 10) // 15)
    for i, (name, colour, dashed) in enumerate(entries[:rows]):
        y = _TOP + 8 + i * 15
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(
            f'<line x1="{x}" x2="{x + 18}" y1="{y}" y2="{y}" stroke="{colour}" '
            f'stroke-width="3"{dash}/><text x="{x + 24}" y="{y + 4}" class="lg">'
            f"{_esc(name[:22])}</text>"
        )
    if len(entries) > rows:
        out.append(
            f'<text x="{x}" y="{_TOP + 8 + rows * 15}" class="lg">'
            f"+{len(entries) - rows} more</text>"
        )
    return out


def _empty(chart_id: str, title: str, why: str) -> str:
    return "\n".join(
        [
            *_frame(chart_id, title, "", ""),
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="al">'
            f"{_esc(why)}</text>",
            "</svg>",
        ]
    )
