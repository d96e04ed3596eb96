"""``pocgrid comm bench`` and its argument errors."""

from __future__ import annotations

import json

import pytest

from pocgrid.cli.main import main


def test_bench_prints_each_collective_with_algorithm_bare_and_modelled(capsys) -> None:
    argv = ["comm", "bench", "--ranks", "rtx-4090,bi-v100:2,rtx-4090", "--sizes", "4K,64K"]
    code = main([*argv, "--repeats", "1", "--no-shm", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert len(rows) == 8 and report["transports"] == ["shm"]
    for r in rows:
        assert r["algorithm"] in ("ring", "tree", "hierarchical", "pipeline")
        assert r["virtual_s"] > 0 and r["wall_s"] > 0 and r["bare_gbs"] > 0
        # CPU seconds of all three ranks, per round, for the call and for the bare probe.
        assert len(r["cpus_s"]) == len(r["probe_cpus_s"]) == 1
        assert r["cpus_s"][0] > 0 and r["probe_cpus_s"][0] > 0 and r["cpu_ratio"] > 0
    assert {r["collective"] for r in rows} == {
        "all_reduce",
        "reduce_scatter",
        "all_gather",
        "broadcast",
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["comm", "bench", "--ranks", "no-such-chip"],
        ["comm", "bench", "--ranks", "rtx-4090:0"],
        ["comm", "bench", "--collectives", "all_to_all"],
        ["comm", "train", "--batch", "0"],
        ["comm"],
    ],
)
def test_bad_arguments_are_usage_errors(argv, capsys) -> None:
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err
