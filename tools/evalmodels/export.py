"""Writing a trained model where the evaluator finds it: ONNX file, held-out samples, card.

The card's fp32 accuracy is measured here with onnxruntime on the exported file and the
committed samples (not taken from the training loop), so it is the figure a test can check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper

MODELS_DIR = Path(__file__).resolve().parents[2] / "services" / "evaluator" / "data" / "models"
OPSET = 17
IR_VERSION = 8


def make_model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    doc: str,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="pocgrid tools.evalmodels",
        doc_string=doc,
    )
    # Pinned so the file loads in every onnxruntime the constraints allow.
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def const(name: str, value: NDArray[Any]) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.ascontiguousarray(value), name)


def value_info(name: str, elem: int, dims: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def fp32_logits(model: onnx.ModelProto, feeds: Mapping[str, NDArray[Any]]) -> NDArray[Any]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, dict(feeds))[0])


def write(
    model: onnx.ModelProto,
    stored: Mapping[str, NDArray[Any]],
    feeds: Mapping[str, NDArray[Any]],
    labels: NDArray[np.int64],
    card: dict[str, Any],
) -> Path:
    """Write ``model``, the samples (``stored`` arrays as kept on disk, ``feeds`` as the model
    takes them) and the card; returns the model's folder."""
    name = str(card["name"])
    folder = MODELS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    arrays: dict[str, Any] = {"labels": labels.astype(np.int64), **stored}
    np.savez_compressed(folder / "samples.npz", **arrays)
    logits = fp32_logits(model, feeds)
    correct = int(np.sum(np.argmax(logits, axis=1) == labels))
    card = {
        **card,
        "samples": len(labels),
        "fp32_correct": correct,
        "fp32_accuracy": round(correct / len(labels), 4),
        "model_bytes": len(data),
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "opset": OPSET,
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(
        f"{name}: {len(data) / 1024:.0f} KiB, fp32 accuracy on the {len(labels)} held-out "
        f"samples {correct / len(labels):.4f} -> {folder}"
    )
    return folder
