"""The terminal table, the vLLM result files, the Pareto frontier and the progress lines."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from pocgrid.report.html import frontier
from pocgrid.report.progress import follow
from pocgrid.report.table import render, vllm_block
from pocgrid.report.vllm import write_vllm_results
from pocgrid.v1 import evaluator_pb2
from tests.unit.report.sample import sample_doc

# The keys `vllm bench serve --save-result` writes (vllm/benchmarks/serve.py, commit
# 009e6d4a1cd6ba3fb2a9fc00f4ec06f5297232a1) with its default percentile metrics and p99.
VLLM_KEYS = {
    "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
    "request_rate", "burstiness", "max_concurrency", "duration", "completed", "failed",
    "total_input_tokens", "total_output_tokens", "request_throughput", "request_goodput",
    "output_throughput", "total_token_throughput", "max_output_tokens_per_s",
    "max_concurrent_requests",
    *(f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl") for s in ("mean", "median", "std", "p99")),
}  # fmt: skip


def test_table_shows_every_chip_and_why_one_cannot_run() -> None:
    buf = io.StringIO()
    render(sample_doc(), Console(file=buf, width=200), detail=True)
    text = buf.getvalue()
    for chip in ("ascend-910b2", "mlu370-x8", "a100-80gb-sxm", "enflame-i20"):
        assert chip in text
    assert "enflame-i20: cannot run - Qwen2.5-7B needs 15.2 GiB per device" in text
    assert "Cheapest chip meeting the SLO: ascend-910b2" in text
    assert "scenario image-classification" in text


def test_vllm_block_uses_vllms_labels_and_the_results_figures() -> None:
    r = sample_doc()["results"][0]
    block = vllm_block(r)
    assert "Serving Benchmark Result" not in block  # the chip heads the block instead
    assert f"{'Median TPOT (ms):':<40} {r['tpot_ms']['median']:.2f}" in block
    assert f"{'P99 TTFT (ms):':<40} {r['ttft_ms']['p99']:.2f}" in block
    assert "Request goodput (req/s):" in block


def test_vllm_files_carry_vllms_keys_and_our_figures(tmp_path: Path) -> None:
    doc = sample_doc()
    when = datetime(2026, 12, 1, 13, 0, 0, tzinfo=UTC)
    paths = write_vllm_results(doc, tmp_path, now=when)
    ran = [r for r in doc["results"] if r.get("runnable", True)]
    assert len(paths) == len(ran)  # the chip that cannot run has no figures to write
    first = json.loads(paths[0].read_text())
    assert first.keys() >= VLLM_KEYS, VLLM_KEYS - first.keys()
    r = ran[0]
    assert first["date"] == "20261201-130000"
    assert first["request_throughput"] == r["request_throughput"]
    assert first["output_throughput"] == r["output_tokens_per_s"]
    assert first["p99_ttft_ms"] == r["ttft_ms"]["p99"]
    assert first["median_e2el_ms"] == r["e2el_ms"]["median"]
    assert first["request_goodput"] == r["goodput"]
    assert first["std_ttft_ms"] is None  # not kept by the evaluator: null, not invented
    assert first["pocgrid"]["chip"] == r["chip"]
    assert paths[0].name.startswith("pocgrid-ascend-910b2-llm-chat-4.0qps-Qwen2.5-7B-")


def test_frontier_keeps_exactly_the_undominated_points() -> None:
    pts = [(1.0, 10.0), (2.0, 8.0), (2.0, 9.0), (3.0, 3.0), (1.5, 5.0), (0.5, 10.0)]
    assert frontier(pts) == [(1.0, 10.0), (2.0, 9.0), (3.0, 3.0)]


def test_progress_in_a_pipe_writes_a_line_per_finished_run() -> None:
    def update(done: int, current: str) -> evaluator_pb2.Evaluation:
        return evaluator_pb2.Evaluation(
            evaluation_id="ev1",
            state=evaluator_pb2.EVALUATION_STATE_RUNNING,
            progress=evaluator_pb2.EvaluationProgress(
                runs_total=3, runs_done=done, current=current
            ),
        )

    buf = io.StringIO()
    updates = [update(0, "a"), update(0, "a"), update(1, "b"), update(3, "")]
    last = follow(updates, buf)
    assert buf.getvalue().splitlines() == [
        "  0/3 runs done - a",
        "  1/3 runs done - b",
        "  3/3 runs done",
    ]
    assert last is not None and last.progress.runs_done == 3
