"""The pure steps of the accuracy measurement: batching under the message limit, scoring,
task ids, and the checks on a sample set."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from services.evaluator.accuracy import (
    MESSAGE_MARGIN_BYTES,
    AccuracyInputError,
    LabelledSamples,
    PrecisionAccuracy,
    plan_batches,
    predictions,
    score,
    task_ids,
)


def _covers(parts: list[slice], n: int) -> bool:
    rows = [i for p in parts for i in range(p.start, p.stop)]
    return rows == list(range(n))


def test_batches_fit_the_request_and_response_limits() -> None:
    limit = 1024 * 1024
    parts = plan_batches(1000, 10_000, 40, 200_000, max_message_bytes=limit, max_batch=1000)
    assert _covers(parts, 1000)
    room = limit - MESSAGE_MARGIN_BYTES
    assert all(200_000 + (p.stop - p.start) * 10_000 <= room for p in parts)
    # Even batches: sizes differ by at most one row.
    sizes = {p.stop - p.start for p in parts}
    assert max(sizes) - min(sizes) <= 1
    # A wide output bounds the batch too (the response has the same limit).
    wide = plan_batches(1000, 4, 100_000, 0, max_message_bytes=limit, max_batch=1000)
    assert all((p.stop - p.start) * 100_000 <= room for p in wide) and _covers(wide, 1000)


def test_batches_honour_max_batch_and_small_sets() -> None:
    assert plan_batches(10, 4, 4, 0) == [slice(0, 10)]
    parts = plan_batches(1000, 4, 4, 0, max_batch=256)
    assert len(parts) == 4 and _covers(parts, 1000)


def test_batches_refuse_what_cannot_fit() -> None:
    with pytest.raises(AccuracyInputError, match="do not fit a RunTask request") as err:
        plan_batches(10, 100, 4, 4 * 1024 * 1024)
    assert err.value.field == "model"
    with pytest.raises(AccuracyInputError, match="at least one sample"):
        plan_batches(0, 4, 4, 0)
    with pytest.raises(AccuracyInputError, match="max_batch"):
        plan_batches(10, 4, 4, 0, max_batch=0)


def test_score_counts_correct_and_agreement() -> None:
    labels = np.array([0, 1, 2, 3])
    ref = np.array([0, 1, 2, 0])
    got = np.array([0, 1, 0, 3])
    assert score(got, labels, ref) == (3, 0.75, 0.5)
    with pytest.raises(AccuracyInputError, match="3 predictions for 4 labels"):
        score(got[:3], labels, ref)


def test_predictions_are_argmax_of_a_2d_output() -> None:
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.5, 0.5]], np.float32)
    assert predictions(logits).tolist() == [1, 0, 0]  # a tie goes to the first class
    with pytest.raises(AccuracyInputError, match=r"must be \[N, classes\]"):
        predictions(np.zeros(3))


def test_task_ids_are_valid_stable_and_distinct() -> None:
    ids = task_ids("eval-42", "ab" * 32, "fp16", 12)
    assert ids[0] == "eval-42-abababababababab-fp16-00" and len(set(ids)) == 12
    assert ids == task_ids("eval-42", "ab" * 32, "fp16", 12)
    assert all(len(i) <= 63 for i in ids)
    assert task_ids("eval-42", "ab" * 32, "int8", 12)[0] != ids[0]
    for bad in ("Eval", "-x", "x" * 60, ""):
        with pytest.raises(AccuracyInputError) as err:
            task_ids(bad, "ab" * 32, "fp16", 12)
        assert err.value.field == "task_prefix"


def test_sample_sets_are_checked() -> None:
    x = np.zeros((4, 3), np.float32)
    ok = LabelledSamples(inputs={"x": x}, labels=np.arange(4), output="y")
    assert ok.count == 4 and ok.row_bytes() == 12
    assert (
        ok.digest()
        == LabelledSamples(inputs={"x": x.copy()}, labels=np.arange(4), output="y").digest()
    )
    assert (
        ok.digest()
        != LabelledSamples(inputs={"x": x}, labels=np.arange(4)[::-1], output="y").digest()
    )
    cases: list[tuple[dict[str, NDArray[Any]], NDArray[Any], str, str]] = [
        ({}, np.arange(4), "y", "samples.inputs"),
        ({"x": x}, np.arange(3), "y", "samples.inputs[x]"),
        ({"x": x.astype(np.float64)}, np.arange(4), "y", "samples.inputs[x]"),
        ({"x": x}, np.zeros(4, np.float32), "y", "samples.labels"),
        ({"x": x}, np.arange(4), "", "samples.output"),
    ]
    for inputs, labels, output, field in cases:
        with pytest.raises(AccuracyInputError) as err:
            LabelledSamples(inputs=inputs, labels=labels, output=output)
        assert err.value.field == field


def test_a_refused_precision_has_no_accuracy_and_says_why() -> None:
    r = PrecisionAccuracy(
        chip="c", precision="fp8", samples=4, correct=None, accuracy=None,
        reference_accuracy=0.9, agreement=None, numerics="", batches=0,
        busy_device_seconds=0.0, reason="INVALID_ARGUMENT: precision: fp8 is not supported",
    )  # fmt: skip
    assert not r.measured and r.accuracy_delta is None
    assert r.to_dict()["reason"].startswith("INVALID_ARGUMENT")
    measured = PrecisionAccuracy(
        chip="c", precision="fp16", samples=4, correct=3, accuracy=0.75,
        reference_accuracy=1.0, agreement=0.75, numerics="n", batches=1,
        busy_device_seconds=1e-3,
    )  # fmt: skip
    assert measured.to_dict()["accuracy_delta"] == pytest.approx(-0.25)
