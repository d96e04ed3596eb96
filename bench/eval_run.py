"""Time ``pocgrid eval run --scenario llm-chat --model Qwen2.5-7B --chips all --requests 1000
--json`` against a running mesh, as a user runs it.

Goal: <= 60 s with the mesh up. Starts its own mesh (``pocgrid up --detach`` in a scratch
``POCGRID_HOME``, every emulatable chip type, 8 devices each), runs the command ``RUNS`` times
(the same seed: a run must give the same figures, which is checked), prints each wall time and
the median, the chips evaluated and how many ran, met the SLO and were VALID, then stops the
mesh. With ``--gateway``/``--api-key`` (or ``POCGRID_GATEWAY``/``POCGRID_API_KEY``) it uses
that mesh instead. Run from the repository root:

    .venv/bin/python -m bench.eval_run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 3
GOAL_S = 60.0
COMMAND = [
    "eval",
    "run",
    "--scenario",
    "llm-chat",
    "--model",
    "Qwen2.5-7B",
    "--chips",
    "all",
    "--requests",
    "1000",
    "--json",
]


def _pocgrid(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("pocgrid"))
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, check=False)


def _figures(data: dict[str, object]) -> list[object]:
    results = data["results"]
    assert isinstance(results, list)
    # where a run was placed may differ between runs, its figures may not
    return [{k: v for k, v in r.items() if k not in ("node_id", "job_id")} for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default=os.environ.get("POCGRID_GATEWAY", ""))
    parser.add_argument("--api-key", default=os.environ.get("POCGRID_API_KEY", ""))
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="pocgrid-bench-eval-")
    env = {**os.environ, "POCGRID_HOME": home}
    own_mesh = not args.gateway
    if own_mesh:
        t0 = time.perf_counter()
        up = _pocgrid(env, "up", "--detach", "--json")
        if up.returncode != 0:
            raise SystemExit(f"pocgrid up failed:\n{up.stderr}")
        mesh = json.loads(up.stdout)
        print(f"mesh up in {time.perf_counter() - t0:.1f} s at {mesh['gateway']}")
    else:
        env.update({"POCGRID_GATEWAY": args.gateway, "POCGRID_API_KEY": args.api_key})
    try:
        walls: list[float] = []
        outputs: list[dict[str, object]] = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            done = _pocgrid(env, *COMMAND)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"run {i + 1} failed:\n{done.stderr}")
            walls.append(wall)
            outputs.append(json.loads(done.stdout))
            print(f"run {i + 1}: {wall:.1f} s")
        data = outputs[0]
        results = data["results"]
        assert isinstance(results, list)
        same = all(_figures(o) == _figures(data) for o in outputs[1:])
        ran = sum(1 for r in results if r["reason"] is None)
        met = sum(1 for r in results if r["slo_met"])
        valid = sum(1 for r in results if r["verdict"] == "VALID")
        median = statistics.median(walls)
        print(f"pocgrid {' '.join(COMMAND)}")
        print(
            f"median of {len(walls)}: {median:.1f} s wall (goal <= {GOAL_S:.0f} s):"
            f" {'met' if median <= GOAL_S else 'NOT met'}"
        )
        print(
            f"{len(results)} chip types, {ran} ran, {met} met the SLO, {valid} VALID;"
            f" same figures on every run: {same}"
        )
        rec = data["recommendation"]
        assert isinstance(rec, dict)
        print(f"recommendation: {rec['summary']}")
    finally:
        if own_mesh:
            _pocgrid(env, "down")


if __name__ == "__main__":
    main()
