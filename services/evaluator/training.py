"""The ``hybrid-training`` scenario: a data-parallel training job across chips of several types.

A training scenario names no catalogue model: it trains the numpy MLP of
:mod:`pocgrid.comm.training` (shape and optimiser in ``Scenario.training``) with the global
batch split across one rank per chip type evaluated, gradients all-reduced every step by the
unified communication library (:mod:`pocgrid.comm`) across the vendors' collective libraries;
once with the batch in proportion to each chip's modelled speed, once split equally.

The ranks run inside the agents: per split this process makes a communicator's unique id
(hosting its bootstrap root on ``Job.comm_host``, which every agent must reach) and calls
``JoinCommunicator`` on one agent per chip type at once (the pool's node of that type, its
devices not FAILED); each agent joins as its rank and trains through the library, which moves
the gradients between the agent processes and emulates the vendor's collective library inside
each. Every rank answers with its result, and they must agree. The step time is virtual
(roofline compute on each chip at its 16-bit training precision plus the all-reduce's
alpha-beta time), so it does not depend on how loaded this host is; the losses are real, and
both splits' must equal a single-process run of the same steps, computed here.

The agents are the pool's nodes as the registry lists them; the run is not held through the
scheduler (a training job names no catalogue model, which the scheduler's job spec needs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

import grpc

from pocgrid.catalog import Catalog
from pocgrid.comm import get_unique_id
from pocgrid.comm.launch import RankSpec
from pocgrid.comm.training import SPLITS, MlpConfig, loss_check, train_single
from pocgrid.v1 import agent_pb2, evaluator_pb2

if TYPE_CHECKING:
    from services.evaluator.runner import Node, Pool, Progress

KIND: Final = "training"
#: float64 losses: the data-parallel sum differs from one process's in the order only.
LOSS_TOLERANCE: Final = 1e-9


def config_of(spec: evaluator_pb2.TrainingSpec, seed: int) -> MlpConfig:
    return MlpConfig(
        inputs=spec.inputs,
        hidden=spec.hidden,
        classes=spec.classes,
        samples=spec.samples,
        batch=spec.batch,
        steps=spec.steps,
        lr=spec.lr,
        seed=seed,
    )


@dataclass(frozen=True, slots=True)
class Job:
    """What one hybrid-training run is: its id (the agents' job id), seed, and where this
    process's bootstrap roots listen."""

    job_id: str
    seed: int
    comm_host: str


#: Seconds the agents wait for each other to join (and a peer may stay silent).
COMM_TIMEOUT_S: Final = 60.0


def model_name(spec: evaluator_pb2.TrainingSpec) -> str:
    """What the results call the model: ``mlp-INPUTS-HIDDEN-CLASSES``."""
    return f"mlp-{spec.inputs}-{spec.hidden}-{spec.classes}"


async def run(
    catalog: Catalog,
    pool: Pool,
    nodes: Mapping[str, Node],
    scenario: evaluator_pb2.Scenario,
    chips: Sequence[str],
    job: Job,
    progress: Progress,
) -> tuple[list[evaluator_pb2.ChipResult], evaluator_pb2.TrainingResult]:
    """One row per chip type asked for (a chip with no node: not runnable, with the reason),
    and the pool's result per split. Raises ``RuntimeError`` when no chip can take part or a
    rank fails (the evaluation then fails with that message)."""
    rows: list[evaluator_pb2.ChipResult] = []
    taking_part: list[tuple[evaluator_pb2.ChipResult, Node]] = []
    for name in chips:
        chip = catalog.find_chip(name)
        row = evaluator_pb2.ChipResult(
            chip=chip.name,
            vendor=chip.vendor,
            domestic=chip.domestic,
            scenario=scenario.name,
            kind=KIND,
            model=model_name(scenario.training),
            mode=KIND,
            placement=pool.placement,
        )
        node = nodes.get(chip.name)
        if node is None:
            row.runnable = False
            row.reason = f"no READY node of {chip.name} in the pool"
            row.verdict = evaluator_pb2.VERDICT_INVALID
            row.verdict_reasons.append(f"not run: {row.reason}")
        else:
            row.node_id = node.node_id
            row.devices = node.devices
            taking_part.append((row, node))
        rows.append(row)
    if not taking_part:
        raise RuntimeError("no chip type asked for has a READY node in the pool")
    cfg = config_of(scenario.training, job.seed)
    ranks = [node for _, node in taking_part]
    names = ", ".join(f"{n.chip} ({n.node_id})" for n in ranks)
    await progress(f"training on the agents of {names}: both splits", None)
    # numpy, blocking: off the event loop.
    reference = await asyncio.to_thread(train_single, cfg)
    value: dict[str, Any] = {"single_process_losses": reference}
    devices: list[int] = []
    for split in SPLITS:
        answers = await _train_split(pool, ranks, cfg, split, job)
        value[split] = _split_value(answers, reference)
        devices = [len(a.device_indexes) for a in answers]
        await progress(f"{split} split done on {len(answers)} agents", None)
    specs = [RankSpec(n.chip, d) for n, d in zip(ranks, devices, strict=True)]
    result = training_result(value, specs, scenario.training)
    for (row, _), d in zip(taking_part, devices, strict=True):
        row.devices = d
    _fill_rows([row for row, _ in taking_part], result)
    return rows, result


async def _train_split(
    pool: Pool, ranks: Sequence[Node], cfg: MlpConfig, split: str, job: Job
) -> list[agent_pb2.JoinCommunicatorResponse]:
    """One communicator across the agents, every rank called at once."""
    uid = get_unique_id(job.comm_host, timeout_s=COMM_TIMEOUT_S)
    work = agent_pb2.TrainingJob(**asdict(cfg), split=split)
    calls = [
        pool.join_communicator(
            node,
            agent_pb2.JoinCommunicatorRequest(
                unique_id=uid.encode(),
                nranks=len(ranks),
                rank=rank,
                job_id=job.job_id[:128],
                timeout_s=COMM_TIMEOUT_S,
                training=work,
            ),
        )
        for rank, node in enumerate(ranks)
    ]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    failed = [(r, a) for r, a in enumerate(answers) if isinstance(a, BaseException)]
    if failed:
        said = "; ".join(
            f"rank {r} ({ranks[r].chip} on {ranks[r].node_id}): {_said(exc)}" for r, exc in failed
        )
        raise RuntimeError(f"{split} split: {said}"[:4000])
    return [a for a in answers if isinstance(a, agent_pb2.JoinCommunicatorResponse)]


def _said(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def _split_value(
    answers: Sequence[agent_pb2.JoinCommunicatorResponse], reference: Sequence[float]
) -> dict[str, Any]:
    """Rank 0's answer in the shape ``training_result`` reads, checked against the others."""
    t = answers[0].training
    losses = list(t.losses)
    return {
        "counts": list(t.batch),
        "losses": losses,
        "max_loss_diff": loss_check(losses, reference),
        "ranks_agree": all(list(a.training.losses) == losses for a in answers),
        "step": {
            "compute_s": list(t.compute_s),
            "allreduce_s": t.all_reduce_s,
            "step_s": t.step_s,
            "ideal_s": t.ideal_step_s,
            "algorithm": t.all_reduce_algorithm,
            "efficiency": t.scaling_efficiency,
        },
        "precisions": list(t.precisions),
        "speeds": list(t.samples_per_s),
    }


def training_result(
    value: Mapping[str, Any], specs: Sequence[RankSpec], spec: evaluator_pb2.TrainingSpec
) -> evaluator_pb2.TrainingResult:
    """The splits' results (``pocgrid.comm.training.train_pool``'s shape) as the message."""
    prop = value["proportional"]
    out = evaluator_pb2.TrainingResult(
        chips=[s.chip for s in specs],
        devices=[s.devices for s in specs],
        precisions=list(prop["precisions"]),
        samples_per_s=list(prop["speeds"]),
        single_process_losses=list(value["single_process_losses"]),
        spec=spec,
    )
    for split in SPLITS:
        v = value[split]
        step = v["step"]
        out.splits.append(
            evaluator_pb2.TrainingSplit(
                split=split,
                batch=list(v["counts"]),
                compute_ms=[s * 1e3 for s in step["compute_s"]],
                all_reduce_ms=step["allreduce_s"] * 1e3,
                all_reduce_algorithm=step["algorithm"],
                step_ms=step["step_s"] * 1e3,
                ideal_step_ms=step["ideal_s"] * 1e3,
                scaling_efficiency=step["efficiency"],
                losses=list(v["losses"]),
                max_loss_deviation=v["max_loss_diff"] if v["ranks_agree"] else float("inf"),
            )
        )
    by = {s.split: s for s in out.splits}
    out.proportional_speedup = by["equal"].step_ms / by["proportional"].step_ms
    return out


def _fill_rows(
    rows: Sequence[evaluator_pb2.ChipResult], result: evaluator_pb2.TrainingResult
) -> None:
    prop = next(s for s in result.splits if s.split == "proportional")
    for i, row in enumerate(rows):
        row.runnable = True
        row.precision = result.precisions[i]
        # The chip's modelled speed, samples per second (its share of the proportional split).
        row.request_throughput = result.samples_per_s[i]
        row.duration_s = prop.step_ms / 1e3 * len(prop.losses)
        bad = [s.split for s in result.splits if not s.max_loss_deviation <= LOSS_TOLERANCE]
        if bad:
            row.verdict = evaluator_pb2.VERDICT_INVALID
            row.verdict_reasons.append(
                f"loss differs from the single-process run's ({', '.join(bad)} split)"
            )
        else:
            row.verdict = evaluator_pb2.VERDICT_VALID
            row.verdict_reasons.append(
                "loss equals the single-process run's (max |diff| "
                f"{max(s.max_loss_deviation for s in result.splits):.1e}) for both splits"
            )
        row.accuracy_note = "not measured: a training scenario reports its loss per step"


def recommendation(result: evaluator_pb2.TrainingResult) -> evaluator_pb2.Recommendation:
    """The split to use, in plain words (a training run ranks the pool, not one chip)."""
    by = {s.split: s for s in result.splits}
    prop, equal = by["proportional"], by["equal"]
    pool = " + ".join(f"{c} x{d}" for c, d in zip(result.chips, result.devices, strict=True))
    better = "proportional" if prop.step_ms <= equal.step_ms else "equal"
    return evaluator_pb2.Recommendation(
        summary=(
            f"On {pool}, split the batch {better}ly: the proportional split's step is "
            f"{prop.step_ms:.4g} ms against {equal.step_ms:.4g} ms for the equal split "
            f"({result.proportional_speedup:.3g}x), scaling efficiency "
            f"{prop.scaling_efficiency:.3g} against {equal.scaling_efficiency:.3g}; the gradient "
            f"all-reduce ({prop.all_reduce_algorithm}) takes {prop.all_reduce_ms:.3g} ms of "
            "each step."
        )
    )
