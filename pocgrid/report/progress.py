"""Progress bars while an evaluation runs, fed by the ``WatchEvaluation`` stream.

Each message of the stream is the evaluation now (its ``progress``: runs done of runs total and
what runs at the moment). On a terminal, rich draws a bar with the elapsed time; in a pipe or a
log a line is written each time a run finishes, so the output stays short.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


class _Progress(Protocol):
    runs_total: int
    runs_done: int
    current: str
    message: str


class _Evaluation(Protocol):
    evaluation_id: str
    state: int

    @property
    def progress(self) -> _Progress: ...


class _Update(Protocol):
    @property
    def evaluation(self) -> _Evaluation: ...


def follow(updates: Iterable[_Update], stream: TextIO | None = None) -> Any:
    """Show the progress of each update until the stream ends; returns the last evaluation
    (None when the stream carried nothing)."""
    out = stream or sys.stderr
    console = Console(file=out)
    last: Any = None
    if not console.is_terminal:
        done = -1
        for update in updates:
            last = update.evaluation
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
        for update in updates:
            last = update.evaluation
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
