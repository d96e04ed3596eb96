"""The one memory-fit model: does a model fit ``devices`` devices of a chip at a precision?

The adapter's ``CheckFit`` RPC answers with :func:`check_fit`, and ``pocgrid perf predict``
(offline, one tensor-parallel replica) prices memory with the same
:func:`~pocgrid.perf.static_batch.static_memory_fit`, so the two give the same answer for the
same (model, chip, devices, precision, workload).

Per device: weights / devices (tensor parallel; LLM embeddings and the LM head as the
transformer model shards them) + the KV cache of the workload + peak activations of its
forward pass + the runtime reserve must not exceed the chip's memory (GiB). Models without a
decoder architecture (vision, speech, NLP encoders) are charged their weights and the reserve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pocgrid.catalog import PRECISION_BYTES, PRECISIONS, Catalog, Chip, Model, default_catalog
from pocgrid.perf.efficiency import GIB_BYTES, EfficiencyData, default_efficiency
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.llm import LlmDeployment, MemoryFit
from pocgrid.perf.static_batch import static_memory_fit, validate_lengths

FIT_BATCH: Final = 1
"""Sequences in the workload a fit assumes when the caller names none."""
FIT_INPUT_LEN: Final = 1024
FIT_OUTPUT_LEN: Final = 1024
"""Prompt and output tokens per sequence of that workload (a 2k-token conversation)."""

MAX_HINT_DEVICES: Final = 64
"""The largest tensor-parallel split a "would fit on N devices" hint considers."""


@dataclass(frozen=True, slots=True)
class FitCheck:
    """The fit answer for one (model, chip, devices, precision, workload)."""

    chip: str
    model: str
    precision: str
    devices: int
    batch: int
    input_len: int
    output_len: int
    precision_supported: bool
    """The chip's runtime runs ``precision`` (``Catalog.precisions``)."""
    memory: MemoryFit | None
    """Per-device memory; None when it cannot be computed (no memory size in the catalogue,
    or ``devices`` cannot split the model)."""
    problems: tuple[str, ...]
    """Why it does not fit, one sentence each; empty when it fits."""

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)

    @property
    def headroom_gib(self) -> float:
        """Memory left per device (negative when short); 0 when memory is unknown."""
        if self.memory is None:
            return 0.0
        return self.memory.available_gib - self.memory.needed_gib


def check_fit(
    chip: Chip,
    model: Model,
    precision: str,
    devices: int,
    *,
    batch: int = FIT_BATCH,
    input_len: int = FIT_INPUT_LEN,
    output_len: int = FIT_OUTPUT_LEN,
    catalog: Catalog | None = None,
    efficiency: EfficiencyData | None = None,
) -> FitCheck:
    """Whether ``model`` fits ``devices`` devices of ``chip`` at ``precision``.

    Raises ``PerfInputError`` for input outside the rules (unknown precision, devices < 1,
    lengths < 1); a model that does not fit is an answer with ``fits`` False.
    """
    if precision not in PRECISIONS:
        raise PerfInputError("precision", f"must be one of {', '.join(PRECISIONS)}")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise PerfInputError("devices", "must be an integer >= 1")
    validate_lengths(batch, input_len, output_len)
    cat = default_catalog() if catalog is None else catalog
    eff = default_efficiency() if efficiency is None else efficiency

    problems: list[str] = []
    runs = cat.precisions(chip)
    supported = precision in runs
    if not supported:
        problems.append(
            f"{chip.name} does not run {precision} (its runtime runs {', '.join(runs) or 'none'})"
        )

    def answer(memory: MemoryFit | None) -> FitCheck:
        return FitCheck(
            chip=chip.name,
            model=model.name,
            precision=precision,
            devices=devices,
            batch=batch,
            input_len=input_len,
            output_len=output_len,
            precision_supported=supported,
            memory=memory,
            problems=tuple(problems),
        )

    # The memory the agent emulates: the chip table's, else the vendor file's SMI figure.
    device_gib = cat.device_memory_gib(chip)
    if device_gib is None:
        problems.append(f"the catalogue has no memory size for {chip.name}: cannot check the fit")
        return answer(None)
    sizes = (batch, input_len, output_len)
    try:
        memory = _memory_fit(chip, device_gib, model, precision, devices, sizes, eff)
    except PerfInputError as exc:
        # A split the model cannot take (tensor parallel must divide the attention heads).
        problems.append(
            f"{devices} devices cannot split {model.name} tensor-parallel (the tp degree "
            f"{exc.rule})"
        )
        hint = _smallest_fit(chip, device_gib, model, precision, sizes, eff)
        if hint is not None:
            problems[-1] += f"; {hint} devices would hold it"
        return answer(None)
    if not memory.fits:
        why = memory.why_not() or ""
        problem = f"{model.name} at {precision} on {devices} x {chip.name} {why}"
        hint = _smallest_fit(chip, device_gib, model, precision, sizes, eff)
        if hint is not None and hint > devices:
            problem += f"; {hint} devices would hold it"
        problems.append(problem)
    return answer(memory)


def _memory_fit(
    chip: Chip,
    device_gib: float,
    model: Model,
    precision: str,
    devices: int,
    sizes: tuple[int, int, int],
    efficiency: EfficiencyData,
) -> MemoryFit:
    if model.arch is None:
        weights = model.params_b * 1e9 * PRECISION_BYTES[precision] / devices
        return MemoryFit(
            weights_gib=weights / GIB_BYTES,
            kv_cache_gib=0.0,
            activations_gib=0.0,
            reserve_gib=efficiency.params.runtime_reserve_gib,
            available_gib=device_gib,
        )
    deployment = LlmDeployment(
        chip, model, precision, devices, efficiency=efficiency, memory_gib=device_gib
    )
    return static_memory_fit(deployment, *sizes)


def _smallest_fit(
    chip: Chip,
    device_gib: float,
    model: Model,
    precision: str,
    sizes: tuple[int, int, int],
    efficiency: EfficiencyData,
) -> int | None:
    """The fewest devices that hold the workload, up to ``MAX_HINT_DEVICES``; None if none."""
    for devices in range(1, MAX_HINT_DEVICES + 1):
        try:
            memory = _memory_fit(chip, device_gib, model, precision, devices, sizes, efficiency)
        except PerfInputError:
            continue
        if memory.fits:
            return devices
    return None
