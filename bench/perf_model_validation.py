"""Validate the LLM performance model against the public reference rows.

Predicts every row of shared/data/reference/llm_static_batch.csv from its inputs, prints the
errors, then checks that the calibration generalises: leave-one-out (fit the four global
parameters on 13 rows, predict the 14th) and half splits (fit on 7, predict the other 7).
Everything is deterministic; run from the repository root:

    .venv/bin/python -m bench.perf_model_validation            # full report (~30 s)
    .venv/bin/python -m bench.perf_model_validation --quick    # shipped parameters only
    .venv/bin/python -m bench.perf_model_validation --chips    # per-chip factor provenance
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from pocgrid.catalog import default_catalog
from pocgrid.perf.calibrate import CALIBRATED, fit
from pocgrid.perf.efficiency import EfficiencyData, default_efficiency
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.reference import (
    METRIC_THROUGHPUT,
    ReferenceRow,
    load_static_rows,
    predict_row,
    reference_dir,
)
from pocgrid.perf.static_batch import predict_static

RANDOM_SPLITS = 10
SPLIT_SEED = 0


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _summary(errors: Sequence[float]) -> str:
    a = np.abs(np.asarray(errors))
    return f"median |error| {100 * float(np.median(a)):.1f}%, max |error| {100 * a.max():.1f}%"


def _bounds(row: ReferenceRow) -> str:
    cat = default_catalog()
    d = LlmDeployment(cat.find_chip(row.chip), cat.model(row.model), row.precision, row.tp)
    r = predict_static(d, row.batch // (row.devices // row.tp), row.input_len, row.output_len)
    return f"{r.prefill_bound}/{r.decode_bound or '-'}"


def print_table(rows: Sequence[ReferenceRow], eff: EfficiencyData) -> list[float]:
    header = (
        f"{'row':>3}  {'chip':<14} {'model':<11} {'prec':<4} {'batch':>5} {'tp':>2} "
        f"{'in/out':>9}  {'metric':<10} {'measured':>9} {'predicted':>9} {'error':>7}  "
        "bound (prefill/decode)"
    )
    print(header)
    print("-" * len(header))
    errors = []
    for row in rows:
        pred = predict_row(row, efficiency=eff)
        err = (pred - row.value) / row.value
        errors.append(err)
        metric = "tok/s/dev" if row.metric == METRIC_THROUGHPUT else "TTFT ms"
        print(
            f"{row.index:>3}  {row.chip:<14} {row.model:<11} {row.precision:<4} {row.batch:>5} "
            f"{row.tp:>2} {f'{row.input_len}/{row.output_len}':>9}  {metric:<10} "
            f"{row.value:>9,.0f} {pred:>9,.1f} {_pct(err):>7}  {_bounds(row)}"
        )
    return errors


def plain_roofline(eff: EfficiencyData) -> EfficiencyData:
    """The model with no fixed costs and one 0.8 efficiency for everything (a baseline)."""
    params = eff.params.with_values(
        layer_overhead_s=0.0,
        collective_latency_s=0.0,
        low_precision_compute_factor=1.0,
        default_memory_efficiency=0.8,
        default_compute_efficiency=0.8,
        default_link_efficiency=0.8,
    )
    return EfficiencyData(params, eff.provenance, {}, eff.measurements)


def held_out(
    rows: Sequence[ReferenceRow], train: Sequence[int], test: Sequence[int]
) -> list[float]:
    fitted = fit([rows[i] for i in train]).params
    return [(predict_row(rows[i], params=fitted) - rows[i].value) / rows[i].value for i in test]


def report_generalisation(rows: Sequence[ReferenceRow]) -> None:
    n = len(rows)
    print("\nLeave-one-out: fit the calibrated parameters on the other rows, predict this one")
    loo: list[float] = []
    for i in range(n):
        err = held_out(rows, [j for j in range(n) if j != i], [i])[0]
        loo.append(err)
        print(f"  row {rows[i].index:>2}  {rows[i].label:<45} {_pct(err):>7}")
    print(f"  leave-one-out: {_summary(loo)}")

    print("\nHalf splits: fit on 7 rows, predict the other 7")
    pooled: list[float] = []
    splits: list[tuple[str, list[int]]] = [("odd rows", list(range(0, n, 2)))]
    splits.append(("even rows", list(range(1, n, 2))))
    rng = np.random.default_rng(SPLIT_SEED)
    for k in range(RANDOM_SPLITS):
        train = sorted(int(i) for i in rng.permutation(n)[: n // 2])
        splits.append((f"random #{k + 1}", train))
    for name, train in splits:
        test = [i for i in range(n) if i not in train]
        errs = held_out(rows, train, test)
        pooled.extend(errs)
        rows_txt = ",".join(str(rows[i].index) for i in train)
        worst = max(range(len(test)), key=lambda k: abs(errs[k]))
        print(
            f"  fit on {name:<10} ({rows_txt:<20}) held-out: {_summary(errs)}"
            f" (worst: row {rows[test[worst]].index})"
        )
    print(f"  all held-out predictions pooled ({len(pooled)}): {_summary(pooled)}")


def report_chips() -> None:
    """Which ceilings are measured, spec-derived or estimated, per emulatable chip."""
    eff = default_efficiency()
    cat = default_catalog()
    print(f"{'chip':<16} {'prec':<5} {'compute':>22}  {'memory':>24}  {'link/dir':>22}")
    for chip in cat.chips:
        listed = eff.listed_precisions(chip.name)
        precisions = [
            p for p in ("fp16", "bf16", "fp8", "int8") if chip.peak(p) is not None or p in listed
        ]
        for prec in precisions:
            try:
                c = eff.ceilings(chip, prec)
            except ValueError as exc:
                print(f"{chip.name:<16} {prec:<5} not modelled: {exc}")
                continue
            share = "" if c.gemm.efficiency is None else f" ({c.gemm.efficiency:.2f})"
            mshare = "" if c.memory.efficiency is None else f" ({c.memory.efficiency:.2f})"
            print(
                f"{chip.name:<16} {prec:<5} "
                f"{f'{c.gemm.rate / 1e12:.0f}T{share} {c.gemm.status}':>22}  "
                f"{f'{c.memory.rate / 1e9:.0f}GB/s{mshare} {c.memory.status}':>24}  "
                f"{f'{c.link.rate / 1e9:.0f}GB/s {c.link.status}':>22}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf_model_validation")
    parser.add_argument("--quick", action="store_true", help="skip the refits (LOO, splits)")
    parser.add_argument("--chips", action="store_true", help="print per-chip factor provenance")
    args = parser.parse_args(argv)
    if args.chips:
        report_chips()
        return 0
    eff = default_efficiency()
    rows = load_static_rows()
    print(f"Reference: {reference_dir() / 'llm_static_batch.csv'} ({len(rows)} rows)")
    shipped = ", ".join(f"{k}={getattr(eff.params, k):.4g}" for k in CALIBRATED)
    print(f"Shipped calibrated parameters (pocgrid/perf/data/efficiency.json): {shipped}\n")
    errors = print_table(rows, eff)
    print(f"\nShipped parameters: {_summary(errors)}")
    base = [(predict_row(r, efficiency=plain_roofline(eff)) - r.value) / r.value for r in rows]
    print(f"Baseline, plain roofline (no fixed costs, one 0.8 efficiency): {_summary(base)}")
    tput = [e for e, r in zip(errors, rows, strict=True) if r.metric == METRIC_THROUGHPUT]
    ttft = [e for e, r in zip(errors, rows, strict=True) if r.metric != METRIC_THROUGHPUT]
    print(f"  throughput rows: {_summary(tput)}; TTFT rows: {_summary(ttft)}")
    if args.quick:
        return 0
    refit = fit(rows)
    values = ", ".join(f"{k}={v:.4g}" for k, v in refit.values.items())
    print(f"\nRefit on all rows ({refit.evaluations} evaluations, loss {refit.loss:.5f}): {values}")
    refit_errors = [(predict_row(r, params=refit.params) - r.value) / r.value for r in rows]
    print(f"  refit: {_summary(refit_errors)}")
    report_generalisation(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
