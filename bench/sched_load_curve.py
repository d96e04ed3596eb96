"""The load curve with and without peak shaving, as a picture: docs/sched_load_curve.svg.

Busy devices per hour of the daily-cycle trace (``bench/sched_diurnal.py``) under fifo, and
under fifo with peak shaving (``bench/data/tariff_cn_tou.json`` and the cap
``bench/sched_replay.py`` sets), over one week, the tariff's peak hours shaded; and the same
for the Alibaba trace's last two weeks under hetero. It draws what ``bench.sched_replay
--json`` wrote, so the picture and the README table come from one run. Plotting uses
matplotlib (the ``plots`` extra: ``.venv/bin/pip install -c constraints.txt -e '.[plots]'``):

    .venv/bin/python -m bench.sched_replay --json /tmp/replay.json
    .venv/bin/python -m bench.sched_load_curve /tmp/replay.json
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt

from pocgrid.sched.sim import EPOCH
from pocgrid.tariff import Period, parse_tariff

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "sched_load_curve.svg"
TARIFF = REPO / "bench" / "data" / "tariff_cn_tou.json"


def _series(doc: list[dict[str, object]], trace: str, policy: str) -> list[float]:
    for row in doc:
        if row["trace"] == trace and row["policy"] == policy:
            load = row["hourly_load"]
            assert isinstance(load, list)
            return [float(x) for x in load]
    raise SystemExit(f"{trace}/{policy} is not in the replay's JSON")


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench.sched_load_curve REPLAY.json")
    doc = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    tou = parse_tariff(TARIFF.read_text(encoding="utf-8")).time_of_use
    plt.rcParams["svg.hashsalt"] = "pocgrid"  # stable element ids: the file diffs cleanly
    fig, axes = plt.subplots(2, 1, figsize=(11, 7))
    panels = (
        (
            "diurnal",
            "fifo",
            24,
            24 + 7 * 24,
            "two-week daily-cycle trace (bench/sched_diurnal.py), days 2-8",
        ),
        ("openb", "hetero", None, None, "Alibaba openb trace, last 14 days"),
    )
    for ax, (trace, policy, lo, hi, title) in zip(axes, panels, strict=True):
        plain = _series(doc, trace, policy)
        shaped = _series(doc, trace, f"{policy}+shaping")
        n = min(len(plain), len(shaped))
        start = lo if lo is not None else n - 14 * 24
        end = hi if hi is not None else n
        hours = list(range(start, end))
        for h in hours:
            if tou.period(EPOCH + timedelta(hours=h)) is Period.PEAK:
                ax.axvspan(h / 24, (h + 1) / 24, color="#f2d7d5", lw=0)
        p = [plain[h] for h in hours]
        s = [shaped[h] for h in hours]

        def ratio(xs: list[float]) -> float:
            return max(xs) / (sum(xs) / len(xs))

        ax.plot(
            [h / 24 for h in hours],
            p,
            color="#c0392b",
            lw=1.2,
            label=f"{policy}, no shaping (peak/average {ratio(plain[:n]):.2f})",
        )
        ax.plot(
            [h / 24 for h in hours],
            s,
            color="#1f618d",
            lw=1.2,
            label=f"{policy} + peak shaving (peak/average {ratio(shaped[:n]):.2f})",
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("day of the trace (peak tariff hours shaded)")
        ax.set_ylabel("busy devices (hourly mean)")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT, metadata={"Date": None})
    print(OUT)


if __name__ == "__main__":
    main()
