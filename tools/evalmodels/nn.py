"""The numpy pieces the training scripts share: seeded initialisation, Adam, softmax
cross-entropy and minibatches.

numpy alone trains models this small in seconds to minutes on two cores, and keeps training
deterministic for a seed (one BLAS, no autograd framework, no GPU nondeterminism).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]


def he(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]) -> F32:
    """He-normal weights: keeps ReLU activations' variance roughly constant layer to layer."""
    out: F32 = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


class Adam:
    """Adam (Kingma & Ba 2015) over a dict of float32 parameters, updated in place."""

    def __init__(
        self,
        params: Mapping[str, F32],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
    ) -> None:
        self.params = params
        self.lr = lr
        self.b1, self.b2 = betas
        self.weight_decay = weight_decay
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads: Mapping[str, NDArray[Any]]) -> None:
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        for k, p in self.params.items():
            g = grads[k].astype(np.float32)
            if self.weight_decay and p.ndim > 1:
                # Decoupled (AdamW) decay on weight matrices only, not biases.
                p -= self.lr * self.weight_decay * p
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            p -= (self.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + 1e-8)).astype(np.float32)


def softmax_xent(logits: F32, labels: NDArray[np.integer[Any]]) -> tuple[float, F32]:
    """Mean cross-entropy and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    loss = float(-np.log(p[np.arange(n), labels] + 1e-12).mean())
    p[np.arange(n), labels] -= 1.0
    return loss, (p / n).astype(np.float32)


def minibatches(n: int, size: int, rng: np.random.Generator) -> Iterator[NDArray[np.intp]]:
    order = rng.permutation(n)
    for start in range(0, n, size):
        yield order[start : start + size]


def accuracy(logits: NDArray[Any], labels: NDArray[np.integer[Any]]) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))
