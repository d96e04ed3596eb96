"""What `pocgrid demo` shows beyond the pool: an industry pack evaluated on every chip type,
real numerics on emulated chips, metering, and a real HTTP client streaming from a chip.

``evaluate`` runs an evaluation through the gateway as `pocgrid eval run` does (progress bars
from WatchEvaluation, the table, the recommendation). ``run_showcase`` runs a small CNN (built in
code, real numerics) on a few agents, as the mesh's operator (tenants see no agent addresses
and agents take work only from the scheduler, the evaluator or an admin; the launcher holds the
operator's key), and reads the metered usage back through the gateway:
agent -> NATS JetStream -> metering -> gateway. ``stream_completion`` reads a streamed completion
from the gateway's OpenAI-compatible endpoint.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from pocgrid.client import Client
from pocgrid.evaluation import evaluation_to_dict
from pocgrid.metadata import ADMIN_ROLE, ROLE_METADATA_KEY, TENANT_METADATA_KEY
from pocgrid.report.progress import follow
from pocgrid.report.table import console, render
from pocgrid.samples import cnn
from pocgrid.tensors import from_array, to_array
from pocgrid.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    evaluator_pb2,
    metering_pb2,
    registry_pb2,
    registry_pb2_grpc,
)
from services.core.mesh_channel import signed_channel
from services.core.service_tokens import TokenSigner

SHOWCASE_CHIPS = ("ascend-910b2", "mlu370-x8", "kunlun-r200", "a100-80gb-sxm")


def evaluate(
    client: Client, request: evaluator_pb2.StartEvaluationRequest, *, show: bool = True
) -> dict[str, Any]:
    """One evaluation through the gateway, followed with progress bars until it ends; prints
    the table and the recommendation when ``show``; returns the evaluation document."""
    started = client.evaluator.StartEvaluation(request).evaluation
    follow(
        (
            u.evaluation
            for u in client.evaluator.WatchEvaluation(
                evaluator_pb2.WatchEvaluationRequest(evaluation_id=started.evaluation_id),
                timeout=600,
            )
        ),
        sys.stdout,
    )
    evaluation = client.evaluator.GetEvaluation(
        evaluator_pb2.GetEvaluationRequest(evaluation_id=started.evaluation_id)
    ).evaluation
    if evaluation.state != evaluator_pb2.EVALUATION_STATE_SUCCEEDED:
        raise RuntimeError(f"evaluation {evaluation.evaluation_id} failed: {evaluation.error}")
    doc = evaluation_to_dict(evaluation)
    if show:
        render(doc, console())
    return doc


def run_showcase(
    client: Client, tenant: str, say: Callable[[str], None], registry: str, operator: TokenSigner
) -> list[list[str]]:
    """Run the CNN on each showcase chip present, billed to ``tenant``; returns table rows for
    the caller to print. ``registry`` and ``operator`` reach the agents (see the module doc)."""
    with signed_channel(registry, operator) as channel:
        nodes = (
            registry_pb2_grpc.RegistryServiceStub(channel)
            .ListNodes(registry_pb2.ListNodesRequest(state=registry_pb2.NODE_STATE_READY))
            .nodes
        )
    by_chip = {n.chip: n for n in nodes}
    model = cnn().SerializeToString()
    images = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(
        None, {"img": images}
    )[0]
    rows = []
    stamp = int(time.time())
    for chip in SHOWCASE_CHIPS:
        node = by_chip.get(chip)
        if node is None:
            continue
        with signed_channel(node.agent_address, operator) as channel:
            resp = agent_pb2_grpc.AgentServiceStub(channel).RunTask(
                agent_pb2.RunTaskRequest(
                    task_id=f"demo-{chip}-{stamp}",
                    job_id="demo",
                    precision=common_pb2.PRECISION_FP16,
                    onnx=agent_pb2.OnnxWork(model=model, inputs=[from_array("img", images)]),
                ),
                metadata=((TENANT_METADATA_KEY, tenant), (ROLE_METADATA_KEY, ADMIN_ROLE)),
                timeout=60,
            )
        out = np.asarray(to_array("out", resp.outputs[0]), dtype=np.float32)
        error = float(np.max(np.abs(out - reference)))
        took_us = (resp.virtual_end_s - resp.virtual_start_s) * 1e6
        rows.append(
            [
                chip,
                node.runtime_name,
                f"{took_us:.1f}",
                resp.cost.bound,
                str(resp.cost.kernels),
                f"{error:.2e}",
            ]
        )
    deadline = time.monotonic() + 10
    summary = None
    while time.monotonic() < deadline:
        summary = client.metering.GetUsageSummary(metering_pb2.GetUsageSummaryRequest())
        if sum(c.records for c in summary.by_chip) >= len(rows):
            break
        time.sleep(0.2)
    if summary is not None:
        # The totals hold the evaluations' work too; the CNN's chips are enough to show it.
        for usage in (u for u in summary.by_chip if u.chip in SHOWCASE_CHIPS):
            say(
                f"  metered {usage.chip}: {usage.samples} samples, "
                f"{usage.busy_device_us} busy device-us"
            )
    return rows


def stream_completion(
    openai_addr: str, api_key: str, model: str, max_tokens: int = 48
) -> tuple[str, float, float, float]:
    """One streamed completion through the gateway's OpenAI-compatible endpoint, read as any
    HTTP client would (server-sent events); returns the text, the client-measured TTFT (s), the
    mean gap between later tokens (s), and the last token's virtual time (s)."""
    body = json.dumps(
        {
            "model": model,
            "prompt": "Which accelerator should serve our chat assistant?",
            "max_tokens": max_tokens,
            "stream": True,
            "seed": 1,
        }
    ).encode()
    request = urllib.request.Request(
        f"http://{openai_addr}/v1/completions",
        data=body,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    start = time.monotonic()
    arrivals: list[float] = []
    pieces: list[str] = []
    virtual = 0.0
    with urllib.request.urlopen(request, timeout=60) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            choices = event.get("choices") or []
            if choices and choices[0].get("text"):
                arrivals.append(time.monotonic() - start)
                pieces.append(choices[0]["text"])
                virtual = float(event.get("pocgrid_virtual_time_s", virtual))
    if not arrivals:
        raise RuntimeError(f"{model}: the stream carried no tokens")
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return "".join(pieces), arrivals[0], (sum(gaps) / len(gaps) if gaps else 0.0), virtual
