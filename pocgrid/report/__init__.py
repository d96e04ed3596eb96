"""Reports of an evaluation: the terminal table, JSON, the self-contained HTML page with its
charts, and vLLM-format result files. All render from the evaluation document (the JSON of
``pocgrid eval run --json``), so a stored evaluation and a fresh run give the same reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pocgrid.report.document import Doc
from pocgrid.report.html import report_html
from pocgrid.report.vllm import write_vllm_results

__all__ = ["write_report"]


def write_report(
    doc: Doc, directory: Path, *, vllm: bool = False, more: Sequence[Doc] = ()
) -> list[Path]:
    """``report.html`` and ``evaluation.json`` in ``directory`` (created), and with ``vllm``
    one vLLM result file per chip under ``directory/vllm``; returns the paths written. ``more``
    evaluations are drawn in the same page, below, and kept as ``evaluation-2.json``, ..."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / "report.html"
    page.write_text(report_html(doc, *more), encoding="utf-8")
    written = [page]
    for n, d in enumerate((doc, *more)):
        data = directory / ("evaluation.json" if n == 0 else f"evaluation-{n + 1}.json")
        data.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
        written.append(data)
    if vllm:
        written += write_vllm_results(doc, directory / "vllm")
    return written
