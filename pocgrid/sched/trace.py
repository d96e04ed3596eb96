"""Reading the Alibaba GPU trace (cluster-trace-gpu-v2023, "openb") into demands and a pool.

Format (``../shared/data/traces/README.md``): the node list has ``sn, cpu_milli, memory_mib,
gpu, model``; the pod list ``name, cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec, qos,
pod_phase, creation_time, deletion_time, scheduled_time`` (seconds from the trace's start).

How a pod becomes a ``Demand`` (docs/scheduling.md says why):

- GPU models map to catalogue chips through ``data/alibaba_gpu_models.json``.
- Pods without a GPU (``num_gpu`` 0) are not accelerator work and are left out (counted).
- ``num_gpu`` 1 with ``gpu_milli`` < 1000 is a fraction of one device; otherwise whole devices,
  all on one node (a pod is on one node).
- ``gpu_spec`` (allowed models, ``|``-separated) becomes the allowed chip types.
- Work: the pod's lifetime, deletion minus its start (``scheduled_time``, or creation for pods
  the original cluster never placed), at least one second, in device-seconds of the reference
  model's chip (G2's). The trace's caveat holds: a lifetime is not a clean job duration.
- Speed per chip: the trace names no model, so each pod gets an arithmetic intensity from its
  class (a shared GPU: inference, 4..64 FLOP/byte; a whole GPU of a latency-sensitive pod:
  serving, 16..256; best-effort or multi-GPU: training-like, 64..1024), log-uniform within the
  class by a hash of the pod's name (stable across runs), and ``speed.roofline_speeds`` times
  it on every chip.
- QoS: ``LS`` is priority 2, ``Guaranteed``/``Burstable`` 1, ``BE`` 0 and preemptible and
  deferrable, with a deadline of its arrival plus its work plus ``be_slack_s`` (a day).
  Tenants are the QoS classes (the trace has no owners), so fair share works across them.
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.sched.model import WHOLE, Demand
from pocgrid.sched.pool import Pool
from pocgrid.sched.speed import roofline_speeds

NODE_COLUMNS: Final = ("sn", "gpu", "model")
POD_COLUMNS: Final = (
    "name",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "creation_time",
    "deletion_time",
    "scheduled_time",
)
BE_SLACK_S: Final = 86_400.0
INTENSITY: Final[Mapping[str, tuple[float, float]]] = {
    "inference": (4.0, 64.0),
    "serving": (16.0, 256.0),
    "training": (64.0, 1024.0),
}
PRIORITY: Final[Mapping[str, int]] = {"LS": 2, "Guaranteed": 1, "Burstable": 1, "BE": 0}


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file, the row and the field."""


@dataclass(frozen=True, slots=True)
class ModelMap:
    chips: Mapping[str, str]
    """Trace GPU model -> catalogue chip slug."""
    reference: str
    """The trace model whose chip is speed 1.0 (where a pod's lifetime is its work)."""

    @property
    def reference_chip(self) -> str:
        return self.chips[self.reference]


def default_model_map() -> ModelMap:
    text = (
        resources.files("pocgrid.sched")
        .joinpath("data")
        .joinpath("alibaba_gpu_models.json")
        .read_text(encoding="utf-8")
    )
    doc = json.loads(text)
    return ModelMap({k: v["chip"] for k, v in doc["models"].items()}, doc["reference_model"])


@dataclass(frozen=True, slots=True)
class Trace:
    pool: Pool
    demands: tuple[Demand, ...]
    skipped_cpu_only: int = 0
    classes: Mapping[str, int] = field(default_factory=dict)
    """Pods per speed class (inference, serving, training)."""


def _rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise TraceError(f"{path}: missing column {missing[0]!r}")
            return list(reader)
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None


def _int(
    row: Mapping[str, str], name: str, path: Path, line: int, default: int | None = None
) -> int:
    text = row.get(name) or ""
    if not text and default is not None:
        return default
    try:
        return int(text)
    except ValueError:
        raise TraceError(f"{path}:{line}: {name} {text!r} is not an integer") from None


