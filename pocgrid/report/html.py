"""The evaluation as one self-contained HTML page: recommendation, tables and charts.

Nothing is fetched at view time: styles, charts (inline SVG, see ``svg.py``) and the small
script are in the file. Per scenario (an industry pack has several) it draws the
latency-throughput curve of each chip, the Pareto curves of throughput per device against
tokens/s per user with the frontier across chips, cost against the SLO, and accuracy per
precision. The script only checks the page: it counts the chart marks the browser laid out
(``data-drawn`` on ``<body>``) and records script errors (``data-errors``), which the
headless-Chromium test reads.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pocgrid.report.document import (
    Doc,
    by_scenario,
    chips,
    cost_value,
    curve,
    fmt,
    kind,
    number,
    recommendation,
    results,
    runnable,
    stat,
    verdict,
)
from pocgrid.report.svg import PALETTE, Bar, Series, bar_chart, line_chart

_MET, _MISSED = "#2ca02c", "#d62728"


def _esc(v: object) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _colours(items: Sequence[Doc]) -> dict[str, str]:
    return {chip: PALETTE[i % len(PALETTE)] for i, chip in enumerate(chips(items))}


def _namer(items: Sequence[Doc]) -> Callable[[Doc], str]:
    """A result's name in a legend: its chip, with the precision when the chip appears with
    several precisions in the same scenario."""
    seen: dict[str, int] = {}
    for r in items:
        seen[str(r.get("chip"))] = seen.get(str(r.get("chip")), 0) + 1

    def name(r: Doc) -> str:
        chip = str(r.get("chip"))
        return f"{chip} {r.get('precision')}" if seen[chip] > 1 else chip

    return name


def _slo(r: Doc, doc: Doc) -> Mapping[str, Any]:
    """The bounds a result was judged by: its own, else the evaluation's; a pack's components
    each have their own, so a pack's evaluation-wide SLO is not drawn on a component."""
    own = r.get("slo")
    if isinstance(own, Mapping):
        return own
    whole = doc.get("slo")
    if isinstance(whole, Mapping) and doc.get("scenario_kind") != "pack":
        return whole
    return {}


def _load_points(r: Doc) -> list[tuple[float, float, str]]:
    """(throughput, p99 latency, tooltip) per load point: the sweep's points, or the run's one
    point. LLMs: output tokens/s against p99 TTFT; sample scenarios: requests/s against p99
    end-to-end latency."""
    llm = kind(r) == "llm"
    points: list[tuple[float, float, str]] = []
    for p in curve(r):
        x = number(p.get("output_tokens_per_s") if llm else p.get("qps"))
        y = number(p.get("ttft_p99_ms") if llm else p.get("e2el_p99_ms"))
        if x is not None and y is not None:
            load = f"concurrency {p.get('concurrency')}" if p.get("concurrency") else "rate"
            points.append((x, y, f"{r.get('chip')} at {load}: {fmt(x, 1)} -> p99 {fmt(y, 1)} ms"))
    if not points:
        x = number(r.get("output_tokens_per_s") if llm else r.get("request_throughput"))
        y = stat(r, "ttft_ms" if llm else "e2el_ms", "p99")
        if x is not None and y is not None:
            points.append((x, y, f"{r.get('chip')}: {fmt(x, 1)} -> p99 {fmt(y, 1)} ms"))
    return points


def _pareto_points(r: Doc) -> list[tuple[float, float, str]]:
    """(tokens/s per user, tokens/s per device) per load point."""
    points: list[tuple[float, float, str]] = []
    for p in curve(r):
        x = number(p.get("output_tokens_per_s_per_user"))
        y = number(p.get("output_tokens_per_s_per_device"))
        if x is not None and y is not None:
            points.append(
                (
                    x,
                    y,
                    f"{r.get('chip')} at concurrency {p.get('concurrency')}: {fmt(x, 1)} "
                    f"tok/s per user, {fmt(y, 1)} tok/s per device",
                )
            )
    if not points:
        tpot = stat(r, "tpot_ms", "median")
        tokens = number(r.get("output_tokens_per_s"))
        devices = number(r.get("devices")) or 1.0
        if tpot and tokens is not None:
            x, y = 1000.0 / tpot, tokens / devices
            points.append(
                (x, y, f"{r.get('chip')}: {fmt(x, 1)} tok/s per user, {fmt(y, 1)} tok/s per device")
            )
    return sorted(points)


def frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on each), by x."""
    best: list[tuple[float, float]] = []
    top = float("-inf")
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > top:
            best.append((x, y))
            top = y
    return sorted(best)


def _charts(scenario: str, items: Sequence[Doc], doc: Doc, index: int) -> list[str]:
    ran = [r for r in items if runnable(r)]
    colours = _colours(items)
    llm = any(kind(r) == "llm" for r in ran)
    slo = _slo(ran[0], doc) if ran else {}
    name = _namer(ran)
    out = []
    series = []
    for r in ran:
        pts = _load_points(r)
        series.append(
            Series(
                name(r),
                [(x, y) for x, y, _ in pts],
                colours[str(r.get("chip"))],
                [t for *_, t in pts],
                dashed=not r.get("domestic", True),
            )
        )
    bound = number(slo.get("ttft_p99_ms" if llm else "e2el_p99_ms"))
    out.append(
        line_chart(
            f"latency-{index}",
            f"{scenario}: latency against throughput, per chip",
            "output tokens/s (deployment)" if llm else "requests/s",
            "p99 TTFT (ms)" if llm else "p99 end-to-end latency (ms)",
            series,
            hline=(bound, f"SLO p99 {'TTFT' if llm else 'latency'} {fmt(bound, 0)} ms")
            if bound
            else None,
        )
    )
    if llm:
        pareto = []
        every: list[tuple[float, float]] = []
        for r in ran:
            pts = _pareto_points(r)
            every += [(x, y) for x, y, _ in pts]
            pareto.append(
                Series(
                    name(r),
                    [(x, y) for x, y, _ in pts],
                    colours[str(r.get("chip"))],
                    [t for *_, t in pts],
                    dashed=not r.get("domestic", True),
                )
            )
        if every:
            # Drawn first, wide and grey, so each chip's own curve stays visible on top of it.
            pareto.insert(0, Series("Pareto frontier", frontier(every), "#bbbbbb", width=7.0))
        out.append(
            line_chart(
                f"pareto-{index}",
                f"{scenario}: throughput per device against interactivity",
                "output tokens/s per user (1000 / median TPOT)",
                "output tokens/s per device",
                pareto,
            )
        )
    bars = []
    for r in sorted(ran, key=lambda r: cost_value(r)[0] or float("inf")):
        cost, unit = cost_value(r)
        if cost is None:
            continue
        met = bool(r.get("slo_met"))
        bars.append(
            Bar(
                name(r),
                cost,
                _MET if met else _MISSED,
                f"{r.get('chip')}: {fmt(cost, 4)} {unit}, SLO {'met' if met else 'missed'}",
            )
        )
    unit = next((cost_value(r)[1] for r in ran if cost_value(r)[0] is not None), "")
    out.append(
        bar_chart(
            f"cost-{index}",
            f"{scenario}: cost, coloured by whether the SLO is met",
            f"cost {unit}".strip(),
            bars,
            legend=[("SLO met", _MET), ("SLO missed", _MISSED)],
        )
    )
    acc = []
    for r in sorted(ran, key=lambda r: (str(r.get("precision")), str(r.get("chip")))):
        a = number(r.get("accuracy"))
        if a is None:
            continue
        chip = str(r.get("chip"))
        acc.append(
            Bar(
                chip,
                a,
                colours[chip],
                f"{chip} {r.get('precision')}: accuracy {a:.4f}",
                group=str(r.get("precision") or "?"),
            )
        )
    if acc:
        out.append(
            bar_chart(
                f"accuracy-{index}",
                f"{scenario}: measured accuracy per precision",
                "accuracy",
                acc,
            )
        )
    else:
        out.append(
            '<p class="note">Accuracy was not measured for this scenario: no weights of its '
            "model run here, so no figure is shown rather than an invented one.</p>"
        )
    return out


def _table(items: Sequence[Doc]) -> str:
    llm = any(kind(r) == "llm" for r in items)
    head = ["chip", "devices", "precision", "profile", "req/s"]
    if llm:
        head += ["out tok/s", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "ITL p99 ms"]
    head += ["E2EL p50/p99 ms", "goodput", "accuracy", "cost", "energy Wh", "SLO", "verdict"]
    rows = []
    for r in items:
        chip = _esc(r.get("chip"))
        if not runnable(r):
            rows.append(
                f'<tr class="cannot"><td>{chip}</td><td>{_esc(r.get("devices") or "-")}</td>'
                f'<td colspan="{len(head) - 2}">cannot run: {_esc(r.get("reason"))}</td></tr>'
            )
            continue
        cost, unit = cost_value(r)
        acc = number(r.get("accuracy"))
        cells = [
            chip,
            _esc(r.get("devices")),
            _esc(r.get("precision")),
            _esc(r.get("profile")),
            fmt(number(r.get("request_throughput"))),
        ]
        if llm:
            cells += [
                fmt(number(r.get("output_tokens_per_s")), 1),
                f"{fmt(stat(r, 'ttft_ms', 'median'), 1)} / {fmt(stat(r, 'ttft_ms', 'p99'), 1)}",
                f"{fmt(stat(r, 'tpot_ms', 'median'))} / {fmt(stat(r, 'tpot_ms', 'p99'))}",
                fmt(stat(r, "itl_ms", "p99")),
            ]
        met = bool(r.get("slo_met"))
        cells += [
            f"{fmt(stat(r, 'e2el_ms', 'median'), 1)} / {fmt(stat(r, 'e2el_ms', 'p99'), 1)}",
            fmt(number(r.get("goodput"))),
            '<span title="not measured">-</span>' if acc is None else f"{acc:.4f}",
            f'<span title="{_esc(unit)}">{fmt(cost, 4)}</span>',
            fmt(number(r.get("energy_wh")), 3),
            f'<span class="{"ok" if met else "bad"}">{"met" if met else "missed"}</span>',
            _esc(verdict(r)),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _recommendation(doc: Doc) -> str:
    rec = recommendation(doc)
    cards = []
    for key, label in (
        ("cheapest", "Cheapest chip meeting the SLO"),
        ("fastest", "Fastest chip"),
        ("best_domestic", "Best domestic chip"),
    ):
        chip = rec.get(key) or ""
        reason = rec.get(f"{key}_reason") or ("" if chip else "no chip qualifies")
        cards.append(
            f'<div class="card" data-pick="{_esc(key)}"><div class="pl">{_esc(label)}</div>'
            f'<div class="pc">{_esc(chip or "none")}</div><div class="pr">{_esc(reason)}</div>'
            "</div>"
        )
    summary = rec.get("summary") or ""
    return (
        '<section id="recommendation"><h2>Recommendation</h2>'
        f'<p class="summary">{_esc(summary)}</p><div class="cards">{"".join(cards)}</div>'
        "</section>"
    )


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}h3{font-size:16px}
.meta{color:#555}.note{color:#555;font-style:italic}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left;white-space:nowrap}
tr.cannot td{color:#8a6d00;text-align:left}
.ok{color:#1a7f1a;font-weight:600}.bad{color:#c00;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ccc;border-radius:6px;
padding:10px 14px;min-width:220px;max-width:380px}.pl{color:#555;font-size:12px}
.pc{font-size:18px;font-weight:600}.pr{font-size:13px}.summary{max-width:900px}
.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{border:1px solid #eee}svg .ct{font-size:14px;font-weight:600}
svg .al{font-size:12px;fill:#333}svg .tk,svg .bl,svg .lg,svg .rl,svg .gl{font-size:11px}
svg .rl{fill:#c00}
"""

