"""Validate the LLM performance model against public measurements.

Predicts every row of shared/data/reference/llm_static_batch.csv (the 14 rows the global
parameters are fitted on) and every row of bench/data/trtllm_unseen_rows.csv (21 more rows of
the same public TensorRT-LLM tables, which the calibration never reads) from their inputs, and
prints the errors. The full report also refits: leave-one-out and half splits of the 14, k-fold
cross-validation over all 35 rows, and the model as it was before the overlap exponent and the
grouped-query re-read factor were added, fitted the same way. Deterministic; run from the
repository root:

    .venv/bin/python -m bench.perf_model_validation            # full report (about 2 min)
    .venv/bin/python -m bench.perf_model_validation --quick    # shipped parameters only
    .venv/bin/python -m bench.perf_model_validation --chips    # per-chip factor provenance
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocgrid.catalog import default_catalog
from pocgrid.perf.efficiency import EfficiencyData, default_efficiency
from pocgrid.perf.llm import LlmDeployment
from pocgrid.perf.static_batch import predict_static
from tools.perf.calibrate import CALIBRATED, fit
from tools.perf.reference import (
    METRIC_THROUGHPUT,
    ReferenceRow,
    load_static_rows,
    predict_row,
    reference_dir,
    relative_errors,
)

RANDOM_SPLITS = 10
SPLIT_SEED = 0
CV_FOLDS = 5
CV_SEEDS = (0, 1)

UNSEEN_ROWS_FILE = Path(__file__).resolve().parent / "data" / "trtllm_unseen_rows.csv"
"""Rows of the same public tables as llm_static_batch.csv that it leaves out (the chips and
models the catalogue has); transcribed with their sources, never used to fit."""

#: The two structural parameters added on 2026-12-01 and their values that switch them off.
STRUCTURAL_OFF = {"overlap_exponent": math.inf, "gqa_kv_reread": 0.0}


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


def print_table(rows: Sequence[ReferenceRow], eff: EfficiencyData, prefix: str = "") -> list[float]:
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
            f"{prefix + str(row.index):>3}  {row.chip:<14} {row.model:<11} {row.precision:<4} "
            f"{row.batch:>5} "
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
        **STRUCTURAL_OFF,
    )
    return EfficiencyData(params, eff.provenance, {}, eff.measurements)


def without_structure(eff: EfficiencyData) -> EfficiencyData:
    """The model as shipped until 2026-12-01: max() roofline, no grouped-query re-reads."""
    return eff.with_params(eff.params.with_values(**STRUCTURAL_OFF))


def held_out(
    rows: Sequence[ReferenceRow], train: Sequence[int], test: Sequence[int]
) -> list[float]:
    fitted = fit([rows[i] for i in train]).params
    return relative_errors([rows[i] for i in test], params=fitted)


def report_generalisation(rows: Sequence[ReferenceRow], unseen: Sequence[ReferenceRow]) -> None:
    n = len(rows)
    print("\nLeave-one-out: fit the calibrated parameters on the other 13 rows, predict this one")
    loo: list[float] = []
    for i in range(n):
        err = held_out(rows, [j for j in range(n) if j != i], [i])[0]
        loo.append(err)
        print(f"  row {rows[i].index:>2}  {rows[i].label:<45} {_pct(err):>7}")
    print(f"  leave-one-out: {_summary(loo)}")

    print("\nHalf splits: fit on 7 of the 14 rows, predict the other 7 (and the 21 unseen rows)")
    pooled: list[float] = []
    splits: list[tuple[str, list[int]]] = [("odd rows", list(range(0, n, 2)))]
    splits.append(("even rows", list(range(1, n, 2))))
    rng = np.random.default_rng(SPLIT_SEED)
    for k in range(RANDOM_SPLITS):
        train = sorted(int(i) for i in rng.permutation(n)[: n // 2])
        splits.append((f"random #{k + 1}", train))
    for name, train in splits:
        test = [i for i in range(n) if i not in train]
        fitted = fit([rows[i] for i in train]).params
        errs = relative_errors([rows[i] for i in test], params=fitted)
        far = relative_errors(unseen, params=fitted)
        pooled.extend(errs)
        rows_txt = ",".join(str(rows[i].index) for i in train)
        worst = max(range(len(test)), key=lambda k: abs(errs[k]))
        print(
            f"  fit on {name:<10} ({rows_txt:<20}) other 7: {_summary(errs)}"
            f" (worst: row {rows[test[worst]].index}); unseen 21: {_summary(far)}"
        )
    print(f"  the other-7 predictions pooled ({len(pooled)}): {_summary(pooled)}")

    both = [*rows, *unseen]
    print(
        f"\n{CV_FOLDS}-fold cross-validation over all {len(both)} rows (seeds {CV_SEEDS}): "
        "fit on 4/5, predict the rest"
    )
    cv: list[float] = []
    for seed in CV_SEEDS:
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(both))]
        for k in range(CV_FOLDS):
            test = order[k::CV_FOLDS]
            train = [i for i in order if i not in test]
            cv.extend(held_out(both, train, test))
    print(f"  {len(cv)} held-out predictions pooled: {_summary(cv)}")


def report_previous_model(rows: Sequence[ReferenceRow], unseen: Sequence[ReferenceRow]) -> None:
    """The max() roofline without re-reads, its four parameters fitted on the same 14 rows."""
    old = without_structure(default_efficiency())
    names = [n for n in CALIBRATED if n not in STRUCTURAL_OFF]
    fitted = fit(rows, efficiency=old, names=names)
    values = ", ".join(f"{k}={v:.3g}" for k, v in fitted.values.items())
    print(
        "\nThe model before the overlap exponent and the grouped-query re-read factor "
        f"(fitted the same way: {values}):"
    )
    fitted_errors = relative_errors(rows, params=fitted.params, efficiency=old)
    unseen_errors = relative_errors(unseen, params=fitted.params, efficiency=old)
    print(f"  14 fitted rows: {_summary(fitted_errors)}")
    print(f"  21 unseen rows: {_summary(unseen_errors)}")


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
    parser.add_argument("--quick", action="store_true", help="skip the refits")
    parser.add_argument("--chips", action="store_true", help="print per-chip factor provenance")
    args = parser.parse_args(argv)
    if args.chips:
        report_chips()
        return 0
    eff = default_efficiency()
    rows = load_static_rows()
    unseen = load_static_rows(UNSEEN_ROWS_FILE)
    print(f"Reference: {reference_dir() / 'llm_static_batch.csv'} ({len(rows)} rows, fitted)")
    shipped = ", ".join(f"{k}={getattr(eff.params, k):.4g}" for k in CALIBRATED)
    print(f"Shipped calibrated parameters (pocgrid/perf/data/efficiency.json): {shipped}\n")
    errors = print_table(rows, eff)
    print(f"\nShipped parameters on the 14 fitted rows: {_summary(errors)}")
    tput = [e for e, r in zip(errors, rows, strict=True) if r.metric == METRIC_THROUGHPUT]
    ttft = [e for e, r in zip(errors, rows, strict=True) if r.metric != METRIC_THROUGHPUT]
    print(f"  throughput rows: {_summary(tput)}; TTFT rows: {_summary(ttft)}")

    print(
        f"\nUnseen: bench/data/{UNSEEN_ROWS_FILE.name} ({len(unseen)} rows of the same public "
        "tables; the calibration never reads them)\n"
    )
    far = print_table(unseen, eff, prefix="u")
    print(f"\nShipped parameters on the 21 unseen rows: {_summary(far)}")
    base = plain_roofline(eff)
    print(
        "Baseline, plain roofline (max(), no fixed costs, one 0.8 efficiency): "
        f"fitted rows {_summary(relative_errors(rows, params=base.params, efficiency=base))}; "
        f"unseen rows {_summary(relative_errors(unseen, params=base.params, efficiency=base))}"
    )
    if args.quick:
        return 0
    refit = fit(rows)
    values = ", ".join(f"{k}={v:.4g}" for k, v in refit.values.items())
    print(
        f"\nRefit on the 14 rows ({refit.evaluations} evaluations, loss {refit.loss:.5f}): {values}"
    )
    print(
        f"  refit: 14 rows {_summary(relative_errors(rows, params=refit.params))}; "
        f"unseen {_summary(relative_errors(unseen, params=refit.params))}"
    )
    report_previous_model(rows, unseen)
    report_generalisation(rows, unseen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