def read_pool(path: Path, models: ModelMap, catalog: Catalog | None = None) -> Pool:
    cat = catalog or default_catalog()
    pool = Pool()
    for line, row in enumerate(_rows(path, NODE_COLUMNS), start=2):
        model = row["model"]
        chip_name = models.chips.get(model)
        if chip_name is None:
            raise TraceError(f"{path}:{line}: GPU model {model!r} has no catalogue chip mapped")
        chip = cat.chip(chip_name)
        gpus = _int(row, "gpu", path, line)
        if gpus < 1:
            continue
        pool.add_node(row["sn"], chip.name, gpus, chip.memory_gib or 0.0)
    return pool


def _class(qos: str, num_gpu: int, gpu_milli: int) -> str:
    if num_gpu == 1 and gpu_milli < WHOLE:
        return "inference"
    if qos == "BE" or num_gpu > 1:
        return "training"
    return "serving"


def _intensity(name: str, cls: str) -> float:
    lo, hi = INTENSITY[cls]
    u = zlib.crc32(name.encode()) / 2**32
    return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def read_trace(
    pods_path: Path,
    nodes_path: Path,
    *,
    models: ModelMap | None = None,
    catalog: Catalog | None = None,
    be_slack_s: float = BE_SLACK_S,
) -> Trace:
    cat = catalog or default_catalog()
    mm = models or default_model_map()
    pool = read_pool(nodes_path, mm, cat)
    pool_chips = [cat.chip(c) for c in pool.chips]
    reference = cat.chip(mm.reference_chip)
    rows: list[tuple[dict[str, str], int]] = []
    skipped = 0
    for line, row in enumerate(_rows(pods_path, POD_COLUMNS), start=2):
        if _int(row, "num_gpu", pods_path, line) == 0:
            skipped += 1
            continue
        rows.append((row, line))
    classes: dict[str, int] = {}
    names: list[str] = []
    intensities: list[float] = []
    for row, line in rows:
        n = _int(row, "num_gpu", pods_path, line)
        milli = _int(row, "gpu_milli", pods_path, line)
        cls = _class(row["qos"], n, milli)
        classes[cls] = classes.get(cls, 0) + 1
        names.append(row["name"])
        intensities.append(_intensity(row["name"], cls))
    speeds = roofline_speeds(np.asarray(intensities), pool_chips, reference)
    demands: list[Demand] = []
    for i, (row, line) in enumerate(rows):
        n = _int(row, "num_gpu", pods_path, line)
        milli = _int(row, "gpu_milli", pods_path, line)
        if not 0 < milli <= WHOLE:
            raise TraceError(f"{pods_path}:{line}: gpu_milli {milli} is not in 1..{WHOLE}")
        created = _int(row, "creation_time", pods_path, line)
        deleted = _int(row, "deletion_time", pods_path, line)
        started = _int(row, "scheduled_time", pods_path, line, default=created)
        work = float(max(1, deleted - started))
        spec = [m for m in (row.get("gpu_spec") or "").split("|") if m]
        chips: set[str] = set()
        for m in spec:
            if m not in mm.chips:
                raise TraceError(f"{pods_path}:{line}: gpu_spec model {m!r} has no chip mapped")
            chips.add(mm.chips[m])
        qos = row["qos"]
        be = qos == "BE"
        demands.append(
            Demand(
                job_id=row["name"],
                tenant=qos.lower() or "default",
                kind="batch" if be else "serving",
                priority=PRIORITY.get(qos, 1),
                devices=n,
                share_milli=milli if n == 1 else WHOLE,
                chips=frozenset(chips),
                single_node=n > 1,
                deferrable=be,
                deadline=created + work + be_slack_s if be else None,
                preemptible=be,
                work=work,
                speed={c.name: float(speeds[c.name][i]) for c in pool_chips},
                submitted_at=float(created),
            )
        )
    demands.sort(key=lambda d: (d.submitted_at, d.job_id))
    return Trace(pool, tuple(demands), skipped, classes)
