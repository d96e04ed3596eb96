"""Do a model's weights fit a chip at a precision? A first-order memory check.

Weights per device = parameters x bytes per element / devices (tensor parallelism splits the
weights evenly). A fixed share of each device's memory is held back for the runtime; what is
left after the weights is the headroom for activations and KV cache. The full performance model
(KV cache sizing, operator coverage, speed) replaces this check later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pocgrid.catalog import PRECISION_BYTES, Chip, Model


@dataclass(frozen=True, slots=True)
class Fit:
    fits: bool
    weights_gb_per_device: float
    memory_gb_per_device: float
    reserve_gb_per_device: float
    headroom_gb_per_device: float
    precision_supported: bool
    reason: str


def check_fit(
    model: Model, chip: Chip, precision: str, devices: int, reserve_fraction: float
) -> Fit:
    """``precision`` is a catalogue name (``fp16``); ``devices`` >= 1."""
    weights_total = model.params_b * PRECISION_BYTES[precision]
    weights = weights_total / devices
    supported = chip.peak(precision) is not None
    problems: list[str] = []
    if not supported:
        known = ", ".join(sorted(chip.peak_tflops)) or "none"
        problems.append(
            f"{chip.name} has no published {precision} peak (precisions it has: {known})"
        )
    if chip.memory_gib is None:
        problems.append(f"the catalogue has no memory size for {chip.name}: cannot check the fit")
        return Fit(False, weights, 0.0, 0.0, 0.0, supported, "; ".join(problems))
    memory = chip.memory_gib
    reserve = memory * reserve_fraction
    headroom = memory - reserve - weights
    if headroom < 0:
        usable = memory - reserve
        needed = math.ceil(weights_total / usable) if usable > 0 else 0
        hint = f"; at least {needed} devices would hold the weights" if needed else ""
        problems.append(
            f"{model.name} at {precision} needs {weights:.2f} GB of weights per device on "
            f"{devices} x {chip.name}, but {memory:.2f} GB less a {reserve:.2f} GB reserve "
            f"({reserve_fraction:.0%} for the runtime) leaves {usable:.2f} GB: "
            f"short by {-headroom:.2f} GB{hint}"
        )
    return Fit(
        fits=not problems,
        weights_gb_per_device=weights,
        memory_gb_per_device=memory,
        reserve_gb_per_device=reserve,
        headroom_gb_per_device=headroom,
        precision_supported=supported,
        reason="; ".join(problems),
    )
