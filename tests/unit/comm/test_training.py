"""Hybrid training: the loss falls exactly as in one process; the proportional split wins."""

from __future__ import annotations

import numpy as np
import pytest

from pocgrid.comm.launch import RankSpec
from pocgrid.comm.plans import choose
from pocgrid.comm.topology import RankInfo, Topology
from pocgrid.comm.training import (
    MlpConfig,
    compute_model,
    loss_and_grad_sums,
    model_step,
    shares,
    split_batch,
    train_pool,
    train_single,
)

MIXED = [
    RankSpec("a100-80gb-sxm", 2),
    RankSpec("ascend-910b2", 2),
    RankSpec("mlu370-x8", 1),
    RankSpec("bi-v100", 1),
]


def test_data_parallel_loss_matches_one_process_and_proportional_wins() -> None:
    cfg = MlpConfig(inputs=32, hidden=128, samples=4096, batch=1024, steps=6)
    result = train_pool(MIXED, cfg)
    ref = np.array(result["single_process_losses"])
    assert ref[-1] < ref[0]
    for split in ("proportional", "equal"):
        v = result[split]
        assert v["ranks_agree"]
        assert np.allclose(v["losses"], ref, rtol=1e-10, atol=1e-12), split
        assert sum(v["counts"]) == cfg.batch
    prop, equal = result["proportional"], result["equal"]
    assert prop["counts"] != equal["counts"]
    assert prop["step"]["step_s"] < equal["step"]["step_s"]
    assert prop["step"]["efficiency"] > equal["step"]["efficiency"]


def test_split_follows_modelled_speed() -> None:
    cfg = MlpConfig(inputs=256, hidden=2048, batch=16384, samples=16384)
    models = [compute_model(cfg, s.chip, s.devices) for s in MIXED]
    counts = shares(cfg, models, "proportional")
    assert sum(counts) == cfg.batch
    speeds = [m.samples_per_s for m in models]
    assert np.allclose(np.array(counts) / cfg.batch, np.array(speeds) / sum(speeds), atol=1e-3)
    # Nearly equal finish times (the weight reads are a fixed cost per rank).
    times = [m.seconds(c) for m, c in zip(models, counts, strict=True)]
    assert max(times) / min(times) < 1.02
    topo = Topology([RankInfo(r, s.chip, s.devices) for r, s in enumerate(MIXED)])
    prop = model_step(cfg, topo, models, counts)
    equal = model_step(cfg, topo, models, shares(cfg, models, "equal"))
    assert prop.step_s < equal.step_s
    assert prop.allreduce_s == choose(topo, "all_reduce", cfg.params + 1, 4).seconds


def test_split_batch_is_exact() -> None:
    assert split_batch(10, [1, 1, 1]) == [4, 3, 3]
    assert split_batch(7, [0.0, 1.0]) == [0, 7]
    assert sum(split_batch(1001, [3.3, 1.1, 0.7, 9.0])) == 1001


def test_gradient_is_the_derivative_of_the_loss() -> None:
    cfg = MlpConfig(inputs=5, hidden=7, classes=3, samples=16, batch=16)
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s) for s in [(5, 7), (7,), (7, 3), (3,)]]
    x = rng.standard_normal((16, 5))
    y = rng.integers(0, 3, 16)
    _, grads = loss_and_grad_sums(params, x, y)
    eps = 1e-6
    for k in range(4):
        flat = params[k].reshape(-1)
        for i in (0, flat.size - 1):
            old = flat[i]
            flat[i] = old + eps
            up, _ = loss_and_grad_sums(params, x, y)
            flat[i] = old - eps
            down, _ = loss_and_grad_sums(params, x, y)
            flat[i] = old
            assert (up - down) / (2 * eps) == pytest.approx(grads[k].reshape(-1)[i], rel=1e-5)
    assert cfg.params == 5 * 7 + 7 + 7 * 3 + 3
    assert train_single(MlpConfig(steps=2, samples=64, batch=32))[0] > 0
