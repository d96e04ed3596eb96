"""eval.* lifecycle events: what an evaluation's state changes announce on the bus.

``eval.started`` (RUNNING), ``eval.completed`` (SUCCEEDED), ``eval.failed`` (FAILED), each an
``EvaluationStateChanged`` written to the evaluator's outbox in the transaction that stores the
state (``EvaluationStore.save``), published by the relay after the commit, with the event id
``eval/<evaluation_id>/<attempt>/<slug>`` as its ``Nats-Msg-Id`` so a retried publish is
dropped. The attempt is 1: an evaluation is never run twice (see the message's comment).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pocgrid.v1 import evaluator_pb2, events_pb2
from services.core.outbox import OutboxEvent

ATTEMPT = 1
SLUGS: dict[int, str] = {
    evaluator_pb2.EVALUATION_STATE_RUNNING: "started",
    evaluator_pb2.EVALUATION_STATE_SUCCEEDED: "completed",
    evaluator_pb2.EVALUATION_STATE_FAILED: "failed",
}


def event_id(evaluation_id: str, state: int) -> str:
    return f"eval/{evaluation_id}/{ATTEMPT}/{SLUGS[state]}"


def state_event(evaluation: evaluator_pb2.Evaluation) -> OutboxEvent:
    """The event of ``evaluation``'s current state (one of ``SLUGS``)."""
    slug = SLUGS[evaluation.state]
    now = datetime.now(UTC)
    results = evaluation.results
    event = events_pb2.EvaluationStateChanged(
        event_id=event_id(evaluation.evaluation_id, evaluation.state),
        evaluation_id=evaluation.evaluation_id,
        tenant=evaluation.tenant,
        state=evaluator_pb2.EvaluationState.Name(evaluation.state),
        scenario=evaluation.request.scenario,
        attempt=ATTEMPT,
        runs_total=evaluation.progress.runs_total,
        runs_done=evaluation.progress.runs_done,
        runs_runnable=sum(r.runnable for r in results),
        error=evaluation.error,
        cheapest=evaluation.recommendation.cheapest,
        job_ids=[r.job_id for r in results if r.job_id],
    )
    event.occurred_at.FromDatetime(now)
    return OutboxEvent(
        subject=f"eval.{slug}",
        message=event,
        event_id=event.event_id,
        aggregate=f"eval/{evaluation.evaluation_id}",
        at=now,
    )
