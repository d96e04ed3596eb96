"""`pocgrid demo` as `make demo` runs it, on a small fleet: the pack's table and
recommendation, the sweep, the HTML report, the OpenAI-compatible stream, and a clean stop."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pocgrid.meshstate import MeshState

pytestmark = pytest.mark.e2e

CHIPS = "ascend-910b2,mlu590,a100-80gb-sxm,kunlun-r200"


def test_demo_evaluates_a_pack_reports_and_stops(tmp_path: Path):
    home = tmp_path / "home"
    env = {**os.environ, "POCGRID_HOME": str(home)}
    env.pop("POCGRID_GATEWAY", None)
    report = tmp_path / "report"
    demo = subprocess.run(
        [sys.executable, "-m", "pocgrid.cli.main", "demo", "--chips", CHIPS, "--devices", "1",
         "--report", str(report)],
        env=env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    out = demo.stdout
    assert demo.returncode == 0, out[-3000:] + demo.stderr[-3000:]
    # Every component of the finance pack has its table, every chip a row.
    doc = json.loads((report / "evaluation.json").read_text())
    assert doc["scenario"] == "finance" and doc["state"] == "SUCCEEDED"
    scenarios = {r["scenario"] for r in doc["results"]}
    assert len(scenarios) >= 3
    for scenario in scenarios:
        assert f"scenario {scenario}" in out
    for chip in CHIPS.split(","):
        assert chip in out
    rec = doc["recommendation"]
    assert f"Cheapest chip meeting the SLO: {rec['cheapest'] or 'none'}" in out
    assert f"Best domestic chip: {rec['best_domestic'] or 'none'}" in out
    # The page holds the pack and the sweep, and is the one the demo names.
    page = (report / "report.html").read_text()
    assert f"Report: {report.resolve() / 'report.html'}" in out
    sweep = json.loads((report / "evaluation-2.json").read_text())
    assert sweep["mode"] == "sweep" and any(r["curve"] for r in sweep["results"])
    assert page.count('class="scenario"') == len(scenarios) + 1
    # A real stream came back through the OpenAI-compatible endpoint, with timings.
    assert re.search(r"OpenAI-compatible stream from \S+@\S+: TTFT \d+ ms", out), out[-2000:]
    # The real-numerics CNN still runs, and the mesh is gone afterwards.
    assert "max |err| vs fp32" in out
    assert "Stopped after" in out
    assert MeshState.load(home / "mesh.json") is None
