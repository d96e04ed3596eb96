"""The ids the adapter gives a tenant's imported models: ``onnx-<hex>`` for an ONNX graph and
``llm-<hex>`` for a ``config.json`` LLM, the first 32 hex digits of the file's SHA-256.

Kept apart from the importers (no onnx import) so that a service that only carries such an id
along (the scheduler, holding devices for an evaluation of one) can tell it from a misspelt
catalogue name without loading the graph."""

from __future__ import annotations

import re
from typing import Final, Literal

HEX_DIGITS: Final = 32
_ID: Final = re.compile(rf"(onnx|llm)-[0-9a-f]{{{HEX_DIGITS}}}")


def imported_model_id(kind: Literal["onnx", "llm"], sha256: str) -> str:
    return f"{kind}-{sha256[:HEX_DIGITS]}"


def is_imported_model_id(name: str) -> bool:
    """Whether ``name`` has the shape of an imported model's id (not whether it exists)."""
    return _ID.fullmatch(name) is not None
