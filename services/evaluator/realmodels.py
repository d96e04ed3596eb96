"""The small real models kept in the repo (``data/models/<name>/``), with their held-out
labelled samples, as the accuracy measurement takes them.

Each folder holds ``model.onnx``, ``samples.npz`` (``labels`` and one array per graph input,
stored as the card's ``inputs`` say) and ``card.json`` (scenario, metric, class names, data
source, the training command, the fp32 accuracy measured on these samples, the file's
SHA-256). ``tools/evalmodels/`` made them; nothing here needs the training dependencies.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final, cast

import numpy as np
from numpy.typing import NDArray

from services.evaluator.accuracy import LabelledSamples

MODELS_DIR: Final = "data/models"


class RealModelError(ValueError):
    """A model folder that is missing, incomplete or does not match its card."""


@dataclass(frozen=True, slots=True)
class ModelCard:
    name: str
    scenario: str
    """The atomic scenario it serves, e.g. ``asr``."""
    task: str
    metric: str
    classes: tuple[str, ...]
    output: str
    fp32_accuracy: float
    """Measured with onnxruntime fp32 on the committed samples when the model was written."""
    fp32_correct: int
    samples: int
    data_source: str
    training_command: str
    model_sha256: str
    raw: dict[str, Any]
    """The whole card, for reports."""


@dataclass(frozen=True, slots=True)
class RealModel:
    card: ModelCard
    model: bytes
    """The ONNX ModelProto bytes, as RunTask carries them."""
    samples: LabelledSamples
    texts: tuple[str, ...]
    """Human-readable inputs where the card stores them (the corrector's misspelt words)."""


def _root() -> Traversable:
    return resources.files("services.evaluator").joinpath(MODELS_DIR)


def real_model_names() -> tuple[str, ...]:
    return tuple(
        sorted(
            p.name for p in _root().iterdir() if p.is_dir() and p.joinpath("card.json").is_file()
        )
    )


def _card(data: dict[str, Any]) -> ModelCard:
    try:
        return ModelCard(
            name=str(data["name"]),
            scenario=str(data["scenario"]),
            task=str(data["task"]),
            metric=str(data["metric"]),
            classes=tuple(str(c) for c in data["classes"]),
            output=str(data["output"]),
            fp32_accuracy=float(data["fp32_accuracy"]),
            fp32_correct=int(data["fp32_correct"]),
            samples=int(data["samples"]),
            data_source=str(data["data_source"]),
            training_command=str(data["training"]["command"]),
            model_sha256=str(data["model_sha256"]),
            raw=data,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RealModelError(f"card of {data.get('name', '?')!r}: bad or missing {exc}") from None


def _inputs(card: ModelCard, stored: Any) -> dict[str, NDArray[Any]]:
    """Stored arrays -> the model's inputs: float inputs kept as integer PCM are scaled."""
    inputs: dict[str, NDArray[Any]] = {}
    for name, spec in cast("dict[str, dict[str, Any]]", card.raw["inputs"]).items():
        if name not in stored:
            raise RealModelError(f"{card.name}: samples.npz has no input {name!r}")
        array = np.asarray(stored[name])
        if str(array.dtype) != spec["stored"]:
            raise RealModelError(f"{card.name}: input {name!r} stored as {array.dtype}")
        if array.dtype.kind in "iu" and float(spec["scale"]) != 1.0:
            # e.g. 16-bit PCM -> float32 in [-1, 1): exact, since int16 / 2**15 fits float32.
            inputs[name] = (array.astype(np.float32) * np.float32(spec["scale"])).astype(np.float32)
        else:
            inputs[name] = array
    return inputs


def load_real_model(name: str) -> RealModel:
    folder = _root().joinpath(name)
    if not folder.joinpath("card.json").is_file():
        raise RealModelError(f"no real model {name!r} (known: {', '.join(real_model_names())})")
    card = _card(json.loads(folder.joinpath("card.json").read_text(encoding="utf-8")))
    model = folder.joinpath("model.onnx").read_bytes()
    if hashlib.sha256(model).hexdigest() != card.model_sha256:
        raise RealModelError(f"{name}: model.onnx does not match the SHA-256 on its card")
    with np.load(io.BytesIO(folder.joinpath("samples.npz").read_bytes()), allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    labels = np.asarray(stored["labels"], dtype=np.int64)
    texts = tuple(str(t) for t in stored["text"]) if "text" in stored else ()
    samples = LabelledSamples(inputs=_inputs(card, stored), labels=labels, output=card.output)
    if samples.count != card.samples:
        raise RealModelError(f"{name}: {samples.count} samples, the card says {card.samples}")
    return RealModel(card=card, model=model, samples=samples, texts=texts)


def real_model_for_scenario(key: str) -> RealModel | None:
    """The real model measuring a scenario's accuracy, or None: accuracy not measured.

    ``key`` is the scenario's name (``image-classification``, ``asr``, ``text-correction``), a
    model's name, or one of the aliases on its card (``digits``, ``speech-commands``,
    ``typo``), so a scenario file may name its accuracy task either way."""
    for name in real_model_names():
        data = json.loads(_root().joinpath(name, "card.json").read_text(encoding="utf-8"))
        if key in (data.get("scenario"), data.get("name"), *data.get("aliases", ())):
            return load_real_model(name)
    return None
