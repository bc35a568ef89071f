"""A ring of slots in memory shared by a sender and a receiver, and connectors over it.

Layout (``header_bytes`` then the slots): ``head`` (slots posted, written by the
sender only) and ``tail`` (slots released, written by the receiver only) on their own
cache lines, then the posted length of every slot. Counters are 32-bit and wrap.
The memory may be a shared-memory file (shm transport) or process memory (local
transport); the connectors are the same.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import numpy as np

from .base import RecvConnector, SendConnector
from .doorbell import Doorbell

_MASK = 0xFFFFFFFF
HEADER_BYTES = 4096


def ring_bytes(slot_bytes: int, nslots: int) -> int:
    """Bytes a ring of ``nslots`` slots of ``slot_bytes`` needs."""
    return HEADER_BYTES + slot_bytes * nslots


class SlotRing:
    """Views on a ring living in ``mem`` (any writable buffer of ``ring_bytes`` bytes)."""

    def __init__(self, mem: Any, slot_bytes: int, nslots: int):
        if nslots * 4 + 256 > HEADER_BYTES:
            raise ValueError("too many slots for the ring header")
        self.mem = mem
        self.slot_bytes = slot_bytes
        self.nslots = nslots
        self.head = ctypes.c_uint32.from_buffer(mem, 0)
        self.tail = ctypes.c_uint32.from_buffer(mem, 128)
        self.sizes = (ctypes.c_uint32 * nslots).from_buffer(mem, 256)
        data = np.frombuffer(mem, dtype=np.uint8, count=slot_bytes * nslots, offset=HEADER_BYTES)
        self.slots = [data[i * slot_bytes:(i + 1) * slot_bytes] for i in range(nslots)]

    @classmethod
    def allocate(cls, slot_bytes: int, nslots: int) -> "SlotRing":
        """A ring in private memory (threads of one process)."""
        return cls(mmap.mmap(-1, ring_bytes(slot_bytes, nslots)), slot_bytes, nslots)


class RingSendConnector(SendConnector):
    """Sender side: fills ``slots[head % nslots]``, then bumps head and rings the receiver."""

    def __init__(self, ring: SlotRing, peer: int, channel: int, peer_doorbell: Doorbell):
        self.ring, self.peer, self.channel, self.bell = ring, peer, channel, peer_doorbell
        self._head = ring.head.value
        self._nslots = ring.nslots

    def ready(self) -> bool:
        return ((self._head - self.ring.tail.value) & _MASK) < self._nslots

    def buffer(self) -> np.ndarray:
        return self.ring.slots[self._head % self._nslots]

    def post(self, nbytes: int) -> None:
        ring = self.ring
        ring.sizes[self._head % self._nslots] = nbytes
        self._head = (self._head + 1) & _MASK
        ring.head.value = self._head
        self.bell.ring()


class RingRecvConnector(RecvConnector):
    """Receiver side: consumes ``slots[tail % nslots]``, then bumps tail and rings the sender."""

    def __init__(self, ring: SlotRing, peer: int, channel: int):
        self.ring, self.peer, self.channel = ring, peer, channel
        self._tail = ring.tail.value
        self._nslots = ring.nslots
        self.bell: Doorbell | None = None  # the sender's doorbell, known once it attached

    def ready(self) -> bool:
        return self.ring.head.value != self._tail

    def buffer(self) -> np.ndarray:
        i = self._tail % self._nslots
        return self.ring.slots[i][:self.ring.sizes[i]]

    def release(self) -> None:
        self._tail = (self._tail + 1) & _MASK
        self.ring.tail.value = self._tail
        if self.bell is not None:
            self.bell.ring()
