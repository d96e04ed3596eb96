"""Hybrid data-parallel training: a real numpy MLP across agents of different chip types.

Each rank (an agent: ``devices`` devices of one chip) computes the loss and gradient sums of
its share of the global batch; one all-reduce through the communicator sums them (with the
loss) and every rank applies the same SGD update. Dividing the summed gradient by the global
batch makes the step the same arithmetic as a single process on the whole batch, so the loss
curve matches :func:`train_single` up to float rounding, whatever the split.

Time is virtual. A rank's compute is the roofline of the step's GEMMs on its chip (FLOPs and
bytes of forward + backward at the chip's 16-bit training precision, the performance model's
ceilings and overlap exponent) plus the model's per-layer fixed cost; the gradient all-reduce
costs what the communicator's plan says for fp32 gradients (the real data moves as float64,
so the comparison with one process is exact up to rounding). The step ends when the slowest
rank's compute and the all-reduce are done. ``proportional`` gives each rank samples in
proportion to its modelled speed (samples per second of marginal compute), ``equal`` the same
count to each.

Data: a synthetic classification task (features from a fixed Gaussian, labels from a random
teacher network), because scikit-learn is not a dependency; it is deterministic per seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from pocgrid.catalog import Chip, default_catalog
from pocgrid.comm.communicator import CollectiveResult, Communicator, ReduceOp
from pocgrid.comm.errors import CommError, CommInputError
from pocgrid.comm.launch import RankSpec, run_ranks
from pocgrid.comm.plans import choose
from pocgrid.comm.topology import NetworkConfig, Topology
from pocgrid.perf.efficiency import default_efficiency
from pocgrid.perf.roofline import op_time

Split: TypeAlias = Literal["proportional", "equal"]
SPLITS: Final[tuple[Split, ...]] = ("proportional", "equal")
F64: TypeAlias = npt.NDArray[np.float64]
_LAYERS: Final = 2
# Weights are read by the forward, the input-gradient and the weight-gradient GEMMs.
_PASSES: Final = 3


@dataclass(frozen=True, slots=True)
class MlpConfig:
    """The model, its data and the optimiser (every field JSON-friendly)."""

    inputs: int = 64
    hidden: int = 128
    classes: int = 10
    samples: int = 8192
    """Size of the synthetic training set."""
    batch: int = 1024
    """Global batch per step, split across the ranks."""
    steps: int = 10
    lr: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("inputs", "hidden", "classes", "samples", "batch", "steps"):
            if getattr(self, name) < 1:
                raise CommInputError(name, "must be >= 1")
        if self.batch > self.samples:
            raise CommInputError("batch", f"must be <= samples ({self.samples})")

    @property
    def params(self) -> int:
        return self.inputs * self.hidden + self.hidden + self.hidden * self.classes + self.classes


def dataset(cfg: MlpConfig) -> tuple[F64, npt.NDArray[np.int64]]:
    rng = np.random.default_rng(cfg.seed + 7919)
    x = rng.standard_normal((cfg.samples, cfg.inputs))
    w1 = rng.standard_normal((cfg.inputs, 32))
    w2 = rng.standard_normal((32, cfg.classes))
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1).astype(np.int64)
    return x, y


def init_params(cfg: MlpConfig) -> list[F64]:
    rng = np.random.default_rng(cfg.seed)
    return [
        rng.standard_normal((cfg.inputs, cfg.hidden)) * math.sqrt(2.0 / cfg.inputs),
        np.zeros(cfg.hidden),
        rng.standard_normal((cfg.hidden, cfg.classes)) * math.sqrt(1.0 / cfg.hidden),
        np.zeros(cfg.classes),
    ]


def loss_and_grad_sums(
    params: Sequence[F64], x: F64, y: npt.NDArray[np.int64]
) -> tuple[float, list[F64]]:
    """Cross-entropy summed over the samples, and its gradient (a sum, not a mean)."""
    w1, b1, w2, b2 = params
    if x.shape[0] == 0:
        return 0.0, [np.zeros_like(p) for p in params]
    h_pre = x @ w1 + b1
    h = np.maximum(h_pre, 0.0)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    prob = exp / exp.sum(axis=1, keepdims=True)
    rows = np.arange(x.shape[0])
    loss = float(-np.log(prob[rows, y]).sum())
    d_logits = prob
    d_logits[rows, y] -= 1.0
    g_w2 = h.T @ d_logits
    g_b2 = d_logits.sum(axis=0)
    d_h = (d_logits @ w2.T) * (h_pre > 0)
    g_w1 = x.T @ d_h
    g_b1 = d_h.sum(axis=0)
    return loss, [g_w1, g_b1, g_w2, g_b2]


def batch_indices(cfg: MlpConfig, step: int) -> npt.NDArray[np.int64]:
    """The global batch of ``step`` (same on every rank and in the single-process run)."""
    rng = np.random.default_rng(cfg.seed * 1_000_003 + step)
    return rng.permutation(cfg.samples)[: cfg.batch].astype(np.int64)


def _flatten(parts: Sequence[F64], extra: float) -> F64:
    return np.concatenate([*(p.ravel() for p in parts), np.array([extra])])


def _unflatten(flat: F64, like: Sequence[F64]) -> list[F64]:
    out, pos = [], 0
    for p in like:
        out.append(flat[pos : pos + p.size].reshape(p.shape))
        pos += p.size
    return out


def train_single(cfg: MlpConfig) -> list[float]:
    """The reference: every step on the whole global batch in one process; mean losses."""
    x, y = dataset(cfg)
    params = init_params(cfg)
    losses = []
    for step in range(cfg.steps):
        idx = batch_indices(cfg, step)
        loss, grads = loss_and_grad_sums(params, x[idx], y[idx])
        params = [p - cfg.lr * g / cfg.batch for p, g in zip(params, grads, strict=True)]
        losses.append(loss / cfg.batch)
    return losses


# -- the speed model ------------------------------------------------------------------------


def training_precision(chip: Chip) -> str:
    """bf16 where the chip has a bf16 peak, else fp16 (mixed-precision training)."""
    return "bf16" if chip.peak("bf16") is not None else "fp16"


@dataclass(frozen=True, slots=True)
class ComputeModel:
    """Virtual compute time of one rank's share of a step on its chip."""

    chip: str
    devices: int
    precision: str
    fixed_s: float
    """Per-step fixed cost: the perf model's per-decoder-layer overhead once per MLP layer
    (about ten kernels per step in all, a decoder layer's worth each; estimated)."""
    flops_per_s: float
    bytes_per_s: float
    overlap_exponent: float
    flops_per_sample: float
    bytes_per_sample: float
    weight_bytes: float

    def seconds(self, samples: int) -> float:
        if samples <= 0:
            return 0.0
        per_device = samples / self.devices
        t = op_time(
            flops=self.flops_per_sample * per_device,
            bytes_moved=self.weight_bytes * _PASSES + self.bytes_per_sample * per_device,
            comm_bytes=0.0,
            compute_flops_per_s=self.flops_per_s,
            memory_bytes_per_s=self.bytes_per_s,
            link_bytes_per_s=1.0,
            overlap_exponent=self.overlap_exponent,
        )
        return self.fixed_s + t.seconds

    @property
    def samples_per_s(self) -> float:
        """Marginal speed: samples per second of compute beyond the fixed cost."""
        big = 1 << 20
        return big / (self.seconds(big) - self.fixed_s)