_SCRIPT = """
window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push(String(e.message));
document.body.setAttribute('data-errors',window.__errors.join(' | '));});
window.addEventListener('load',function(){var n=0;
document.querySelectorAll('svg.chart .mark').forEach(function(m){var b=m.getBBox();
if(b.width>0||b.height>0){n++;}});
document.body.setAttribute('data-drawn',String(n));
document.body.setAttribute('data-charts',String(document.querySelectorAll('svg.chart').length));
});
"""


def count_marks(page: str) -> int:
    """How many chart marks (lines, points, bars) the page holds; the browser test compares the
    number the browser laid out with this."""
    return page.count('class="mark"')


def report_html(doc: Doc, *more: Doc, title: str = "") -> str:
    """The page for ``doc`` (its recommendation on top); ``more`` evaluations (e.g. a
    concurrency sweep run beside it) add their sections below, each under its own heading."""
    items = results(doc)
    scenario = doc.get("scenario") or next((r.get("scenario") for r in items), "") or ""
    heading = title or f"pocgrid evaluation: {scenario}"
    meta = [
        f"evaluation {doc.get('evaluation_id')}" if doc.get("evaluation_id") else "",
        f"model {doc.get('model')}" if doc.get("model") else "",
        f"{len(chips(items))} chip types",
        "figures on the agents' virtual clock (performance model); each row names its "
        "software-stack profile",
    ]
    sections = []
    index = 0
    for n, d in enumerate((doc, *more)):
        mode = f" ({d.get('mode')} mode)" if d.get("mode") else ""
        if n:
            sections.append(
                f'<h2 class="more">Evaluation {_esc(d.get("evaluation_id") or n + 1)}: '
                f"{_esc(d.get('scenario'))}{_esc(mode)}</h2>"
            )
        for name, group in by_scenario(results(d)).items():
            label = name or str(d.get("scenario") or scenario)
            sections.append(
                f'<section class="scenario" data-scenario="{_esc(name)}">'
                f"<h2>Scenario {_esc(label)}{_esc(mode)}</h2>{_table(group)}"
                f'<div class="charts">{"".join(_charts(label, group, d, index))}</div>'
                "</section>"
            )
            index += 1
    data = json.dumps([doc, *more], sort_keys=True).replace("</", "<\\/")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(heading)}</title><style>{_STYLE}</style>"
        f"<script>{_SCRIPT}</script></head><body>"
        f"<h1>{_esc(heading)}</h1>"
        f'<p class="meta">{_esc(" · ".join(m for m in meta if m))}</p>'
        f"{_recommendation(doc)}{''.join(sections)}"
        f'<script type="application/json" id="evaluations">{data}</script>'
        "</body></html>\n"
    )
