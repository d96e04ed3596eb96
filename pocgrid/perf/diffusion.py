"""Text-to-image latency: a latent diffusion pipeline's stages on the chip's roofline.

One batch of ``b`` images runs the text encoder on ``b x guidance_batch`` prompts, then
``steps`` denoiser calls on ``b x guidance_batch`` latents each, then the VAE decoder on ``b``
latents (``pocgrid.catalog.DiffusionArch``). Each call is priced as the dense models are
(``pocgrid.adapt.dense_plan.price_batch``): compute ``items x FLOPs`` at the chip's achieved GEMM
ceiling (:meth:`pocgrid.perf.EfficiencyData.ceilings`), against memory traffic of the weights
once per call plus every activation written and read back once, combined by the calibrated
overlap exponent, plus fixed per-layer overheads. The step count multiplies only the denoiser:
that is what makes a diffusion request unlike a classifier's one pass.

No diffusion measurement calibrates this; ``tests/unit/perf/test_diffusion.py`` checks the A100
figure against the one public end-to-end benchmark in the catalogue's sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from pocgrid.catalog import PRECISION_BYTES, Chip, DiffusionStage, Model
from pocgrid.perf.efficiency import ChipCeilings, EfficiencyData, default_efficiency
from pocgrid.perf.errors import PerfInputError
from pocgrid.perf.roofline import Bound, combine_terms

MAX_STEPS: Final = 1000
#: Kernel-launch overheads charged per call of a stage, as the dense models are charged
#: (``price_batch``: 50 layer overheads per pass).
LAYERS_PER_CALL: Final = 50


@dataclass(frozen=True, slots=True)
class StageTime:
    seconds: float
    bound: Bound


@dataclass(frozen=True, slots=True)
class ImageBatchTime:
    """One batch of images through the whole pipeline, per stage."""

    batch: int
    steps: int
    text_encoder: StageTime
    denoise_step: StageTime
    """One denoising step of the whole batch."""
    vae_decoder: StageTime

    @property
    def seconds(self) -> float:
        return (
            self.text_encoder.seconds
            + self.steps * self.denoise_step.seconds
            + self.vae_decoder.seconds
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "batch": self.batch,
            "steps": self.steps,
            "seconds": self.seconds,
            "text_encoder_s": self.text_encoder.seconds,
            "denoise_step_s": self.denoise_step.seconds,
            "denoise_bound": self.denoise_step.bound.value,
            "vae_decoder_s": self.vae_decoder.seconds,
        }


def _stage_time(
    stage: DiffusionStage,
    items: int,
    precision: str,
    ceilings: ChipCeilings,
    eff: EfficiencyData,
) -> StageTime:
    weight_bytes = stage.params_m * 1e6 * PRECISION_BYTES[precision]
    # Activations stay at 16 bits (fp32 for fp32/tf32 runs), as the dense models' do.
    act_scale = 1.0 if precision in ("fp32", "tf32") else 0.5
    act_bytes = 2.0 * stage.activation_mb * 1e6 * act_scale * items  # written, then read
    compute = stage.gflops * 1e9 * items / ceilings.gemm.rate
    memory = (weight_bytes + act_bytes) / ceilings.memory.rate
    t = float(
        combine_terms(
            np.array([compute]), np.array([memory]), np.zeros(1), eff.params.overlap_exponent
        )[0]
    )
    bound = Bound.COMPUTE if compute >= memory else Bound.MEMORY
    return StageTime(t + LAYERS_PER_CALL * eff.params.layer_overhead_s, bound)


def image_batch_time(
    model: Model,
    chip: Chip,
    precision: str,
    batch: int,
    steps: int | None = None,
    efficiency: EfficiencyData | None = None,
) -> ImageBatchTime:
    """Seconds of ``batch`` images on one device; ``steps`` defaults to the model's.

    Raises ``PerfInputError`` for a model that is not a diffusion pipeline or an out-of-range
    batch or step count, ``UnsupportedInput`` when the chip has no peak at ``precision``.
    """
    arch = model.diffusion
    if arch is None:
        raise PerfInputError("model", f"{model.name} is not a diffusion model")
    if not 1 <= batch <= 4096:
        raise PerfInputError("batch", "must be between 1 and 4096")
    n_steps = arch.default_steps if steps is None or steps == 0 else steps
    if not 1 <= n_steps <= MAX_STEPS:
        raise PerfInputError("steps", f"must be between 1 and {MAX_STEPS}")
    eff = efficiency or default_efficiency()
    ceilings = eff.ceilings(chip, precision, eff.params)
    prompts = batch * arch.guidance_batch
    return ImageBatchTime(
        batch=batch,
        steps=n_steps,
        text_encoder=_stage_time(arch.text_encoder, prompts, precision, ceilings, eff),
        denoise_step=_stage_time(arch.denoiser, prompts, precision, ceilings, eff),
        vae_decoder=_stage_time(arch.vae_decoder, batch, precision, ceilings, eff),
    )


def image_flops(model: Model, steps: int | None = None) -> float:
    """FLOPs of one image (the MFU numerator); ``steps`` defaults to the model's."""
    arch = model.diffusion
    if arch is None:
        raise PerfInputError("model", f"{model.name} is not a diffusion model")
    n = steps if steps else arch.default_steps
    return arch.image_gflops(n) * 1e9


def weights_bytes(model: Model, precision: str) -> float:
    arch = model.diffusion
    if arch is None:
        raise PerfInputError("model", f"{model.name} is not a diffusion model")
    params = arch.text_encoder.params_m + arch.denoiser.params_m + arch.vae_decoder.params_m
    return params * 1e6 * PRECISION_BYTES[precision]
