"""Text correction: a character-level corrector that maps a misspelt word back to the word
meant, trained on a Debian word list with synthetic typos.

Data: ``/usr/share/dict/american-english`` from Debian's wamerican package
(``scripts/ensure_wordlist.sh`` installs it). ``VOCABULARY`` words of 4-9 lower-case letters are
drawn from it with the seed. Typos are one edit (80 %) or two: a neighbouring key on a QWERTY
keyboard or a random letter substituted, a letter deleted, a letter inserted (a neighbour of
the one beside it, or a doubled letter), or two adjacent letters swapped; one sample in ten is
left correct (the corrector must leave it alone). Training sees fresh typos every epoch; the
committed samples are typos drawn from a generator training never uses.

Model: character ids [N, 14] int64 (``encode``: ``^word$`` padded with 0) -> character bigram
and skip-bigram ids computed in the graph -> embedding tables summed (Gather + ReduceSum, i.e.
a learned bag of character n-grams, which is insensitive to where an insertion or deletion
shifted the letters) -> bias, ReLU -> Gemm to one logit per vocabulary word.

    python -m tools.evalmodels.textfix [--seed 0]
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from onnx import helper

from tools.evalmodels import export
from tools.evalmodels.nn import F32, Adam, accuracy, he, minibatches, softmax_xent

NAME = "typo-corrector"
WORDLIST = Path("/usr/share/dict/american-english")
VOCABULARY = 1000
MIN_LEN, MAX_LEN = 4, 9
LENGTH = MAX_LEN + 2 + 3  # ^, $ and room for up to two inserted letters, one spare
PAD, BOS, EOS = 0, 1, 2
ALPHABET = string.ascii_lowercase
SYMBOLS = 3 + len(ALPHABET)
PAIRS = SYMBOLS * SYMBOLS
HIDDEN = 192
EPOCHS = 20
TYPOS_PER_WORD = 24
TEST_PER_WORD = 2
CLEAN_SHARE = 0.1

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours() -> dict[str, str]:
    """Keys touching each key on a QWERTY keyboard (same row and the rows above and below)."""
    where = {c: (r, i) for r, row in enumerate(_ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in where.items():
        near = []
        for d, (r2, i2) in where.items():
            if d != c and abs(r2 - r) <= 1 and abs((i2 + 0.5 * r2) - (i + 0.5 * r)) <= 1.0:
                near.append(d)
        out[c] = "".join(sorted(near))
    return out


NEIGHBOURS = _neighbours()


def load_vocabulary(seed: int, path: Path = WORDLIST) -> list[str]:
    """``VOCABULARY`` distinct words of 4-9 letters a-z, chosen with ``seed``, sorted."""
    words = sorted(
        {
            w
            for w in path.read_text(encoding="utf-8").split()
            if MIN_LEN <= len(w) <= MAX_LEN and all(c in ALPHABET for c in w)
        }
    )
    chosen = np.random.default_rng(seed).choice(len(words), size=VOCABULARY, replace=False)
    return sorted(words[i] for i in chosen)


def typo(word: str, rng: np.random.Generator) -> str:
    """One random edit of ``word`` (never longer than MAX_LEN + 1, never shorter than 2)."""
    w = list(word)
    kind = rng.integers(4) if len(w) > 2 else 1 + 2 * int(rng.integers(2))  # short: no delete
    i = int(rng.integers(len(w)))
    if kind == 0:  # delete
        del w[i]
    elif kind == 1:  # substitute: a neighbouring key mostly, any letter sometimes
        pool = NEIGHBOURS[w[i]] if rng.random() < 0.8 else ALPHABET.replace(w[i], "")
        w[i] = pool[int(rng.integers(len(pool)))]
    elif kind == 2:  # insert: a doubled letter or a key next to its neighbour
        if rng.random() < 0.3:
            w.insert(i, w[i])
        else:
            near = NEIGHBOURS[w[i]]
            w.insert(i + int(rng.integers(2)), near[int(rng.integers(len(near)))])
    elif len(w) > 1:  # swap two adjacent letters
        j = min(i, len(w) - 2)
        w[j], w[j + 1] = w[j + 1], w[j]
    return "".join(w)


def corrupt(word: str, rng: np.random.Generator) -> str:
    """A training or test input for ``word``: unchanged, one typo, or two."""
    r = rng.random()
    if r < CLEAN_SHARE:
        return word
    out = typo(word, rng)
    if r > 1 - 0.2 * (1 - CLEAN_SHARE):
        out = typo(out, rng)
    return out


def encode(words: list[str]) -> NDArray[np.int64]:
    """``^word$`` as symbol ids, padded with PAD to LENGTH; refuses what does not fit."""
    out = np.zeros((len(words), LENGTH), np.int64)
    for n, w in enumerate(words):
        if len(w) + 2 > LENGTH or any(c not in ALPHABET for c in w):
            raise ValueError(f"word {w!r}: must be a-z only and at most {LENGTH - 2} letters")
        ids = [BOS, *(3 + ALPHABET.index(c) for c in w), EOS]
        out[n, : len(ids)] = ids
    return out


def ngram_counts(ids: NDArray[np.int64], gap: int) -> F32:
    """[N, PAIRS] counts of symbol pairs ``gap`` apart: what Gather + ReduceSum computes."""
    pairs = ids[:, :-gap] * SYMBOLS + ids[:, gap:]
    rows = np.repeat(np.arange(len(ids)), pairs.shape[1])
    flat = np.bincount(rows * PAIRS + pairs.ravel(), minlength=len(ids) * PAIRS)
    return flat.reshape(len(ids), PAIRS).astype(np.float32)


def forward(p: dict[str, F32], ids: NDArray[np.int64]) -> F32:
    h0 = ngram_counts(ids, 1) @ p["e1"] + ngram_counts(ids, 2) @ p["e2"] + p["b1"]
    out: F32 = np.maximum(h0, 0) @ p["w2"] + p["b2"]
    return out


def samples(
    vocab: list[str], per_word: int, rng: np.random.Generator
) -> tuple[list[str], NDArray[np.int64]]:
    texts, labels = [], []
    for label, word in enumerate(vocab):
        for _ in range(per_word):
            texts.append(corrupt(word, rng))
            labels.append(label)
    return texts, np.array(labels, np.int64)


def train(vocab: list[str], seed: int, epochs: int) -> dict[str, F32]:
    rng = np.random.default_rng([seed, 0])
    k = len(vocab)
    p = {
        "e1": (rng.standard_normal((PAIRS, HIDDEN)) * 0.1).astype(np.float32),
        "e2": (rng.standard_normal((PAIRS, HIDDEN)) * 0.1).astype(np.float32),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": he(rng, HIDDEN, (HIDDEN, k)),
        "b2": np.zeros(k, np.float32),
    }
    opt = Adam(p, lr=2e-3)
    for epoch in range(epochs):
        opt.lr = 2e-3 * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
        texts, y = samples(vocab, TYPOS_PER_WORD, rng)
        ids = encode(texts)
        losses = []
        for b in minibatches(len(y), 256, rng):
            c1, c2 = ngram_counts(ids[b], 1), ngram_counts(ids[b], 2)
            h0 = c1 @ p["e1"] + c2 @ p["e2"] + p["b1"]
            h = np.maximum(h0, 0)
            loss, dz = softmax_xent(h @ p["w2"] + p["b2"], y[b])
            losses.append(loss)
            dh = (dz @ p["w2"].T) * (h0 > 0)
            opt.step(
                {
                    "w2": h.T @ dz,
                    "b2": dz.sum(0),
                    "e1": c1.T @ dh,
                    "e2": c2.T @ dh,
                    "b1": dh.sum(0),
                }
            )
        print(f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f}", flush=True)
    return p


def to_onnx(p: dict[str, F32]) -> Any:
    def pair_ids(gap: int) -> list[Any]:
        g = str(gap)
        return [
            helper.make_node("Slice", ["chars", "zero", f"end_{g}", "axis1"], [f"left_{g}"]),
            helper.make_node("Slice", ["chars", f"start_{g}", "big", "axis1"], [f"right_{g}"]),
            helper.make_node("Mul", [f"left_{g}", "symbols"], [f"scaled_{g}"]),
            helper.make_node("Add", [f"scaled_{g}", f"right_{g}"], [f"pairs_{g}"]),
            helper.make_node("Gather", [f"e{g}", f"pairs_{g}"], [f"emb_{g}"], axis=0),
            helper.make_node("ReduceSum", [f"emb_{g}", "axis1"], [f"bag_{g}"], keepdims=0),
        ]

    i64 = np.int64
    nodes = [
        *pair_ids(1),
        *pair_ids(2),
        helper.make_node("Add", ["bag_1", "bag_2"], ["bags"]),
        helper.make_node("Add", ["bags", "b1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"]),
    ]
    inits = [
        export.const("zero", np.array([0], i64)),
        export.const("axis1", np.array([1], i64)),
        export.const("big", np.array([LENGTH], i64)),
        export.const("symbols", np.array(SYMBOLS, i64)),
        export.const("end_1", np.array([LENGTH - 1], i64)),
        export.const("start_1", np.array([1], i64)),
        export.const("end_2", np.array([LENGTH - 2], i64)),
        export.const("start_2", np.array([2], i64)),
        *(export.const(k, v) for k, v in p.items()),
    ]
    return export.make_model(
        NAME,
        nodes,
        [export.value_info("chars", export.INT64, ["batch", LENGTH])],
        [export.value_info("logits", export.FLOAT, ["batch", len(p["b2"])])],
        inits,
        "Character-level word corrector (bag of character bigrams and skip-bigrams) trained "
        "by tools.evalmodels.textfix on a Debian word list with synthetic typos",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    if not WORDLIST.is_file():
        raise SystemExit(f"{WORDLIST} is missing: run scripts/ensure_wordlist.sh")
    vocab = load_vocabulary(args.seed)
    params = train(vocab, args.seed, args.epochs)
    # Its own generator stream: no held-out typo is drawn from the training stream.
    texts, labels = samples(vocab, TEST_PER_WORD, np.random.default_rng([args.seed, 1]))
    ids = encode(texts)
    print(f"held-out accuracy in numpy {accuracy(forward(params, ids), labels):.4f}")
    changed = sum(t != vocab[y] for t, y in zip(texts, labels, strict=True))
    export.write(
        to_onnx(params),
        stored={"chars": ids, "text": np.array(texts)},
        feeds={"chars": ids},
        labels=labels,
        card={
            "name": NAME,
            "scenario": "text-correction",
            "aliases": ["typo"],
            "task": f"return the intended word (one of {len(vocab)}) for a possibly misspelt word",
            "metric": "word accuracy (corrected word equals the intended word)",
            "inputs": {"chars": {"stored": "int64", "scale": 1.0}},
            "output": "logits",
            "classes": vocab,
            "data_source": "Debian wamerican /usr/share/dict/american-english "
            f"({len(vocab)} words of {MIN_LEN}-{MAX_LEN} letters drawn with the seed), "
            "synthetic typos (QWERTY-neighbour or random substitution, deletion, insertion, "
            f"adjacent swap; 80 % one edit, 20 % two, {CLEAN_SHARE:.0%} left correct); "
            f"{changed} of the {len(labels)} held-out inputs are misspelt",
            "encoding": "^word$ as ids (0 pad, 1 '^', 2 '$', 3.. 'a'-'z') padded to "
            f"{LENGTH} (tools/evalmodels/textfix.py encode)",
            "training": {
                "command": f"python -m tools.evalmodels.textfix --seed {args.seed} "
                f"--epochs {args.epochs}",
                "library": "numpy (Adam, softmax cross-entropy, cosine learning rate)",
                "seed": args.seed,
                "train_samples_per_epoch": len(vocab) * TYPOS_PER_WORD,
                "epochs": args.epochs,
            },
        },
    )


if __name__ == "__main__":
    main()
