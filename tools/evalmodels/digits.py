"""Image classification: an MLP on scikit-learn's 8x8 handwritten digits.

Data: ``sklearn.datasets.load_digits`` (the UCI "Optical Recognition of Handwritten Digits"
test set, 1,797 images of 8x8 pixels in 17 grey levels, shipped inside scikit-learn, so no
download). A seeded stratified split holds out 20 % as the committed sample set. scikit-learn
is needed only here (``pip install -e '.[train]'``); the runtime reads the committed samples.

Model: image [N, 1, 8, 8] (pixels / 16) -> Flatten -> 64 -> ReLU -> 64 -> 10 logits.

    python -m tools.evalmodels.digits [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tools.evalmodels import export
from tools.evalmodels.nn import F32, Adam, accuracy, he, minibatches, softmax_xent

NAME = "digits-mlp"
HIDDEN = 64
EPOCHS = 60
HELD_OUT = 0.2


def load() -> tuple[F32, NDArray[np.int64]]:
    """The digits as [N, 1, 8, 8] float32 in [0, 1] and their labels."""
    datasets: Any = importlib.import_module("sklearn.datasets")
    bunch = datasets.load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    return images, np.asarray(bunch.target, dtype=np.int64)


def split(labels: NDArray[np.int64], seed: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Stratified: the same share of every class held out, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(len(idx) * HELD_OUT)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def train(x: F32, y: NDArray[np.int64], seed: int, epochs: int = EPOCHS) -> dict[str, F32]:
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    d = flat.shape[1]
    p = {
        "w1": he(rng, d, (d, HIDDEN)),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": he(rng, HIDDEN, (HIDDEN, 10)),
        "b2": np.zeros(10, np.float32),
    }
    opt = Adam(p, lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for b in minibatches(len(flat), 32, rng):
            h0 = flat[b] @ p["w1"] + p["b1"]
            h = np.maximum(h0, 0)
            _, dz = softmax_xent(h @ p["w2"] + p["b2"], y[b])
            dh = (dz @ p["w2"].T) * (h0 > 0)
            opt.step(
                {
                    "w2": h.T @ dz,
                    "b2": dz.sum(0),
                    "w1": flat[b].T @ dh,
                    "b1": dh.sum(0),
                }
            )
    return p


def forward(p: dict[str, F32], x: F32) -> F32:
    h = np.maximum(x.reshape(len(x), -1) @ p["w1"] + p["b1"], 0)
    out: F32 = h @ p["w2"] + p["b2"]
    return out


def to_onnx(p: dict[str, F32]) -> Any:
    from onnx import helper

    nodes = [
        helper.make_node("Flatten", ["image"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["logits"]),
    ]
    return export.make_model(
        NAME,
        nodes,
        [export.value_info("image", export.FLOAT, ["batch", 1, 8, 8])],
        [export.value_info("logits", export.FLOAT, ["batch", 10])],
        [export.const(k, v) for k, v in p.items()],
        "Handwritten digit classifier (8x8, pixels/16) trained by tools.evalmodels.digits",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x, y = load()
    tr, te = split(y, args.seed)
    params = train(x[tr], y[tr], args.seed)
    print(f"train accuracy {accuracy(forward(params, x[tr]), y[tr]):.4f}")
    export.write(
        to_onnx(params),
        stored={"image": x[te]},
        feeds={"image": x[te]},
        labels=y[te],
        card={
            "name": NAME,
            "scenario": "image-classification",
            "aliases": ["digits"],
            "task": "classify an 8x8 handwritten digit (0-9)",
            "metric": "top-1 accuracy",
            "inputs": {"image": {"stored": "float32", "scale": 1.0}},
            "output": "logits",
            "classes": [str(i) for i in range(10)],
            "data_source": "scikit-learn load_digits (UCI Optical Recognition of Handwritten "
            "Digits, 1,797 8x8 images), a seeded stratified 80/20 split; the 20 % held out "
            "is samples.npz",
            "training": {
                "command": f"python -m tools.evalmodels.digits --seed {args.seed}",
                "library": "numpy (Adam, softmax cross-entropy)",
                "seed": args.seed,
                "train_samples": len(tr),
                "epochs": EPOCHS,
            },
        },
    )


if __name__ == "__main__":
    main()
