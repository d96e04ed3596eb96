"""``pocgrid.v1.Tensor`` <-> numpy arrays."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from pocgrid.v1 import agent_pb2
from services.core.errors import InvalidArgument

_DTYPES: dict[agent_pb2.TensorDtype.ValueType, np.dtype[np.generic]] = {
    agent_pb2.TENSOR_DTYPE_FLOAT32: np.dtype("<f4"),
    agent_pb2.TENSOR_DTYPE_FLOAT16: np.dtype("<f2"),
    agent_pb2.TENSOR_DTYPE_INT64: np.dtype("<i8"),
    agent_pb2.TENSOR_DTYPE_INT32: np.dtype("<i4"),
}
_BY_NUMPY = {dt: code for code, dt in _DTYPES.items()}


def to_array(field: str, tensor: agent_pb2.Tensor) -> NDArray[np.generic]:
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument(f"{field}.dtype", "must be FLOAT32, FLOAT16, INT64 or INT32")
    if any(d < 0 for d in tensor.shape):
        raise InvalidArgument(f"{field}.shape", "dimensions must be >= 0")
    expected = math.prod(tensor.shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(
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
