"""WatchEvaluation's stream never waits for a change it has already missed."""

from __future__ import annotations

import asyncio

from pocgrid.v1 import evaluator_pb2
from services.evaluator.evaluations import Evaluations, _Live


async def test_a_change_made_while_the_caller_reads_the_last_snapshot_is_streamed() -> None:
    evaluations = Evaluations(
        store=None,  # type: ignore[arg-type]  # a live evaluation is read from memory only
        catalog=None,  # type: ignore[arg-type]
        scenarios=None,  # type: ignore[arg-type]
        runner=lambda: None,
        placement="scheduler",
    )
    live = _Live(
        evaluator_pb2.Evaluation(
            evaluation_id="ev-1", tenant="t", state=evaluator_pb2.EVALUATION_STATE_RUNNING
        )
    )
    evaluations._live["ev-1"] = live
    stream = evaluations.watch("t", "ev-1")
    first = await anext(stream)
    assert first.state == evaluator_pb2.EVALUATION_STATE_RUNNING
    # The evaluation ends while the caller still handles the first snapshot (it has not asked
    # for the next one yet): its final state must still come.
    live.evaluation.state = evaluator_pb2.EVALUATION_STATE_SUCCEEDED
    async with live.changed:
        live.version += 1
        live.changed.notify_all()
    last = await asyncio.wait_for(anext(stream), timeout=5)
    assert last.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED
