"""Uploads: malformed and hostile ONNX files and config.json files are refused, naming why."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pocgrid.adapt.hf_config import ConfigImportError, parse_config
from pocgrid.adapt.onnx_import import OnnxImportError, validate_onnx
from pocgrid.samples import cnn


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_if_model(depth: int) -> bytes:
    """A ModelProto whose graph nests an If body ``depth`` levels deep (built as raw bytes:
    the protobuf library itself cannot build a message that deep)."""
    graph = _field(1, _field(4, b"Identity"))  # innermost: one node
    for _ in range(depth):
        attr = _field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + _field(6, graph)
        node = _field(4, b"If") + _field(5, attr)
        graph = _field(1, node)
    opset = _field(1, b"") + _varint(2 << 3) + _varint(17)
    return _varint(1 << 3) + _varint(10) + _field(8, opset) + _field(7, graph)


def good() -> bytes:
    return cnn().SerializeToString()


def test_a_good_model_is_content_addressed() -> None:
    data = good()
    a, b = validate_onnx(data), validate_onnx(data)
    assert a.sha256 == b.sha256 and a.model_id.startswith("onnx-")
    assert a.ops["Conv"] >= 1 and a.size_bytes == len(data)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"PK\x03\x04rest-of-a-zip", "zip"),
        (b"\x89PNG\r\n\x1a\n....", "PNG"),
        (b"\x12\x34\x56", "0x12"),
        (good()[: len(good()) // 2], "truncated"),
    ],
    ids=["empty", "zip", "png", "bad-leading-byte", "truncated"],
)
def test_malformed_files_name_what_is_wrong(data: bytes, needle: str) -> None:
    with pytest.raises(OnnxImportError, match=needle):
        validate_onnx(data)


def test_size_limit() -> None:
    with pytest.raises(OnnxImportError, match="exceeds the limit of 100 bytes"):
        validate_onnx(good(), max_bytes=100)


def test_graph_nested_thousands_deep() -> None:
    with pytest.raises(OnnxImportError, match="nested"):
        validate_onnx(nested_if_model(3000))
    with pytest.raises(OnnxImportError, match="nested 17 deep"):
        validate_onnx(nested_if_model(16))


def _with_initializer(t: TensorProto) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[t],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_enormous_declared_tensor() -> None:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000, 1000])
    with pytest.raises(OnnxImportError, match="'w' declares shape"):
        validate_onnx(_with_initializer(t))


def test_tensor_whose_data_does_not_match_its_shape() -> None:
    t = onnx.numpy_helper.from_array(np.zeros(4, np.float32), "w")
    t.dims[0] = 400
    with pytest.raises(OnnxImportError, match="declares 1600 bytes but holds 16"):
        validate_onnx(_with_initializer(t))


def test_external_data_is_refused() -> None:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    with pytest.raises(OnnxImportError, match="external data"):
        validate_onnx(_with_initializer(t))


def test_opset_range_and_checker() -> None:
    m = cnn()
    m.opset_import[0].version = 3
    with pytest.raises(OnnxImportError, match="opset 3 is outside"):
        validate_onnx(m.SerializeToString())
    m = cnn()
    m.graph.node[0].input[0] = "undefined_value"
    with pytest.raises(OnnxImportError, match="checker"):
        validate_onnx(m.SerializeToString())


LLAMA = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}


def test_config_json_gives_an_llm() -> None:
    imported = parse_config(json.dumps(LLAMA).encode(), "my-llama")
    m = imported.model
    assert m.arch is not None and m.arch.num_kv_heads == 8 and m.arch.head_dim == 128
    assert m.params_b == pytest.approx(8.03, abs=0.01)  # Llama-3.1-8B's published count
    assert imported.model_id.startswith("llm-")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"hidden_size": None}, "config.hidden_size: is required"),
        ({"hidden_size": "4096"}, "config.hidden_size: must be an integer"),
        ({"num_hidden_layers": 0}, r"config.num_hidden_layers: must be in \[1, 1024\]"),
        ({"num_key_value_heads": 5}, "config.num_key_value_heads: must divide"),
        ({"hidden_act": "tanh"}, "config.hidden_act"),
        ({"tie_word_embeddings": "yes"}, "config.tie_word_embeddings"),
        ({"num_local_experts": 8}, "config.num_experts_per_tok: is required"),
        ({"vocab_size": True}, "config.vocab_size: must be an integer"),
    ],
)
def test_config_fields_are_validated_one_by_one(change: dict[str, object], needle: str) -> None:
    cfg = {**LLAMA, **change}
    with pytest.raises(ConfigImportError, match=needle):
        parse_config(json.dumps(cfg).encode())


@pytest.mark.parametrize(
    ("data", "needle"), [(b"", "empty"), (b"\xff\xfe", "not JSON"), (b"[1]", "JSON object")]
)
def test_config_that_is_not_a_json_object(data: bytes, needle: str) -> None:
    with pytest.raises(ConfigImportError, match=needle):
        parse_config(data)
