"""Log-mel features of 8 kHz speech, once in numpy (training, tests) and once as ONNX nodes
(evaluation), the two built from the same constants so they compute the same thing.

A waveform of ``N_SAMPLES`` floats in [-1, 1] is cut into ``FRAMES`` frames of ``FRAME``
samples every ``HOP`` (50 % overlap), Hann-windowed, turned into a power spectrum by a DFT
written as two matrix products (cosine and sine), mapped to ``MELS`` triangular mel bands,
and log-compressed. The DFT is a MatMul on purpose: the ONNX ``DFT``/``STFT`` operators are
missing from some vendor runtimes (Biren, Enflame), MatMul/Mul/Log/Slice/Concat are native on
every one, so the same graph runs on every emulated chip, its features rounded like the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from onnx import helper

from tools.evalmodels.export import const

SAMPLE_RATE = 8000
HOP = 128
FRAME = 2 * HOP
N_SAMPLES = 64 * HOP  # 1.024 s
FRAMES = N_SAMPLES // HOP - 1
BINS = FRAME // 2 + 1
MELS = 40
FMIN_HZ = 60.0
FMAX_HZ = 3800.0
LOG_FLOOR = 1e-4

F32 = NDArray[np.float32]


def _hz_to_mel(hz: NDArray[Any]) -> NDArray[Any]:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: NDArray[Any]) -> NDArray[Any]:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank() -> F32:
    """[BINS, MELS] triangular filters, evenly spaced on the HTK mel scale, peak 1."""
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(FMIN_HZ)), _hz_to_mel(np.array(FMAX_HZ)), MELS + 2)
    )
    freqs = np.arange(BINS) * SAMPLE_RATE / FRAME
    bank = np.zeros((BINS, MELS), np.float64)
    for m in range(MELS):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rise = (freqs - lo) / (mid - lo)
        fall = (hi - freqs) / (hi - mid)
        bank[:, m] = np.clip(np.minimum(rise, fall), 0.0, None)
    return bank.astype(np.float32)


def dft_matrices() -> tuple[F32, F32]:
    """Hann-windowed DFT as [FRAME, BINS] cosine and sine matrices (window folded in)."""
    n = np.arange(FRAME)[:, None]
    k = np.arange(BINS)[None, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)  # periodic Hann
    angle = 2 * np.pi * n * k / FRAME
    return (
        (window[:, None] * np.cos(angle)).astype(np.float32),
        (window[:, None] * np.sin(angle)).astype(np.float32),
    )


def frames(audio: F32) -> F32:
    """[N, N_SAMPLES] -> [N, FRAMES, FRAME] by the same reshape-and-concatenate as the graph."""
    halves = audio.reshape(len(audio), N_SAMPLES // HOP, HOP)
    return np.concatenate([halves[:, :-1], halves[:, 1:]], axis=2)


def log_mel(audio: F32) -> F32:
    """[N, N_SAMPLES] float32 waveform -> [N, FRAMES, MELS] log-mel features."""
    if audio.ndim != 2 or audio.shape[1] != N_SAMPLES:
        raise ValueError(f"audio must be [N, {N_SAMPLES}] (got {list(audio.shape)})")
    cos, sin = dft_matrices()
    f = frames(audio.astype(np.float32))
    re = f @ cos
    im = f @ sin
    power = re * re + im * im
    out: F32 = np.log(power @ mel_filterbank() + np.float32(LOG_FLOOR)).astype(np.float32)
    return out


def log_mel_nodes(audio: str, out: str) -> tuple[list[Any], list[Any]]:
    """ONNX nodes and initializers computing ``log_mel`` from graph tensor ``audio``."""
    cos, sin = dft_matrices()
    inits = [
        const("fe_halves_shape", np.array([0, N_SAMPLES // HOP, HOP], np.int64)),
        const("fe_zero", np.array([0], np.int64)),
        const("fe_one", np.array([1], np.int64)),
        const("fe_last", np.array([N_SAMPLES // HOP - 1], np.int64)),
        const("fe_end", np.array([N_SAMPLES // HOP], np.int64)),
        const("fe_axis1", np.array([1], np.int64)),
        const("fe_cos", cos),
        const("fe_sin", sin),
        const("fe_mel", mel_filterbank()),
        const("fe_floor", np.array(LOG_FLOOR, np.float32)),
    ]
    nodes = [
        helper.make_node("Reshape", [audio, "fe_halves_shape"], ["fe_halves"]),
        helper.make_node("Slice", ["fe_halves", "fe_zero", "fe_last", "fe_axis1"], ["fe_a"]),
        helper.make_node("Slice", ["fe_halves", "fe_one", "fe_end", "fe_axis1"], ["fe_b"]),
        helper.make_node("Concat", ["fe_a", "fe_b"], ["fe_frames"], axis=2),
        helper.make_node("MatMul", ["fe_frames", "fe_cos"], ["fe_re"]),
        helper.make_node("MatMul", ["fe_frames", "fe_sin"], ["fe_im"]),
        helper.make_node("Mul", ["fe_re", "fe_re"], ["fe_re2"]),
        helper.make_node("Mul", ["fe_im", "fe_im"], ["fe_im2"]),
        helper.make_node("Add", ["fe_re2", "fe_im2"], ["fe_power"]),
        helper.make_node("MatMul", ["fe_power", "fe_mel"], ["fe_melp"]),
        helper.make_node("Add", ["fe_melp", "fe_floor"], ["fe_floored"]),
        helper.make_node("Log", ["fe_floored"], [out]),
    ]
    return nodes, inits
