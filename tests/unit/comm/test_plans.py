"""Plans move the right data (checked by a numpy simulator) and cost what the alpha-beta
model says; a node's native collective costs what the performance model charges for TP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.comm import plans
from pocgrid.comm.plans import Plan
from pocgrid.comm.topology import NetworkConfig, RankInfo, Topology, library_name
from pocgrid.perf import LlmDeployment
from pocgrid.perf.collective import CollectiveKind
from pocgrid.perf.efficiency import GIGA


def topo(chips: list[str], network: NetworkConfig | None = None, **kw) -> Topology:
    return Topology([RankInfo(r, c, **kw) for r, c in enumerate(chips)], network)


def simulate(plan: Plan, bufs: list[np.ndarray]) -> None:
    """Run every rank's transfers step by step; sends read the state at the start of a step."""
    for step in plan.steps:
        written: dict[int, list[tuple[int, int]]] = {}
        for t in step:
            written.setdefault(t.dst, []).append((t.lo, t.hi))
        for t in step:  # no rank sends a range it also receives in the same step
            for lo, hi in written.get(t.src, []):
                assert t.hi <= lo or hi <= t.lo, (plan.algorithm, t)
        snapshot = [b.copy() for b in bufs]
        for t in step:
            if t.reduce:
                bufs[t.dst][t.lo : t.hi] += snapshot[t.src][t.lo : t.hi]
            else:
                bufs[t.dst][t.lo : t.hi] = snapshot[t.src][t.lo : t.hi]


MIXES = [
    ["a100-80gb-sxm"],
    ["a100-80gb-sxm", "ascend-910b2"],
    ["ascend-910b2", "a100-80gb-sxm", "ascend-910b2"],
    ["ascend-910b2", "a100-80gb-sxm", "mlu370-x8", "ascend-910b2", "a100-80gb-sxm"],
    ["rtx-4090"] * 7,
    ["ascend-910b2", "a100-80gb-sxm"] * 4 + ["mlu370-x8"],
]


@pytest.mark.parametrize("chips", MIXES, ids=lambda c: str(len(c)))
@pytest.mark.parametrize("n", [1, 2, 7, 64, 1001])
def test_all_reduce_plans_sum_everything(chips: list[str], n: int) -> None:
    t = topo(chips)
    p = t.size
    inputs = [np.arange(n, dtype=np.int64) * (r + 1) + r for r in range(p)]
    want = sum(inputs)
    for algo in plans.CANDIDATES["all_reduce"]:
        bufs = [x.copy() for x in inputs]
        simulate(plans.build(t, "all_reduce", algo, n, 8), bufs)
        for b in bufs:
            assert np.array_equal(b, want), algo


@pytest.mark.parametrize("chips", MIXES, ids=lambda c: str(len(c)))
def test_other_collectives(chips: list[str]) -> None:
    t = topo(chips)
    p, count = t.size, 5
    inputs = [np.arange(count * p, dtype=np.int64) + 100 * r for r in range(p)]
    bufs = [x.copy() for x in inputs]
    simulate(plans.build(t, "reduce_scatter", "ring", count * p, 8), bufs)
    total = np.sum(inputs, axis=0)
    for r in range(p):
        assert np.array_equal(
            bufs[r][r * count : (r + 1) * count], total[r * count : (r + 1) * count]
        )
    bufs = [np.zeros(count * p, dtype=np.int64) for _ in range(p)]
    for r in range(p):
        bufs[r][r * count : (r + 1) * count] = r + 1
    simulate(plans.build(t, "all_gather", "ring", count * p, 8), bufs)
    want = np.repeat(np.arange(1, p + 1), count)
    assert all(np.array_equal(b, want) for b in bufs)
    for root in range(p):
        for algo in ("tree", "pipeline"):
            bufs = [np.full(3000, -1, dtype=np.int64) for _ in range(p)]
            bufs[root][:] = np.arange(3000)
            simulate(plans.build(t, "broadcast", algo, 3000, 8, root), bufs)
            assert all(np.array_equal(b, np.arange(3000)) for b in bufs), (algo, root)


@pytest.mark.parametrize("chips", MIXES[1:], ids=lambda c: str(len(c)))
@pytest.mark.parametrize("round_elements", [1, 3, 50])
def test_rounds_move_the_same_data_as_the_plan(chips: list[str], round_elements: int) -> None:
    t = topo(chips)
    p = t.size
    n = 101 * p
    inputs = [np.arange(n, dtype=np.int64) * (r + 2) + 7 * r for r in range(p)]
    cases: list[tuple[CollectiveKind, str, int]]
    cases = [("all_reduce", a, 0) for a in plans.CANDIDATES["all_reduce"]]
    cases += [("reduce_scatter", "ring", 0), ("all_gather", "ring", 0)]
    cases += [("broadcast", a, root) for a in ("tree", "pipeline") for root in (0, p - 1)]
    for kind, algo, root in cases:
        plan = plans.build(t, kind, algo, n, 8, root)
        chunked = plans.in_rounds(plan, round_elements)
        if algo == "hierarchical" and 1 < len(t.groups) < p:
            # Leaders' chunks lie inside the groups' whole range: not split into rounds.
            assert chunked is plan
        else:
            assert len(chunked.steps) > len(plan.steps), (kind, algo)
        want, got = [x.copy() for x in inputs], [x.copy() for x in inputs]
        simulate(plan, want)
        simulate(chunked, got)
        for w, g in zip(want, got, strict=True):
            assert np.array_equal(w, g), (kind, algo, root)
    assert plans.in_rounds(plan, n) is plan  # one round covers every range


def test_ring_cost_is_the_textbook_alpha_beta() -> None:
    # ring all-reduce: 2(p-1) alpha + 2(p-1)/p * n / B, every link the same (one family).
    p, n = 6, 6 * 1_000_000
    net = NetworkConfig(network_gbs=10.0, network_latency_s=20e-6)
    t = topo(["ascend-910b2"] * p, net)
    plan = plans.build(t, "all_reduce", "ring", n, 4)
    alpha, beta = 20e-6, 1 / (10.0 * GIGA)
    want = 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * 4 * beta
    assert plans.plan_seconds(t, plan) == pytest.approx(want, rel=1e-12)
    tree = plans.build(t, "all_reduce", "tree", n, 4)
    steps = 2 * math.ceil(math.log2(p))
    assert plans.plan_seconds(t, tree) == pytest.approx(steps * (alpha + n * 4 * beta))


def test_choice_by_size_and_topology() -> None:
    homo = topo(["a100-80gb-sxm"] * 4)
    assert plans.choose(homo, "all_reduce", 16, 4).algorithm == "tree"
    assert plans.choose(homo, "all_reduce", 16 << 20, 4).algorithm == "ring"
    # Same-family ranks on one node: the chip interconnect inside, a slow bridge across.
    infos = [
        RankInfo(0, "ascend-910b2", node="n0"),
        RankInfo(1, "ascend-910b2", node="n0"),
        RankInfo(2, "a100-80gb-sxm", node="n1"),
        RankInfo(3, "a100-80gb-sxm", node="n1"),
    ]
    mixed = Topology(infos, NetworkConfig(bridge_gbs=2.0))
    choice = plans.choose(mixed, "all_reduce", 64 << 20, 1)
    assert choice.algorithm == "hierarchical"
    assert "HCCL[0,1]" in choice.plan.detail and "NCCL[2,3]" in choice.plan.detail
    assert dict(choice.candidates)["hierarchical"] < dict(choice.candidates)["ring"]
    assert plans.choose(homo, "broadcast", 64 << 20, 1).algorithm == "pipeline"
    assert plans.choose(homo, "broadcast", 8, 1).algorithm == "tree"


def test_ring_visits_each_family_in_a_row() -> None:
    t = topo(["ascend-910b2", "a100-80gb-sxm", "ascend-910b2", "a100-80gb-sxm"])
    assert plans.ring_order(t) == [0, 2, 1, 3]
    plan = plans.build(t, "all_reduce", "ring", 400, 4)
    kinds = {t.link(x.src, x.dst).kind for s in plan.steps for x in s}
    assert kinds == {"native-net", "bridge"}


@pytest.mark.parametrize("chip", ["a100-80gb-sxm", "ascend-910b2", "mlu370-x8", "bi-v100"])
@pytest.mark.parametrize("devices", [2, 4, 8])
def test_native_collective_matches_the_perf_models_tp_all_reduce(chip: str, devices: int) -> None:
    cat = default_catalog()
    model = cat.model("Llama-3.1-8B")
    dep = LlmDeployment(cat.chip(chip), model, "fp16", devices)
    tokens = 512
    x = dep.prefill_features(1, tokens)
    (op,) = [o for o in dep.op_table.breakdown(x) if o.name == "all-reduce"]
    per_all_reduce = op.seconds / (2 * dep.shape.num_layers)
    one_agent = topo([chip], devices=devices)
    message = tokens * dep.shape.hidden  # fp16 elements of the hidden state
    got = plans.choose(one_agent, "all_reduce", message, 2).seconds
    assert got == pytest.approx(per_all_reduce, rel=1e-9)


def test_library_names_come_from_the_catalogue() -> None:
    cat = default_catalog()
    names = {
        c: library_name(cat.chip(c))
        for c in (
            "ascend-910b2",
            "mlu370-x8",
            "dcu-bw200",
            "kunlun-r200",
            "mtt-s4000",
            "bi-v100",
            "a100-80gb-sxm",
            "mi300x",
        )
    }
    assert names == {
        "ascend-910b2": "HCCL",
        "mlu370-x8": "CNCL",
        "dcu-bw200": "RCCL",
        "kunlun-r200": "XCCL",
        "mtt-s4000": "MCCL",
        "bi-v100": "IXCCL",
        "a100-80gb-sxm": "NCCL",
        "mi300x": "RCCL",
    }
