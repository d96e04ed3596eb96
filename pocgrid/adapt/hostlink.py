"""What an operator run on the host costs: its tensors cross the chip's host link twice.

The catalogue has no host-link figure per chip, so the link is derived from the PCIe
generation each card uses. These are **estimates** (marked so in every result): PCIe 4.0 x16
is 32 GB/s per direction on paper and PCIe 5.0 x16 64 GB/s; DMA reaches about 80 % of that, and
each transfer pays a fixed launch-and-synchronise latency. The host computes the operator at a
memory-bound rate typical of a server CPU socket running onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pocgrid.catalog import Chip

#: Cards on PCIe 5.0 hosts (by catalogue name); every other emulatable card is PCIe 4.0 x16.
PCIE5_CHIPS: Final = frozenset(
    {"h100-80gb-sxm", "h200-141gb-sxm", "h20-96gb", "l20-48gb", "mi300x"}
)
_PCIE4_GBS: Final = 32.0
_PCIE5_GBS: Final = 64.0
_DMA_EFFICIENCY: Final = 0.8
#: Launch + synchronise per transfer (device -> host, then host -> device).
TRANSFER_LATENCY_S: Final = 20e-6
#: Host memory bandwidth an elementwise-ish CPU kernel reaches (one socket, estimate).
HOST_BYTES_PER_S: Final = 20e9


@dataclass(frozen=True, slots=True)
class HostLink:
    chip: str
    bytes_per_s: float
    """Effective one-direction bandwidth."""
    basis: str

    def fallback_seconds(self, transfer_bytes: float, transfers: int = 2) -> float:
        """Time one host-run operator adds: the copies both ways plus the host's own pass."""
        return (
            transfer_bytes / self.bytes_per_s
            + transfers * TRANSFER_LATENCY_S
            + transfer_bytes / HOST_BYTES_PER_S
        )


def host_link(chip: Chip) -> HostLink:
    gen5 = chip.name in PCIE5_CHIPS
    raw = _PCIE5_GBS if gen5 else _PCIE4_GBS
    return HostLink(
        chip=chip.name,
        bytes_per_s=raw * 1e9 * _DMA_EFFICIENCY,
        basis=(
            f"estimate: PCIe {'5.0' if gen5 else '4.0'} x16 ({raw:.0f} GB/s per direction) at"
            f" {_DMA_EFFICIENCY:.0%} DMA efficiency, {TRANSFER_LATENCY_S * 1e6:.0f} us per transfer"
        ),
    )