def compute_model(cfg: MlpConfig, chip_name: str, devices: int) -> ComputeModel:
    chip = default_catalog().chip(chip_name)
    eff = default_efficiency()
    precision = training_precision(chip)
    ceilings = eff.ceilings(chip, precision)
    elem = 2  # 16-bit weights and activations
    gemm_params = cfg.inputs * cfg.hidden + cfg.hidden * cfg.classes
    return ComputeModel(
        chip=chip.name,
        devices=devices,
        precision=precision,
        fixed_s=_LAYERS * eff.params.layer_overhead_s,
        flops_per_s=ceilings.gemm.rate,
        bytes_per_s=ceilings.memory.rate,
        overlap_exponent=eff.params.overlap_exponent,
        flops_per_sample=6.0 * gemm_params,
        # activations written forward, read back in backward, gradients of each
        bytes_per_sample=4.0 * elem * (cfg.inputs + 2 * cfg.hidden + cfg.classes),
        weight_bytes=float(elem * cfg.params),
    )


def split_batch(batch: int, weights: Sequence[float]) -> list[int]:
    """``batch`` samples in proportion to ``weights`` (largest remainder; sums exactly)."""
    total = float(sum(weights))
    if total <= 0:
        raise CommInputError("weights", "must have a positive sum")
    raw = [batch * w / total for w in weights]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: batch - sum(counts)]:
        counts[i] += 1
    return counts


def shares(cfg: MlpConfig, models: Sequence[ComputeModel], split: Split) -> list[int]:
    if split == "equal":
        return split_batch(cfg.batch, [1.0] * len(models))
    if split == "proportional":
        return split_batch(cfg.batch, [m.samples_per_s for m in models])
    raise CommInputError("split", f"must be one of {', '.join(SPLITS)}, got {split!r}")


@dataclass(frozen=True, slots=True)
class StepTiming:
    compute_s: list[float]
    allreduce_s: float
    step_s: float
    ideal_s: float
    algorithm: str

    @property
    def efficiency(self) -> float:
        return self.ideal_s / self.step_s


