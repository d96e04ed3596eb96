"""A seeded two-week trace with a daily cycle, in the openb format, for peak-shaving figures.

The Alibaba trace itself cannot show peak shaving (docs/scheduling.md: its best-effort work is
2.6 % of its device-seconds and its load grows over months rather than cycling by day), so
this generator writes a trace of the same format whose load does cycle: latency-sensitive pods
(``LS``) and best-effort pods (``BE``, deferrable with a day's slack) both arrive by a
business-day profile (local time UTC+8: quiet 00-07, busy 09-21), on 16 G2 nodes of 8, 8 G3
nodes of 8 and 16 T4 nodes of 2 (224 devices). BE pods are half the work.

    .venv/bin/python -m bench.sched_diurnal OUT_DIR   # writes pods.csv and nodes.csv
"""

from __future__ import annotations

import csv
import math
import random
import sys
from pathlib import Path

DAYS = 14
UTC_OFFSET_H = 8
NODES = (("G2", 8, 16), ("G3", 8, 8), ("T4", 2, 16))
LS_PER_BUSY_HOUR = 40.0
BE_PER_BUSY_HOUR = 12.0
SEED = 20231


def profile(local_hour: int) -> float:
    """Arrivals relative to a busy hour: people submit work in the working day."""
    if local_hour < 7:
        return 0.3
    if local_hour < 9:
        return 0.65
    if local_hour < 21:
        return 1.0
    return 0.5


def write(out: Path, seed: int = SEED) -> tuple[Path, Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    nodes_path, pods_path = out / "nodes.csv", out / "pods.csv"
    with nodes_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sn", "cpu_milli", "memory_mib", "gpu", "model"])
        n = 0
        for model, gpus, count in NODES:
            for _ in range(count):
                w.writerow([f"node-{n:03d}", 96000, 786432, gpus, model])
                n += 1
    rows: list[list[object]] = []
    for hour in range(DAYS * 24):
        local = (hour + UTC_OFFSET_H) % 24
        for qos, rate in (("LS", LS_PER_BUSY_HOUR), ("BE", BE_PER_BUSY_HOUR)):
            arrivals = _poisson(rng, rate * profile(local))
            for _ in range(arrivals):
                t = int((hour + rng.random()) * 3600)
                if qos == "LS":
                    gpus, milli = 1, rng.choice((250, 500, 750, 1000, 1000))
                    dur = int(rng.expovariate(1 / 7200)) + 60
                else:
                    gpus, milli = rng.choice((1, 2, 4)), 1000
                    dur = min(8 * 3600, int(rng.lognormvariate(math.log(7200), 0.8)))
                rows.append(
                    [
                        f"pod-{len(rows):05d}",
                        8000,
                        32768,
                        gpus,
                        milli,
                        "",
                        qos,
                        "Succeeded",
                        t,
                        t + dur,
                        t,
                    ]
                )
    rows.sort(key=lambda r: (r[8], r[0]))
    with pods_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "name",
                "cpu_milli",
                "memory_mib",
                "num_gpu",
                "gpu_milli",
                "gpu_spec",
                "qos",
                "pod_phase",
                "creation_time",
                "deletion_time",
                "scheduled_time",
            ]
        )
        w.writerows(rows)
    return pods_path, nodes_path


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method: small rates only
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


if __name__ == "__main__":
    print(*write(Path(sys.argv[1] if len(sys.argv) > 1 else "diurnal")))
