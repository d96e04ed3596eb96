"""The ONNX operators a catalogue model uses when exported, per operator with a node count.

The catalogue carries no ONNX graphs for its models (the weights are not here), so each model
gets the operator signature of its standard export: a decoder LLM as exported with the
opset-23 fused operators (RMSNormalization, RotaryEmbedding, Attention with a KV cache, as
onnxruntime-genai and Olive export them), and the vision, speech and NLP models as torchvision,
Hugging Face Optimum and Ultralytics export them at opset 17. Counts are per forward pass.
An imported ONNX model needs none of this: its coverage is read from its own graph.
"""

from __future__ import annotations

from collections import Counter

from pocgrid.catalog import LlmArch, Model


def _llm(model: Model, arch: LlmArch) -> dict[str, int]:
    layers = arch.num_layers
    ops: Counter[str] = Counter()
    ops["Gather"] += 1  # token embedding
    layer_norm = "GPT-J" in model.name or "gelu_new" in arch.activation
    norm = "LayerNormalization" if layer_norm else "RMSNormalization"
    ops[norm] += 2 * layers + 1
    ops["MatMul"] += 4 * layers + 1  # q/k/v/o (fused qkv counts once per projection) + lm head
    ops["RotaryEmbedding"] += 2 * layers
    ops["Attention"] += layers
    ops["Add"] += 2 * layers
    act = arch.activation.lower()
    if "gelu" in act:
        ops["Gelu"] += layers
    else:
        ops["Sigmoid"] += layers  # SiLU = x * sigmoid(x)
        ops["Mul"] += layers
    if "glu" in act:
        ops["Mul"] += layers  # the gate
    ops["MatMul"] += (3 if "glu" in act else 2) * layers
    if arch.num_experts:
        # Router: softmax over experts, top-k, gather the chosen experts' weights.
        moe_layers = layers - (arch.first_k_dense_replace or 0)
        ops["Softmax"] += moe_layers
        ops["TopK"] += moe_layers
        ops["GatherElements"] += moe_layers
        ops["ScatterElements"] += moe_layers
        ops["ReduceSum"] += moe_layers
    return dict(ops)


_SIGNATURES: dict[str, dict[str, int]] = {
    "ResNet-50": {
        "Conv": 53,
        "Relu": 49,
        "Add": 16,
        "MaxPool": 1,
        "GlobalAveragePool": 1,
        "Flatten": 1,
        "Gemm": 1,
    },
    "ViT-B/16": {
        "Conv": 1,
        "Reshape": 50,
        "Transpose": 37,
        "Concat": 1,
        "Add": 50,
        "LayerNormalization": 25,
        "MatMul": 72,
        "Softmax": 12,
        "Gelu": 12,
        "Gather": 1,
        "Mul": 12,
    },
    "BERT-base": {
        "Gather": 3,
        "Add": 63,
        "LayerNormalization": 25,
        "MatMul": 72,
        "Softmax": 12,
        "Gelu": 12,
        "Reshape": 48,
        "Transpose": 48,
        "Mul": 12,
        "Tanh": 1,
    },
    "Whisper": {
        "Conv": 2,
        "Gelu": 2,
        "Add": 100,
        "LayerNormalization": 64,
        "MatMul": 200,
        "Attention": 48,
        "Gather": 2,
        "Reshape": 100,
        "Transpose": 100,
    },
    # Stable Diffusion v1.x: the text encoder, UNet and VAE decoder graphs together (one
    # forward pass each), counted block by block from the diffusers architecture (CLIP ViT-L/14
    # text model: 12 layers; UNet: 22 ResNet blocks, 16 transformer blocks with self- and
    # cross-attention whose score products the ONNX export writes as Einsum, 3 down- and 3
    # up-samplers; decoder: 11 ResNet blocks, 1 attention block, 3 up-samplers), not read from
    # an exported graph. GroupNorm exports as InstanceNormalization at opset 17.
    "Stable-Diffusion": {
        "Gather": 2,
        "Conv": 90 + 30,
        "InstanceNormalization": 61 + 30,
        "Sigmoid": 46 + 30 + 12,
        "Mul": 46 + 30 + 12 + 16,
        "Add": 110 + 30 + 50,
        "MatMul": 160 + 4 + 72,
        "Einsum": 64,
        "Softmax": 32 + 1 + 12,
        "LayerNormalization": 48 + 25,
        "Gelu": 16,
        "Gemm": 24,
        "Resize": 3 + 3,
        "Concat": 12,
        "Reshape": 96 + 4 + 48,
        "Transpose": 64 + 4 + 48,
        "Sin": 1,
        "Cos": 1,
    },
    "YOLOv5s": {
        "Conv": 60,
        "Sigmoid": 61,
        "Mul": 63,
        "Add": 8,
        "Concat": 17,
        "MaxPool": 3,
        "Resize": 2,
        "Reshape": 6,
        "Transpose": 3,
        "NonMaxSuppression": 1,
    },
    "YOLOv8n": {
        "Conv": 63,
        "Sigmoid": 58,
        "Mul": 58,
        "Add": 6,
        "Split": 9,
        "Concat": 19,
        "MaxPool": 3,
        "Resize": 2,
        "Reshape": 4,
        "Transpose": 1,
        "Softmax": 1,
        "NonMaxSuppression": 1,
    },
}


def operator_signature(model: Model) -> dict[str, int] | None:
    """Operator -> node count of ``model``'s standard export; None when none is known."""
    if model.arch is not None:
        return _llm(model, model.arch)
    for prefix, ops in _SIGNATURES.items():
        if model.name.startswith(prefix):
            return dict(ops)
    return None
