"""``pocgrid.v1.Tensor`` <-> numpy arrays, for clients and for the agent that serves them."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from pocgrid.v1 import agent_pb2

_DTYPES: dict[agent_pb2.TensorDtype.ValueType, np.dtype[np.generic]] = {
    agent_pb2.TENSOR_DTYPE_FLOAT32: np.dtype("<f4"),
    agent_pb2.TENSOR_DTYPE_FLOAT16: np.dtype("<f2"),
    agent_pb2.TENSOR_DTYPE_INT64: np.dtype("<i8"),
    agent_pb2.TENSOR_DTYPE_INT32: np.dtype("<i4"),
}
_BY_NUMPY = {dt: code for code, dt in _DTYPES.items()}


class TensorError(ValueError):
    """A tensor that cannot be decoded: names the field and the rule it breaks."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def to_array(field: str, tensor: agent_pb2.Tensor) -> NDArray[np.generic]:
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise TensorError(f"{field}.dtype", "must be FLOAT32, FLOAT16, INT64 or INT32")
    if any(d < 0 for d in tensor.shape):
        raise TensorError(f"{field}.shape", "dimensions must be >= 0")
    expected = math.prod(tensor.shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise TensorError(
            f"{field}.data",
            f"must hold {expected} bytes for shape {list(tensor.shape)} (got {len(tensor.data)})",
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


def from_array(name: str, array: NDArray[np.generic]) -> agent_pb2.Tensor:
    dtype = np.dtype(array.dtype).newbyteorder("<")
    code = _BY_NUMPY.get(dtype)
    if code is None:
        array = array.astype("<f4")
        code = agent_pb2.TENSOR_DTYPE_FLOAT32
    return agent_pb2.Tensor(
        name=name, shape=list(array.shape), dtype=code, data=np.ascontiguousarray(array).tobytes()
    )
