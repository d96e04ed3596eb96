"""The adaptation matrix as one self-contained HTML page: a heatmap with per-cell explanations.

No network at view time: the styles, the script and the data are inline. Rows are models,
columns chips; a cell's colour is its verdict, its shade the throughput relative to the best
chip for that model (tokens/s for LLMs, samples/s otherwise); hovering shows the reason and
clicking shows the whole explanation with every pass's modelled gain. "Shade by" switches the
heatmap to one pass's modelled gain on every chip (also from the URL: ``#shade=PASS``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence

_COLOURS = {
    "runs_natively": (34, 139, 34),
    "runs_with_supplementation": (30, 110, 200),
    "needs_devices": (200, 140, 20),
    "does_not_fit": (190, 40, 40),
    "unsupported": (110, 110, 110),
}
_LABELS = {
    "runs_natively": "runs natively",
    "runs_with_supplementation": "runs with supplementation",
    "needs_devices": "needs N devices",
    "does_not_fit": "does not fit",
    "unsupported": "unsupported",
}


def _figure(cell: Mapping[str, object]) -> float | None:
    for key in ("output_tokens_per_s", "samples_per_s"):
        v = cell.get(key)
        if isinstance(v, int | float):
            return float(v)
    return None


def _short(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def matrix_html(cells: Sequence[Mapping[str, object]], seconds: float | None = None) -> str:
    models = list(dict.fromkeys(str(c["model"]) for c in cells))
    chips = list(dict.fromkeys(str(c["chip"]) for c in cells))
    by_key = {(str(c["model"]), str(c["chip"])): c for c in cells}
    best: dict[str, float] = {}
    for c in cells:
        f = _figure(c)
        if f is not None:
            best[str(c["model"])] = max(best.get(str(c["model"]), 0.0), f)
    head = "".join(f'<th class="chip"><div>{html.escape(ch)}</div></th>' for ch in chips)
    rows = []
    details: list[dict[str, object]] = []
    for m in models:
        tds = [f'<th class="model">{html.escape(m)}</th>']
        for ch in chips:
            found = by_key.get((m, ch))
            if found is None:
                tds.append("<td></td>")
                continue
            c = found
            verdict = str(c["verdict"])
            r, g, b = _COLOURS.get(verdict, (128, 128, 128))
            f = _figure(c)
            share = 0.35 + 0.65 * (f / best[m]) if f is not None and best.get(m) else 0.35
            unit = "tok/s" if c.get("output_tokens_per_s") is not None else "samples/s"
            text = _short(f) if f is not None else ("n/a" if verdict == "unsupported" else "-")
            title = f"{m} on {ch}: {_LABELS.get(verdict, verdict)}"
            if f is not None:
                title += f", {f:.0f} {unit}"
            if c.get("reason"):
                title += f" - {c['reason']}"
            idx = len(details)
            details.append(dict(c))
            tds.append(
                f'<td class="cell" data-i="{idx}" data-verdict="{verdict}"'
                f' style="background: rgba({r},{g},{b},{share:.2f})"'
                f' title="{html.escape(title, quote=True)}">{html.escape(text)}</td>'
            )
        rows.append("<tr>" + "".join(tds) + "</tr>")
    legend = "".join(
        f'<span class="key" style="background: rgb{_COLOURS[v]}"></span>{html.escape(label)}'
        for v, label in _LABELS.items()
    )
    pass_names = sorted(
        {str(n) for c in cells for n in dict(c.get("pass_gains") or {})}  # type: ignore[call-overload]
    )
    options = '<option value="">throughput</option>' + "".join(
        f'<option value="{html.escape(n, quote=True)}">gain of {html.escape(n)}</option>'
        for n in pass_names
    )
    data = json.dumps(details).replace("</", "<\\/")
    timing = "" if seconds is None else f" Computed in {seconds:.1f} s."
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>pocgrid adaptation matrix</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #222; }}
table {{ border-collapse: collapse; }}
th.chip {{ height: 120px; white-space: nowrap; vertical-align: bottom; }}
th.chip div {{ transform: rotate(-60deg); width: 28px; transform-origin: left bottom;
  margin-left: 20px; }}
th.model {{ text-align: right; padding-right: 8px; white-space: nowrap; font-weight: normal; }}
td.cell {{ width: 44px; height: 22px; text-align: center; color: #fff; cursor: pointer;
  border: 1px solid #fff; font-size: 11px; }}
td.cell.selected {{ outline: 2px solid #000; }}
.key {{ display: inline-block; width: 14px; height: 14px; margin: 0 4px 0 12px;
  vertical-align: middle; }}
#detail {{ margin-top: 12px; padding: 8px 12px; border: 1px solid #ccc; max-width: 1000px;
  white-space: pre-wrap; min-height: 40px; }}
</style></head>
<body>
<h1>Adaptation matrix</h1>
<p>{len(models)} models x {len(chips)} emulatable chips. Shade: throughput relative to the best
chip for the model. Hover a cell for the reason; click it for the full explanation.{timing}</p>
<p>{legend}</p>
<p><label>Shade by <select id="shade">{options}</select></label>
<span id="shade-note"></span></p>
<table id="matrix"><thead><tr><th></th>{head}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<div id="detail">Click a cell.</div>
<script>
window.addEventListener("error", (ev) => {{
  document.body.dataset.errors = (document.body.dataset.errors || "") + ev.message + ";";
}});
const cells = {data};
const detail = document.getElementById("detail");
document.getElementById("matrix").addEventListener("click", (ev) => {{
  const td = ev.target.closest("td.cell");
  if (!td) return;
  document.querySelectorAll("td.selected").forEach((e) => e.classList.remove("selected"));
  td.classList.add("selected");
  const c = cells[Number(td.dataset.i)];
  const reason = c.reason ? " (" + c.reason + ")" : "";
  const lines = [c.model + " on " + c.chip + ": " + c.verdict + reason];
  for (const k of ["precision", "devices", "tp", "replicas", "max_num_seqs", "batch",
                   "output_tokens_per_s", "samples_per_s"]) {{
    const v = c[k];
    if (v === null || v === undefined) continue;
    lines.push(k + ": " + (typeof v === "number" ? Math.round(v * 10) / 10 : v));
  }}
  if (c.passes.length) lines.push("passes applied: " + c.passes.join(", "));
  for (const [name, p] of Object.entries(c.pass_gains || {{}})) {{
    const g = p.gain === null ? "no figure" : "x" + p.gain.toFixed(2);
    const m = p.measured_gain ? ", measured here x" + p.measured_gain.toFixed(2) : "";
    lines.push("pass " + name + ": " + (p.applied ? "applied" : "not applied") + ", modelled "
      + g + m);
  }}
  for (const e of c.explanation || []) lines.push("- " + e);
  detail.textContent = lines.join("\\n");
}});
// Shade every cell by one pass's modelled gain (1.0 light, the largest gain full colour).
const tds = Array.from(document.querySelectorAll("td.cell"));
const original = tds.map((td) => [td.style.background, td.textContent]);
const shade = document.getElementById("shade");
function applyShade(name) {{
  let top = 1.0;
  for (const c of cells) {{
    const p = (c.pass_gains || {{}})[name];
    if (p && p.gain !== null && p.gain > top) top = p.gain;
  }}
  let shown = 0;
  tds.forEach((td, i) => {{
    if (!name) {{
      td.style.background = original[i][0];
      td.textContent = original[i][1];
      return;
    }}
    const p = (cells[Number(td.dataset.i)].pass_gains || {{}})[name];
    if (!p || p.gain === null) {{
      td.style.background = "rgba(110,110,110,0.25)";
      td.textContent = "-";
      return;
    }}
    const share = top > 1.0 ? 0.2 + 0.8 * Math.max(0, p.gain - 1.0) / (top - 1.0) : 0.2;
    td.style.background = (p.applied ? "rgba(20,120,60," : "rgba(120,60,160,")
      + share.toFixed(2) + ")";
    td.textContent = "x" + p.gain.toFixed(2);
    shown += 1;
  }});
  document.getElementById("shade-note").textContent = name
    ? " " + shown + " cells with a figure; green: applied, purple: not applied"
    : "";
  document.body.dataset.shade = name;
  document.body.dataset.shaded = String(shown);
}}
shade.addEventListener("change", () => applyShade(shade.value));
const asked = new URLSearchParams(location.hash.slice(1)).get("shade");
if (asked) {{
  shade.value = asked;
  applyShade(asked);
}}
// Read by the browser test: the script ran to the end and drew this many cells.
document.body.dataset.drawn = String(document.querySelectorAll("td.cell").length);
</script>
</body></html>
"""
