"""Speech recognition: 20 spoken words (the digits and ten commands) synthesized with Debian's
espeak-ng, recognised by log-mel features and a small CNN, all inside one ONNX graph.

Data: every word is spoken by espeak-ng (``scripts/ensure_espeak_ng.sh`` installs it) in eight
English accents times sixteen voice variants, at random speeds (120-220 words/min) and pitches,
resampled to 8 kHz, trimmed, placed at a random offset in a 1.024 s window, scaled to a random
level and mixed with white or brown noise at 5-25 dB SNR. Three voice variants (``HELD_OUT``)
are never trained on: the committed samples use only them, so the accuracy is on unseen
speakers. Everything is seeded; espeak-ng itself is deterministic.

Model: waveform [N, 8192] float (PCM / 32768) -> log-mel [N, 63, 40] (``tools.evalmodels.audio``)
-> per-band standardisation -> Conv 5x40, stride 2 in time (64 filters) -> ReLU -> max and
mean over time -> Gemm 128 -> 64 -> ReLU -> Gemm 20 logits.

    python -m tools.evalmodels.asr [--seed 0] [--epochs 30]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from onnx import helper

from tools.evalmodels import audio, export
from tools.evalmodels.nn import F32, Adam, accuracy, he, minibatches, softmax_xent

NAME = "speech-commands-cnn"
WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
)  # fmt: skip
ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
TRAIN_VARIANTS = (
    "",
    "m1",
    "m2",
    "m3",
    "m5",
    "m6",
    "m7",
    "f1",
    "f3",
    "f4",
    "klatt",
    "klatt2",
    "croak",
)
HELD_OUT = ("f2", "m4", "klatt3")
RENDITIONS = 3
NOISY_COPIES = 2
TEST_PER_WORD = 10
KERNEL = 5
STRIDE = 2
FILTERS = 64
HIDDEN = 64
SNR_DB = (5.0, 25.0)
#: Bump when synthesize/place/render change what they produce: it keys the audio cache.
SYNTHESIS_VERSION = 1


@dataclass(frozen=True, slots=True)
class Utterance:
    word: int
    voice: str
    speed: int
    pitch: int


def voice_name(accent: str, variant: str) -> str:
    return accent if not variant else f"{accent}+{variant}"


def synthesize(u: Utterance) -> F32:
    """espeak-ng's rendering of one word, resampled to 8 kHz, silence trimmed."""
    wav = subprocess.run(
        ["espeak-ng", "-v", u.voice, "-s", str(u.speed), "-p", str(u.pitch), "--stdout",
         WORDS[u.word]],
        check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return trim(resample(pcm / 32768.0, rate, audio.SAMPLE_RATE))


def resample(x: NDArray[Any], rate_in: int, rate_out: int) -> F32:
    """Band-limited resampling by truncating (or padding) the spectrum: exact and seedless."""
    n_out = round(len(x) * rate_out / rate_in)
    spectrum = np.fft.rfft(x)
    keep = n_out // 2 + 1
    out = np.fft.irfft(spectrum[:keep], n_out) * (n_out / len(x))
    return out.astype(np.float32)


def trim(x: F32, threshold_db: float = -35.0) -> F32:
    """Drop leading and trailing 10 ms blocks quieter than ``threshold_db`` below the loudest."""
    block = audio.SAMPLE_RATE // 100
    n = len(x) // block
    if n == 0:
        return x
    energy = (x[: n * block].reshape(n, block) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (threshold_db / 10))
    return x[loud[0] * block : (loud[-1] + 1) * block]


def place(speech: F32, rng: np.random.Generator) -> F32:
    """Speech at a random level and offset in the window, plus noise at a random SNR."""
    if len(speech) > audio.N_SAMPLES:
        cut = (len(speech) - audio.N_SAMPLES) // 2
        speech = speech[cut : cut + audio.N_SAMPLES]
    out = np.zeros(audio.N_SAMPLES, np.float64)
    start = int(rng.integers(0, audio.N_SAMPLES - len(speech) + 1))
    level = rng.uniform(0.2, 0.8) / max(float(np.max(np.abs(speech))), 1e-6)
    out[start : start + len(speech)] = speech * level
    noise = rng.standard_normal(audio.N_SAMPLES)
    if rng.random() < 0.5:  # brown (1/f^2) noise: most of its energy low, like hum and rumble
        noise = np.cumsum(noise)
        noise -= np.linspace(noise[0], noise[-1], len(noise))
    speech_rms = float(np.sqrt(np.mean((speech * level) ** 2)))
    snr = rng.uniform(*SNR_DB)
    noise *= speech_rms / (float(np.sqrt(np.mean(noise**2))) * 10 ** (snr / 20))
    return np.clip(out + noise, -1.0, 32767 / 32768).astype(np.float32)


def to_pcm(x: F32) -> NDArray[np.int16]:
    return np.round(x * 32768.0).astype(np.int16)


def from_pcm(pcm: NDArray[np.int16]) -> F32:
    """The documented step from stored PCM to the model's input (exact in float32)."""
    return (pcm.astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def utterances(
    variants: tuple[str, ...], per_voice: int, rng: np.random.Generator
) -> list[Utterance]:
    out = []
    for accent in ACCENTS:
        for variant in variants:
            for w in range(len(WORDS)):
                for _ in range(per_voice):
                    out.append(
                        Utterance(
                            w,
                            voice_name(accent, variant),
                            int(rng.integers(120, 221)),
                            int(rng.integers(25, 76)),
                        )
                    )
    return out


def test_utterances(rng: np.random.Generator) -> list[Utterance]:
    voices = [voice_name(a, v) for a in ACCENTS for v in HELD_OUT]
    return [
        Utterance(w, voices[int(rng.integers(len(voices)))], int(rng.integers(120, 221)),
                  int(rng.integers(25, 76)))
        for w in range(len(WORDS))
        for _ in range(TEST_PER_WORD)
    ]  # fmt: skip


def cached_render(
    items: list[Utterance], copies: int, seed: int, stream: int, cache: Path | None
) -> tuple[NDArray[np.int16], NDArray[np.int64]]:
    """``render``, kept in ``cache`` under a digest of everything the samples depend on (the
    utterances, copies, seed, stream, espeak-ng's version and ``SYNTHESIS_VERSION``), so a
    second training run skips the synthesis."""
    if cache is None:
        return render(items, copies, seed, stream)
    key = (SYNTHESIS_VERSION, items, copies, seed, stream, espeak_version())
    h = hashlib.sha256(repr(key).encode())
    path = cache / f"asr-{h.hexdigest()[:20]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["pcm"], z["labels"]
    pcm, labels = render(items, copies, seed, stream)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, pcm=pcm, labels=labels)
    return pcm, labels


def render(
    items: list[Utterance], copies: int, seed: int, stream: int
) -> tuple[NDArray[np.int16], NDArray[np.int64]]:
    """PCM [len(items) * copies, N_SAMPLES]: each utterance placed ``copies`` times."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        speech = list(pool.map(synthesize, items))
    pcm = np.zeros((len(items) * copies, audio.N_SAMPLES), np.int16)
    labels = np.zeros(len(items) * copies, np.int64)
    for i, (u, s) in enumerate(zip(items, speech, strict=True)):
        for c in range(copies):
            # One generator per (stream, utterance, copy): a sample does not depend on the others.
            rng = np.random.default_rng([seed, stream, i, c])
            pcm[i * copies + c] = to_pcm(place(s, rng))
            labels[i * copies + c] = u.word
    return pcm, labels


def windows(feats: F32) -> F32:
    """[N, T, M] -> [N, (T - KERNEL) // STRIDE + 1, KERNEL * M], index i * M + m (the order of
    an ONNX Conv with kernel KERNEL x M and stride STRIDE along time)."""
    view = np.lib.stride_tricks.sliding_window_view(feats, KERNEL, axis=1)[:, ::STRIDE]
    n, t, m, k = view.shape
    return np.ascontiguousarray(view.transpose(0, 1, 3, 2)).reshape(n, t, k * m)


def forward(p: dict[str, F32], u: F32) -> tuple[F32, dict[str, Any]]:
    a = u @ p["wc"] + p["bc"]  # [N, T', C]
    r = np.maximum(a, 0)
    idx = r.argmax(axis=1)  # [N, C]
    mx = np.take_along_axis(r, idx[:, None, :], axis=1)[:, 0, :]
    mn = r.mean(axis=1)
    h = np.concatenate([mx, mn], axis=1)
    z1 = h @ p["w1"] + p["b1"]
    h1 = np.maximum(z1, 0)
    logits: F32 = h1 @ p["w2"] + p["b2"]
    return logits, {"a": a, "r": r, "idx": idx, "h": h, "z1": z1, "h1": h1}


def train(feats: F32, y: NDArray[np.int64], seed: int, epochs: int) -> dict[str, F32]:
    rng = np.random.default_rng(seed)
    u_all = windows(feats)
    d = u_all.shape[2]
    p = {
        "wc": he(rng, d, (d, FILTERS)),
        "bc": np.zeros(FILTERS, np.float32),
        "w1": he(rng, 2 * FILTERS, (2 * FILTERS, HIDDEN)),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": he(rng, HIDDEN, (HIDDEN, len(WORDS))),
        "b2": np.zeros(len(WORDS), np.float32),
    }
    opt = Adam(p, lr=2e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        opt.lr = 2e-3 * 0.5 * (1 + np.cos(np.pi * epoch / epochs))  # cosine decay
        losses = []
        for b in minibatches(len(u_all), 64, rng):
            u = u_all[b]
            logits, c = forward(p, u)
            loss, dz = softmax_xent(logits, y[b])
            losses.append(loss)
            dh1 = (dz @ p["w2"].T) * (c["z1"] > 0)
            dh = dh1 @ p["w1"].T
            n, t, ch = c["r"].shape
            dr = np.broadcast_to(dh[:, None, FILTERS:] / t, (n, t, ch)).copy()
            np.add.at(
                dr, (np.arange(n)[:, None], c["idx"], np.arange(ch)[None, :]), dh[:, :FILTERS]
            )
            da = dr * (c["a"] > 0)
            opt.step(
                {
                    "w2": c["h1"].T @ dz,
                    "b2": dz.sum(0),
                    "w1": c["h"].T @ dh1,
                    "b1": dh1.sum(0),
                    "wc": u.reshape(-1, d).T @ da.reshape(-1, ch),
                    "bc": da.sum((0, 1)),
                }
            )
        print(f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f}", flush=True)
    return p


def to_onnx(p: dict[str, F32], mean: F32, inv_std: F32) -> Any:
    fe_nodes, fe_inits = audio.log_mel_nodes("audio", "logmel")
    conv_w = p["wc"].T.reshape(FILTERS, KERNEL, audio.MELS)[:, None, :, :]
    nodes = [
        *fe_nodes,
        helper.make_node("Sub", ["logmel", "band_mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "band_inv_std"], ["feats"]),
        helper.make_node("Unsqueeze", ["feats", "axis1"], ["feats4"]),
        helper.make_node("Conv", ["feats4", "conv_w", "conv_b"], ["conv"], strides=[STRIDE, 1]),
        helper.make_node("Relu", ["conv"], ["act"]),
        helper.make_node("ReduceMax", ["act"], ["pmax"], axes=[2, 3], keepdims=0),
        helper.make_node("GlobalAveragePool", ["act"], ["pmean4"]),
        helper.make_node("Flatten", ["pmean4"], ["pmean"], axis=1),
        helper.make_node("Concat", ["pmax", "pmean"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "w1", "b1"], ["z1"]),
        helper.make_node("Relu", ["z1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["logits"]),
    ]
    inits = [
        *fe_inits,
        export.const("band_mean", mean),
        export.const("band_inv_std", inv_std),
        export.const("axis1", np.array([1], np.int64)),
        export.const("conv_w", np.ascontiguousarray(conv_w)),
        export.const("conv_b", p["bc"]),
        export.const("w1", p["w1"]),
        export.const("b1", p["b1"]),
        export.const("w2", p["w2"]),
        export.const("b2", p["b2"]),
    ]
    return export.make_model(
        NAME,
        nodes,
        [export.value_info("audio", export.FLOAT, ["batch", audio.N_SAMPLES])],
        [export.value_info("logits", export.FLOAT, ["batch", len(WORDS)])],
        inits,
        "Spoken word recogniser (8 kHz, 1.024 s; log-mel in the graph) trained by "
        "tools.evalmodels.asr on espeak-ng speech",
    )


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/pocgrid-evalmodels"),
        help="folder keeping synthesized audio between runs ('' for none)",
    )
    args = parser.parse_args(argv)
    cache = args.cache if str(args.cache) else None
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: run scripts/ensure_espeak_ng.sh")
    rng = np.random.default_rng(args.seed)
    train_items = utterances(TRAIN_VARIANTS, RENDITIONS, rng)
    test_items = test_utterances(rng)
    pcm_tr, y_tr = cached_render(train_items, NOISY_COPIES, args.seed, 0, cache)
    pcm_te, y_te = cached_render(test_items, 1, args.seed, 1, cache)
    print(f"{len(y_tr)} training and {len(y_te)} held-out samples", flush=True)
    feats = audio.log_mel(from_pcm(pcm_tr))
    mean = feats.mean(axis=(0, 1)).astype(np.float32)
    inv_std = (1.0 / (feats.std(axis=(0, 1)) + 1e-3)).astype(np.float32)
    normed = ((feats - mean) * inv_std).astype(np.float32)
    params = train(normed, y_tr, args.seed, args.epochs)
    train_logits, _ = forward(params, windows(normed[:2000]))
    print(f"train accuracy (first 2000) {accuracy(train_logits, y_tr[:2000]):.4f}")
    export.write(
        to_onnx(params, mean, inv_std),
        stored={"audio": pcm_te},
        feeds={"audio": from_pcm(pcm_te)},
        labels=y_te,
        card={
            "name": NAME,
            "scenario": "asr",
            "aliases": ["speech-commands"],
            "task": "recognise one spoken word of 20 (digits zero-nine and yes/no/up/down/"
            "left/right/on/off/stop/go) in 1.024 s of 8 kHz audio",
            "metric": "word accuracy (top-1 of 20 words)",
            "inputs": {"audio": {"stored": "int16", "scale": 1.0 / 32768.0}},
            "output": "logits",
            "classes": list(WORDS),
            "data_source": f"synthesized with {espeak_version()} (Debian espeak-ng): "
            f"{len(ACCENTS)} English accents x voice variants, speeds 120-220 wpm, pitch "
            "25-75, resampled to 8 kHz, white or brown noise at 5-25 dB SNR; the held-out "
            f"samples use only the voice variants {', '.join(HELD_OUT)}, never trained on",
            "features": "log-mel inside the graph: 256-sample Hann frames every 128 "
            "samples, DFT as MatMul, 40 HTK mel bands 60-3800 Hz, log(x + 1e-4) "
            "(tools/evalmodels/audio.py)",
            "training": {
                "command": f"python -m tools.evalmodels.asr --seed {args.seed} "
                f"--epochs {args.epochs}",
                "library": "numpy (Adam, softmax cross-entropy, cosine learning rate)",
                "seed": args.seed,
                "train_samples": len(y_tr),
                "epochs": args.epochs,
                "voices": {
                    "accents": list(ACCENTS),
                    "train_variants": list(TRAIN_VARIANTS),
                    "held_out_variants": list(HELD_OUT),
                },
            },
        },
    )


if __name__ == "__main__":
    main()
