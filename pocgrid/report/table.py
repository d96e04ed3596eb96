"""The evaluation in the terminal: one row per chip, and vLLM's result block per chip.

Rendered with rich (tables that fit the terminal's width, colour only on a terminal). The
per-chip block keeps the labels and order of ``vllm bench serve``'s "Serving Benchmark Result",
so a user can read a prediction beside a real run line by line.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from pocgrid.report.document import (
    Doc,
    by_scenario,
    cost_value,
    fmt,
    kind,
    number,
    recommendation,
    results,
    runnable,
    stat,
    verdict,
)


def summary_table(items: list[Doc], title: str = "") -> Table:
    llm = any(kind(r) == "llm" for r in items)
    table = Table(title=title or None, title_justify="left", header_style="bold")
    columns = [
        ("chip", "left"),
        ("dev", "right"),
        ("prec", "left"),
        ("req/s", "right"),
    ]
    if llm:
        columns += [("out tok/s", "right"), ("TTFT p99 ms", "right"), ("TPOT p99 ms", "right")]
    columns += [
        ("E2EL p99 ms", "right"),
        ("goodput", "right"),
        ("accuracy", "right"),
        ("cost", "right"),
        ("energy Wh", "right"),
        ("SLO", "left"),
        ("verdict", "left"),
    ]
    for name, justify in columns:
        # The chip names the row: never wrapped or cut; the figures give way first.
        table.add_column(name, justify=justify, no_wrap=name == "chip")  # type: ignore[arg-type]
    for r in items:
        chip = str(r.get("chip") or "?")
        if not runnable(r):
            # The reason is long; it is printed under the table (reasons()), not squeezed
            # into a column.
            cells: list[str | Text] = [chip, str(r.get("devices") or "-")]
            cells += ["-"] * (len(columns) - 3)
            cells.append(Text("cannot run", style="yellow"))
            table.add_row(*cells)
            continue
        accuracy = number(r.get("accuracy"))
        cost, _unit = cost_value(r)
        met = r.get("slo_met")
        row: list[str | Text] = [
            chip,
            str(r.get("devices") or "-"),
            str(r.get("precision") or "-"),
            fmt(number(r.get("request_throughput"))),
        ]
        if llm:
            row += [
                fmt(number(r.get("output_tokens_per_s")), 1),
                fmt(stat(r, "ttft_ms", "p99"), 1),
                fmt(stat(r, "tpot_ms", "p99"), 2),
            ]
        row += [
            fmt(stat(r, "e2el_ms", "p99"), 1),
            fmt(number(r.get("goodput"))),
            "-" if accuracy is None else f"{accuracy:.4f}",
            fmt(cost, 4 if cost is not None and cost < 1 else 2),
            fmt(number(r.get("energy_wh")), 3),
            Text("met", style="green") if met else Text("missed", style="red"),
            Text(verdict(r), style="green" if verdict(r) == "VALID" else "red"),
        ]
        table.add_row(*row)
    return table


_STAT_LABELS = (("mean", "Mean"), ("median", "Median"), ("p90", "P90"), ("p99", "P99"))


def reasons(items: list[Doc]) -> str:
    """Why each chip that could not run the scenario could not: reported, never dropped."""
    return "\n".join(
        f"  {r.get('chip')}: cannot run - {r.get('reason') or 'no reason given'}"
        for r in items
        if not runnable(r)
    )


def vllm_block(r: Doc) -> str:
    """One chip's figures under ``vllm bench serve``'s labels (the "Serving Benchmark Result"
    block), with the chip, precision and software-stack profile on top."""
    width = 50
    head = f" {r.get('chip')} "
    if runnable(r):
        head = f" {r.get('chip')} x{r.get('devices')} {r.get('precision')} ({r.get('profile')}) "
    lines = [head.center(width, "=")]

    def line(label: str, value: float | int | str | None, digits: int = 2) -> None:
        shown = fmt(float(value), digits) if isinstance(value, int | float) else str(value or "-")
        lines.append(f"{label:<40} {shown:<10}")

    if not runnable(r):
        line("Cannot run:", str(r.get("reason") or "-"))
        lines.append("=" * width)
        return "\n".join(lines)
    line("Successful requests:", r.get("measured_requests") or r.get("requests"), 0)
    line("Benchmark duration (s):", number(r.get("duration_s")))
    line("Request throughput (req/s):", number(r.get("request_throughput")))
    line("Request goodput (req/s):", number(r.get("goodput")))
    if kind(r) == "llm":
        line("Output token throughput (tok/s):", number(r.get("output_tokens_per_s")))
        line("Total Token throughput (tok/s):", number(r.get("total_tokens_per_s")))
    sections = [("ttft_ms", "TTFT", "Time to First Token")]
    if kind(r) == "llm":
        sections += [
            ("tpot_ms", "TPOT", "Time per Output Token (excl. 1st token)"),
            ("itl_ms", "ITL", "Inter-token Latency"),
        ]
    sections.append(("e2el_ms", "E2EL", "End-to-end Latency"))
    for key, short, header in sections:
        lines.append(header.center(width, "-"))
        for which, label in (
            ("mean", "Mean"),
            ("median", "Median"),
            ("p90", "P90"),
            ("p99", "P99"),
        ):
            line(f"{label} {short} (ms):", stat(r, key, which))
    lines.append("pocgrid".center(width, "-"))
    accuracy = number(r.get("accuracy"))
    line("Accuracy:", "not measured" if accuracy is None else f"{accuracy:.4f}")
    cost, unit = cost_value(r)
    line(f"Cost ({unit or 'n/a'}):", cost, 4)
    line("Energy (Wh):", number(r.get("energy_wh")), 3)
    line("SLO met:", "yes" if r.get("slo_met") else "no")
    line("Verdict:", verdict(r))
    lines.append("=" * width)
    return "\n".join(lines)


def recommendation_text(doc: Doc) -> str:
    rec = recommendation(doc)
    if not rec:
        return "No recommendation: the evaluation has none."
    lines = []
    for key, label in (
        ("cheapest", "Cheapest chip meeting the SLO"),
        ("fastest", "Fastest chip"),
        ("best_domestic", "Best domestic chip"),
    ):
        chip = rec.get(key) or "none"
        reason = rec.get(f"{key}_reason") or ""
        lines.append(f"{label}: {chip}" + (f" - {reason}" if reason else ""))
    if rec.get("summary"):
        lines.append("")
        lines.append(str(rec["summary"]))
    return "\n".join(lines)


def console(stream: TextIO | None = None) -> Console:
    """A console for the report: the terminal's width on a terminal; wide (160 columns) in a
    pipe or a log, where rich would otherwise assume 80 and squeeze the table."""
    out = Console(file=stream or sys.stdout)
    return out if out.is_terminal else Console(file=stream or sys.stdout, width=160)


def render(doc: Doc, console: Console, *, detail: bool = False) -> None:
    """Print the evaluation: one table per scenario (an industry pack has several), the vLLM
    block per chip when ``detail``, then the recommendation."""
    parts: list[Table | str] = []
    for scenario, items in by_scenario(results(doc)).items():
        parts.append(summary_table(items, title=f"scenario {scenario}" if scenario else ""))
        why = reasons(items)
        if why:
            parts.append(why)
        if any(runnable(r) and number(r.get("accuracy")) is None for r in items):
            parts.append("  accuracy -: not measured (no weights of the model run here)")
        if detail:
            parts.extend(vllm_block(r) for r in items)
    console.print(Group(*parts))
    console.print()
    console.print(Text("Recommendation", style="bold"))
    console.print(recommendation_text(doc), highlight=False)
