"""The data and feature pipelines of the real models: what the graphs compute equals the numpy
steps training used, and the data generators do what their docstrings say, for a seed."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from tools.evalmodels import asr, audio, digits, export, textfix


def _run(model: onnx.ModelProto, feeds: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0], dtype=np.float32)


# -- speech ---------------------------------------------------------------------------------


def test_log_mel_graph_equals_numpy() -> None:
    nodes, inits = audio.log_mel_nodes("audio", "logmel")
    model = export.make_model(
        "fe",
        nodes,
        [export.value_info("audio", export.FLOAT, ["batch", audio.N_SAMPLES])],
        [export.value_info("logmel", export.FLOAT, ["batch", audio.FRAMES, audio.MELS])],
        inits,
        "features only",
    )
    x = (np.random.default_rng(3).standard_normal((4, audio.N_SAMPLES)) * 0.2).astype(np.float32)
    np.testing.assert_allclose(_run(model, {"audio": x}), audio.log_mel(x), atol=1e-4)


def test_frames_overlap_by_half_and_cover_the_window() -> None:
    x = np.arange(audio.N_SAMPLES, dtype=np.float32)[None]
    f = audio.frames(x)
    assert f.shape == (1, audio.FRAMES, audio.FRAME)
    assert f[0, 1, 0] == audio.HOP and f[0, -1, -1] == audio.N_SAMPLES - 1
    np.testing.assert_array_equal(f[0, 0, audio.HOP :], f[0, 1, : audio.HOP])


@pytest.mark.parametrize("hz", [312.5, 1000.0, 2500.0])
def test_a_tone_lights_the_mel_band_holding_its_frequency(hz: float) -> None:
    t = np.arange(audio.N_SAMPLES) / audio.SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]
    band = int(audio.log_mel(tone)[0].mean(axis=0).argmax())
    fft_bin = round(hz * audio.FRAME / audio.SAMPLE_RATE)
    assert band == int(audio.mel_filterbank()[fft_bin].argmax())


def test_log_mel_refuses_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"audio must be \[N, 8192\]"):
        audio.log_mel(np.zeros((1, 8000), np.float32))


def test_resample_keeps_a_tone_and_trim_drops_silence() -> None:
    rate = 22050
    t = np.arange(rate) / rate
    x = np.concatenate([np.zeros(rate // 2), np.sin(2 * np.pi * 440 * t), np.zeros(rate // 2)])
    y = asr.resample(x, rate, audio.SAMPLE_RATE)
    assert len(y) == 2 * audio.SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(spectrum.argmax() * audio.SAMPLE_RATE / len(y) - 440) < 1
    trimmed = asr.trim(y)
    assert abs(len(trimmed) - audio.SAMPLE_RATE) <= audio.SAMPLE_RATE // 50


def test_placement_is_seeded_in_range_and_at_the_asked_snr() -> None:
    speech = np.sin(np.linspace(0, 300, 4000)).astype(np.float32)
    a = asr.place(speech, np.random.default_rng([0, 1]))
    b = asr.place(speech, np.random.default_rng([0, 1]))
    assert a.shape == (audio.N_SAMPLES,) and np.array_equal(a, b)
    assert float(np.abs(a).max()) <= 1.0
    pcm = asr.to_pcm(a)
    np.testing.assert_allclose(asr.from_pcm(pcm), a, atol=1 / 32768)


def test_conv_windows_match_onnx_conv_order() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, audio.FRAMES, audio.MELS)).astype(np.float32)
    w = rng.standard_normal((asr.KERNEL * audio.MELS, asr.FILTERS)).astype(np.float32)
    ours = asr.windows(feats) @ w
    conv_w = w.T.reshape(asr.FILTERS, asr.KERNEL, audio.MELS)[:, None]
    from onnx import helper

    model = export.make_model(
        "conv",
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[asr.STRIDE, 1])],
        [export.value_info("x", export.FLOAT, [2, 1, audio.FRAMES, audio.MELS])],
        [
            export.value_info(
                "y",
                export.FLOAT,
                [2, asr.FILTERS, (audio.FRAMES - asr.KERNEL) // asr.STRIDE + 1, 1],
            )
        ],
        [export.const("w", np.ascontiguousarray(conv_w))],
        "conv",
    )
    theirs = _run(model, {"x": feats[:, None]})[:, :, :, 0].transpose(0, 2, 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_speech_training_is_deterministic_and_its_graph_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((40, audio.FRAMES, audio.MELS)).astype(np.float32)
    labels = rng.integers(0, len(asr.WORDS), 40)
    p1 = asr.train(feats, labels, seed=1, epochs=2)
    p2 = asr.train(feats, labels, seed=1, epochs=2)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    pcm = (rng.standard_normal((3, audio.N_SAMPLES)) * 3000).astype(np.int16)
    x = asr.from_pcm(pcm)
    mean = np.zeros(audio.MELS, np.float32)
    inv = np.full(audio.MELS, 0.5, np.float32)
    graph = _run(asr.to_onnx(p1, mean, inv), {"audio": x})
    numpy_logits, _ = asr.forward(p1, asr.windows((audio.log_mel(x) - mean) * inv))
    np.testing.assert_allclose(graph, numpy_logits, rtol=1e-3, atol=1e-3)


# -- text -----------------------------------------------------------------------------------


def _distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment) distance."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def test_a_typo_is_one_edit_and_seeded() -> None:
    rng = np.random.default_rng(0)
    words = ["keyboard", "zebra", "quiet", "moon"]
    typos = [(w, textfix.typo(w, rng)) for w in words for _ in range(200)]
    assert all(_distance(w, t) <= 1 for w, t in typos)
    assert sum(w != t for w, t in typos) > 0.9 * len(typos)  # a swap of equal letters is none
    again = np.random.default_rng(0)
    assert [t for _, t in typos] == [textfix.typo(w, again) for w in words for _ in range(200)]


def test_corruption_mix_and_keyboard_neighbours() -> None:
    rng = np.random.default_rng(1)
    outs = [textfix.corrupt("keyboard", rng) for _ in range(2000)]
    clean = sum(o == "keyboard" for o in outs) / len(outs)
    assert 0.07 < clean < 0.16
    # Two edits: at most 2 apart, except where the second edit undoes or overlaps the first
    # (the optimal-string-alignment distance can then count 3 for a swap plus an edit).
    distances = [_distance("keyboard", o) for o in outs]
    assert max(distances) <= 3 and 2 in distances
    assert sum(d <= 2 for d in distances) > 0.99 * len(outs)
    assert textfix.NEIGHBOURS["s"] == "adewxz" and "g" in textfix.NEIGHBOURS["h"]


def test_encode_and_ngram_counts_match_the_graph() -> None:
    ids = textfix.encode(["cat", "keyboardss"])
    assert ids[0, :5].tolist() == [textfix.BOS, 3 + 2, 3 + 0, 3 + 19, textfix.EOS]
    assert ids[0, 5:].sum() == 0
    with pytest.raises(ValueError, match="a-z only"):
        textfix.encode(["Cat"])
    rng = np.random.default_rng(2)
    k = 7
    p = {
        "e1": rng.standard_normal((textfix.PAIRS, 8)).astype(np.float32),
        "e2": rng.standard_normal((textfix.PAIRS, 8)).astype(np.float32),
        "b1": rng.standard_normal(8).astype(np.float32),
        "w2": rng.standard_normal((8, k)).astype(np.float32),
        "b2": rng.standard_normal(k).astype(np.float32),
    }
    counts = textfix.ngram_counts(ids, 1)
    assert counts.sum(axis=1).tolist() == [textfix.LENGTH - 1] * 2
    np.testing.assert_allclose(
        _run(textfix.to_onnx(p), {"chars": ids}), textfix.forward(p, ids), rtol=1e-4, atol=1e-4
    )


def test_corrector_training_is_deterministic() -> None:
    vocab = ["apple", "banana", "cherry", "grape", "lemon", "mango"]
    p1 = textfix.train(vocab, seed=2, epochs=1)
    p2 = textfix.train(vocab, seed=2, epochs=1)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert p1["w2"].shape == (textfix.HIDDEN, len(vocab))


def test_vocabulary_is_seeded_and_filtered(tmp_path) -> None:
    words = tmp_path / "words"
    lines = [f"w{'a' * (i % 7)}{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(3000)]
    words.write_text("\n".join([*lines, "Apple", "it's", "ab", "abcdefghijk"]) + "\n")
    v1 = textfix.load_vocabulary(3, words)
    assert v1 == textfix.load_vocabulary(3, words) != textfix.load_vocabulary(4, words)
    assert len(v1) == textfix.VOCABULARY and v1 == sorted(v1)
    assert all(
        textfix.MIN_LEN <= len(w) <= textfix.MAX_LEN and w.isalpha() and w.islower() for w in v1
    )


# -- digits ---------------------------------------------------------------------------------


def test_digit_split_is_stratified_and_training_deterministic() -> None:
    labels = np.repeat(np.arange(10), 50)
    train, test = digits.split(labels, seed=0)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 500
    assert np.bincount(labels[test]).tolist() == [10] * 10
    x = np.random.default_rng(0).random((100, 1, 8, 8)).astype(np.float32)
    y = np.arange(100) % 10
    p1, p2 = digits.train(x, y, 0, epochs=2), digits.train(x, y, 0, epochs=2)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    np.testing.assert_allclose(
        _run(digits.to_onnx(p1), {"image": x}), digits.forward(p1, x), rtol=1e-4, atol=1e-4
    )
