"""A memory region: where bytes live (device, address, length), whoever owns them.

Transports describe their slots and buffers as regions (:mod:`pyxccl.transport.base`); a
:class:`~pyxccl.memory.buffer.Buffer` of a user's array is a region with a dtype and an owner.
Devices are named like torch's: ``"cpu"`` for host memory, ``"cuda:N"`` for GPU ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass

HOST = "cpu"


def is_host(device: str) -> bool:
    """Whether memory on ``device`` is host memory (a CPU-side view of it may exist)."""
    return device == HOST


@dataclass(frozen=True)
class Region:
    """``nbytes`` bytes at ``address`` on ``device``."""

    device: str
    address: int
    nbytes: int

    @property
    def on_host(self) -> bool:
        return is_host(self.device)
