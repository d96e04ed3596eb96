"""Progress bars while an evaluation runs, fed by the ``WatchEvaluation`` stream.

Each message of the stream carries the evaluation now (its ``progress``: runs done of runs
total and what runs at the moment); ``follow`` takes those evaluations. On a terminal, rich
draws a bar with the elapsed time; in a pipe or a log a line is written each time a run
finishes, so the output stays short.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from pocgrid.v1 import evaluator_pb2


def follow(
    evaluations: Iterable[evaluator_pb2.Evaluation], stream: TextIO | None = None
) -> evaluator_pb2.Evaluation | None:
    """Show the progress of each evaluation update until the stream ends; returns the last
    one (None when the stream carried nothing)."""
    out = stream or sys.stderr
    console = Console(file=out)
    last: evaluator_pb2.Evaluation | None = None
    if not console.is_terminal:
        done = -1
        for last in evaluations:
            p = last.progress
            if p.runs_done != done:
                done = p.runs_done
                what = f" - {p.current}" if p.current else ""
                out.write(f"  {p.runs_done}/{p.runs_total} runs done{what}\n")
                out.flush()
        return last
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}"),
        console=console,
        transient=False,
    ) as bar:
        task = None
        for last in evaluations:
            p = last.progress
            if task is None:
                task = bar.add_task(
                    f"evaluation {last.evaluation_id}", total=p.runs_total or None, current=""
                )
            bar.update(
                task,
                total=p.runs_total or None,
                completed=p.runs_done,
                current=p.current or p.message,
            )
    return last
