"""Time to compute the adaptation matrix: every catalogue model x every emulatable chip.

Goal: <= 10 s on this machine. Prints the median wall time and process CPU time of 3 runs
(the machine is shared, so CPU time is the steadier figure, and the load average is printed
beside them: wall time on a 2-core host at load 20 says little), the cell count, the verdicts,
the cells with pipeline stages and how many pass gains were priced.
Run from the repository root:

    .venv/bin/python -m bench.adapt_matrix
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter

from pocgrid.adapt.adapt import matrix
from pocgrid.catalog import default_catalog

RUNS = 3
GOAL_S = 10.0


def main() -> None:
    catalog = default_catalog()
    load0 = os.getloadavg()[0]
    walls: list[float] = []
    cpus: list[float] = []
    cells = []
    for _ in range(RUNS):
        w0, c0 = time.perf_counter(), time.process_time()
        cells = matrix(catalog)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    chips = {a.chip for a in cells}
    models = {a.model for a in cells}
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(f"adaptation matrix: {len(models)} models x {len(chips)} chips = {len(cells)} cells")
    print(f"median of {RUNS}: wall {wall:.2f} s, CPU {cpu:.2f} s (goal <= {GOAL_S:.0f} s)")
    print(
        "runs:",
        ", ".join(f"{w:.2f} s wall / {c:.2f} s CPU" for w, c in zip(walls, cpus, strict=True)),
    )
    print(f"load average (1 min) {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
    for verdict, n in Counter(a.verdict for a in cells).most_common():
        print(f"  {verdict}: {n}")
    staged = [a for a in cells if a.plan is not None and a.plan.best and a.plan.best.pp > 1]
    gains = [p for a in cells for p in a.all_passes()]
    print(f"  with pipeline stages: {len(staged)}")
    print(
        f"pass figures: {len(gains)} considered, {sum(p.gain is not None for p in gains)} with a"
        f" modelled gain, {sum(p.applied for p in gains)} applied"
    )
    print("verdict:", "met" if wall <= GOAL_S else "missed", "on wall time")


if __name__ == "__main__":
    main()
