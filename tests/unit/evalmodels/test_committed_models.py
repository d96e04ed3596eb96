"""The real models kept in the repo: each loads, passes the ONNX checker, matches its card and
reaches the fp32 accuracy its card documents on the committed held-out samples."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

from pocgrid.catalog import default_catalog
from services.evaluator.accuracy import fp32_reference
from services.evaluator.realmodels import (
    RealModelError,
    load_real_model,
    real_model_for_scenario,
    real_model_names,
)

SCENARIOS = {"image-classification", "asr", "text-correction"}
#: The smallest documented fp32 accuracy each scenario's model must keep (a retrain that falls
#: below these is a worse model, not a new figure to record).
FLOORS = {"image-classification": 0.95, "asr": 0.85, "text-correction": 0.80}
MAX_MODEL_BYTES = 4 * 1024 * 1024


def test_one_model_per_real_scenario() -> None:
    names = real_model_names()
    scenarios = [load_real_model(n).card.scenario for n in names]
    assert set(scenarios) == SCENARIOS and len(scenarios) == len(set(scenarios))


@pytest.mark.parametrize("name", real_model_names())
def test_model_checks_and_reaches_its_documented_fp32_accuracy(name: str) -> None:
    real = load_real_model(name)
    model = onnx.load_model_from_string(real.model)
    onnx.checker.check_model(model, full_check=True)
    assert len(real.model) < MAX_MODEL_BYTES, "must fit a RunTask request with samples"
    assert hashlib.sha256(real.model).hexdigest() == real.card.model_sha256
    assert [o.name for o in model.graph.output] == [real.card.output]
    # Every op is native on every emulated chip: the accuracy table needs no supplementation.
    catalog = default_catalog()
    ops = {n.op_type for n in model.graph.node}
    for chip in catalog.chips:
        if chip.emulatable:
            assert ops <= catalog.native_operators(chip), (
                chip.name,
                ops - catalog.native_operators(chip),
            )
    ref = fp32_reference(real.model, real.samples)
    correct = int(np.sum(ref.predictions == real.samples.labels))
    # onnxruntime builds may differ in the last bit of a logit; one flipped near-tie at most.
    assert abs(correct - real.card.fp32_correct) <= 1
    assert real.card.fp32_accuracy >= FLOORS[real.card.scenario]
    assert int(real.samples.labels.max()) < len(real.card.classes)
    assert set(np.unique(real.samples.labels)) == set(range(len(real.card.classes))) or (
        real.card.scenario == "text-correction"
    )


def test_lookup_by_scenario_and_unknown_names() -> None:
    asr = real_model_for_scenario("asr")
    assert asr is not None and asr.card.scenario == "asr"
    assert real_model_for_scenario("llm-chat") is None  # no weights here: accuracy not measured
    for key, name in [
        ("digits", "digits-mlp"),
        ("image-classification", "digits-mlp"),
        ("typo-corrector", "typo-corrector"),
        ("text-correction", "typo-corrector"),
        ("speech-commands", "speech-commands-cnn"),
    ]:
        found = real_model_for_scenario(key)
        assert found is not None and found.card.name == name
    with pytest.raises(RealModelError, match="no real model 'nope'"):
        load_real_model("nope")


def test_speech_samples_are_scaled_pcm() -> None:
    audio = load_real_model("speech-commands-cnn").samples.inputs["audio"]
    assert audio.dtype == np.float32 and float(np.abs(audio).max()) <= 1.0
    # int16 / 32768 exactly: every value times 32768 is an integer.
    assert np.array_equal(audio * 32768, np.round(audio * 32768))


def test_corrector_samples_carry_their_text() -> None:
    real = load_real_model("typo-corrector")
    assert len(real.texts) == real.samples.count
    misspelt = sum(
        t != real.card.classes[y] for t, y in zip(real.texts, real.samples.labels, strict=True)
    )
    assert 0.8 * real.samples.count <= misspelt < real.samples.count
