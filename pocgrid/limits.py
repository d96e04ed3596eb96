"""Limits of the pool that both the agent and the tools that start agents check."""

from __future__ import annotations

from typing import Final

MAX_DEVICES_PER_NODE: Final = 64
"""The most devices one agent (one node) emulates."""
