"""Deterministic collective inputs: what rank r feeds a check of the library, so that a caller
can compute the expected result with numpy without the ranks shipping their data.

Small integers (-50..50) in every dtype: sums over up to 64 ranks stay exact in float32 in any
order of reduction, so the library's result must equal numpy's bit for bit.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

DTYPES: Final = ("float32", "float64", "int32", "int64")


def pattern(rank: int, n: int, dtype: str, salt: int = 0) -> npt.NDArray[Any]:
    """Rank ``rank``'s input of ``n`` elements; ``salt`` tells two checks' data apart."""
    x = (np.arange(n, dtype=np.int64) * (rank + 3 + salt) + 7 * rank + salt) % 101 - 50
    return x.astype(dtype)
