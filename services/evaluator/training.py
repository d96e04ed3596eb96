"""The ``hybrid-training`` scenario: a data-parallel training job across chips of several types.

A training scenario names no catalogue model: it trains the numpy MLP of
:mod:`pocgrid.comm.training` (shape and optimiser in ``Scenario.training``) with the global
batch split across one rank per chip type evaluated, gradients all-reduced every step by the
unified communication library (:mod:`pocgrid.comm`) across the vendors' collective libraries;
once with the batch in proportion to each chip's modelled speed, once split equally.

Each rank is a process of its own (``pocgrid.comm.launch``) with the chip type and the device
count of that chip's node in the pool; the agents' own processes do not take part yet (no
agent RPC joins a communicator). The step time is virtual (roofline compute on each chip at
its 16-bit training precision plus the all-reduce's alpha-beta time), so it does not depend
on how loaded this host is; the losses are real, and both splits' must equal a single-process
run of the same steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from pocgrid.catalog import Catalog
from pocgrid.comm.launch import RankSpec
from pocgrid.comm.training import SPLITS, MlpConfig, train_pool
from pocgrid.v1 import evaluator_pb2

if TYPE_CHECKING:
    from services.evaluator.runner import Node, Progress

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


def model_name(spec: evaluator_pb2.TrainingSpec) -> str:
    """What the results call the model: ``mlp-INPUTS-HIDDEN-CLASSES``."""
    return f"mlp-{spec.inputs}-{spec.hidden}-{spec.classes}"


async def run(
    catalog: Catalog,
    nodes: Mapping[str, Node],
    scenario: evaluator_pb2.Scenario,
    chips: Sequence[str],
    seed: int,
    placement: str,
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
            placement=placement,
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
    cfg = config_of(scenario.training, seed)
    specs = [RankSpec(row.chip, node.devices) for row, node in taking_part]
    names = ", ".join(f"{s.chip} x{s.devices}" for s in specs)
    await progress(f"training on {names}: both splits and the single-process reference", None)
    # Blocking (rank processes, numpy): off the event loop.
    value = await asyncio.to_thread(train_pool, specs, cfg)
    result = training_result(value, specs, scenario.training)
    _fill_rows([row for row, _ in taking_part], result)
    return rows, result


def training_result(
    value: Mapping[str, Any], specs: Sequence[RankSpec], spec: evaluator_pb2.TrainingSpec
) -> evaluator_pb2.TrainingResult:
    """``pocgrid.comm.training.train_pool``'s result as the evaluator's message."""
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