def model_step(
    cfg: MlpConfig, topo: Topology, models: Sequence[ComputeModel], counts: Sequence[int]
) -> StepTiming:
    """Virtual time of one step: slowest rank's compute, then the gradient all-reduce."""
    compute = [m.seconds(c) for m, c in zip(models, counts, strict=True)]
    grad = choose(topo, "all_reduce", cfg.params + 1, 4)
    # Perfect pooling: the batch at the pool's summed speed, one fixed cost, no comm.
    ideal = max(m.fixed_s for m in models) + cfg.batch / sum(m.samples_per_s for m in models)
    step = max(compute) + grad.seconds
    return StepTiming(compute, grad.seconds, step, ideal, grad.algorithm)


class GradientReducer(Protocol):
    """What a training rank needs of its communicator: who it is, the pool, and an all-reduce.

    A bare :class:`Communicator` is one (``pocgrid comm train``'s rank processes); so is an
    agent's ``AgentCollectives``, which also charges the buffers to the vendor's device memory
    and queues the collective on the device streams.
    """

    @property
    def rank(self) -> int: ...

    @property
    def topology(self) -> Topology: ...

    def all_reduce(self, x: F64, op: ReduceOp = "sum") -> CollectiveResult: ...


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise CommInputError("split", f"must be one of {', '.join(SPLITS)}, got {split!r}")
    return "proportional" if split == "proportional" else "equal"


def train_loop(
    comm: GradientReducer,
    cfg: MlpConfig,
    split: Split,
    on_compute: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """The data-parallel training loop of one rank through ``comm``.

    ``on_compute(seconds)`` is told each step's modelled compute time of this rank before its
    all-reduce (an agent queues it on its device streams, so its virtual clock runs through
    the step as the chip's would).
    """
    topo = comm.topology
    models = [compute_model(cfg, info.chip, info.devices) for info in topo.ranks]
    counts = shares(cfg, models, split)
    lo = sum(counts[: comm.rank])
    hi = lo + counts[comm.rank]
    x, y = dataset(cfg)
    params = init_params(cfg)
    timing = model_step(cfg, topo, models, counts)
    losses: list[float] = []
    algorithms: set[str] = set()
    for step in range(cfg.steps):
        idx = batch_indices(cfg, step)[lo:hi]
        loss, grads = loss_and_grad_sums(params, x[idx], y[idx])
        if on_compute is not None:
            on_compute(timing.compute_s[comm.rank])
        # float64 gradients: the sum order differs from one process by rounding only.
        res = comm.all_reduce(_flatten(grads, loss), "sum")
        algorithms.add(res.algorithm)
        total = np.asarray(res.output, dtype=np.float64)
        summed = _unflatten(total, params)
        params = [p - cfg.lr * g / cfg.batch for p, g in zip(params, summed, strict=True)]
        losses.append(float(total[-1]) / cfg.batch)
    return {
        "losses": losses,
        "counts": counts,
        "virtual_s": timing.step_s * cfg.steps,
        "step": asdict(timing) | {"efficiency": timing.efficiency},
        "algorithms": sorted(algorithms),
        "speeds": [m.samples_per_s for m in models],
        "precisions": [m.precision for m in models],
    }


def train_rank(comm: Communicator, config: dict[str, Any], split: str) -> dict[str, Any]:
    """Runs on every rank process of ``launch.run_ranks``: JSON in, JSON out."""
    return train_loop(comm, MlpConfig(**config), check_split(split))


def loss_check(losses: Sequence[float], reference: Sequence[float]) -> float:
    """Largest |loss - reference| over the steps."""
    return max(abs(a - b) for a, b in zip(losses, reference, strict=True))


def train_pool(
    specs: list[RankSpec], cfg: MlpConfig, network: NetworkConfig | None = None
) -> dict[str, Any]:
    """Both splits on the pool (one process per rank), and the single-process reference.

    What ``pocgrid comm train`` prints and the evaluator's ``hybrid-training`` scenario
    reports. Raises :class:`~pocgrid.comm.errors.CommError` when a rank fails.
    """
    reference = train_single(cfg)
    result: dict[str, Any] = {"config": asdict(cfg), "single_process_losses": reference}
    for split in SPLITS:
        outcomes = run_ranks(
            "pocgrid.comm.training:train_rank",
            specs,
            kwargs={"config": asdict(cfg), "split": split},
            network=network,
            timeout_s=1800.0,
        )
        bad = [o for o in outcomes if not o.ok]
        if bad:
            raise CommError(f"{split}: rank {bad[0].rank}: {bad[0].error_type}: {bad[0].error}")
        value = outcomes[0].value
        value["max_loss_diff"] = loss_check(value["losses"], reference)
        value["ranks_agree"] = all(o.value["losses"] == value["losses"] for o in outcomes)
        result[split] = value
    return result
