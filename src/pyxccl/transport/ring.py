"""A ring of slots in memory shared by a sender and a receiver, and the connectors over it.

The shm transport keeps its rings in shared-memory files, the local transport in process
memory; both move slots with these connectors (shm's subclass them for single copy).

Header layout (:data:`HEADER_BYTES`, then the slots; this is the one definition of it):

====================  ======================================================
offset                what
====================  ======================================================
0                     ``head``: slots posted (u32, written by the sender only)
128                   ``tail``: slots released (u32, written by the receiver only)
256                   the posted length of every slot (u32 x nslots)
:data:`EXTRA_OFFSET`  :data:`EXTRA_BYTES` for the transport above the ring
                      (shm: its single-copy handshake and destination offers,
                      :mod:`pyxccl.transport.shm.connectors`)
====================  ======================================================

Counters are 32-bit and wrap. A posted length's top bit (:data:`MARK`) is the transport's
too: shm marks a slot that holds a descriptor instead of data with it.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import numpy as np

from .base import RecvConnector, SendConnector, slots_region
from .doorbell import Doorbell
from ..memory.region import Region

#: counters wrap at 32 bits
MASK = 0xFFFFFFFF
HEADER_BYTES = 4096
_HEAD_OFFSET, _TAIL_OFFSET, _SIZES_OFFSET = 0, 128, 256
#: bytes at the header's end that belong to the transport above the ring
EXTRA_BYTES = 384
EXTRA_OFFSET = HEADER_BYTES - EXTRA_BYTES
#: a posted length's bit that the transport above the ring may set (never part of a length)
MARK = 0x80000000


def ring_bytes(slot_bytes: int, nslots: int) -> int:
    """Bytes a ring of ``nslots`` slots of ``slot_bytes`` needs."""
    return HEADER_BYTES + slot_bytes * nslots


#: map every page up front (Linux): a slot's first use otherwise takes a page fault per 4 KiB in
#: the copy (a 1 MiB all-gather through slots first used after calls by single copy: 136 faults,
#: 420 µs more in one 512 KiB copy), and the chooser of :mod:`pyxccl.runtime.host.path_choice` timed that
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def map_ring(fd: int, size: int) -> mmap.mmap:
    """A shared mapping of ``size`` bytes of ``fd`` with its pages mapped in now (where the system can)."""
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)


class SlotRing:
    """Views on a ring living in ``mem`` (any writable buffer of ``ring_bytes`` bytes)."""

    def __init__(self, mem: Any, slot_bytes: int, nslots: int):
        if _SIZES_OFFSET + nslots * 4 > EXTRA_OFFSET:
            raise ValueError(f"too many slots ({nslots}) for the ring header")
        self.mem = mem
        self.slot_bytes = slot_bytes
        self.nslots = nslots
        self.head = ctypes.c_uint32.from_buffer(mem, _HEAD_OFFSET)
        self.tail = ctypes.c_uint32.from_buffer(mem, _TAIL_OFFSET)
        self.sizes = (ctypes.c_uint32 * nslots).from_buffer(mem, _SIZES_OFFSET)
        data = np.frombuffer(mem, dtype=np.uint8, count=slot_bytes * nslots, offset=HEADER_BYTES)
        self.slots = [data[i * slot_bytes:(i + 1) * slot_bytes] for i in range(nslots)]

    @classmethod
    def allocate(cls, slot_bytes: int, nslots: int) -> "SlotRing":
        """A ring in private memory (threads of one process)."""
        mem = mmap.mmap(-1, ring_bytes(slot_bytes, nslots), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | _POPULATE)
        return cls(mem, slot_bytes, nslots)


class RingSendConnector(SendConnector):
    """Sender side: fills ``slots[head % nslots]``, then bumps head and rings the receiver."""

    def __init__(self, ring: SlotRing, peer: int, channel: int, peer_doorbell: Doorbell):
        self.ring, self.peer, self.channel, self.bell = ring, peer, channel, peer_doorbell
        self._head = ring.head.value
        self._nslots = self.nslots = ring.nslots

    def ready(self) -> bool:
        return ((self._head - self.ring.tail.value) & MASK) < self._nslots

    def buffer(self) -> np.ndarray:
        return self.ring.slots[self._head % self._nslots]

    def slot_index(self) -> int:
        return self._head % self._nslots

    def post(self, nbytes: int) -> None:
        ring = self.ring
        ring.sizes[self._head % self._nslots] = nbytes
        self._head = (self._head + 1) & MASK
        ring.head.value = self._head
        self.bell.ring()

    def slot_region(self, index: int | None = None) -> Region:
        return slots_region(self.ring.slots, index)

    @property
    def head(self) -> int:
        """Slots posted so far (the sequence number of the next one)."""
        return self._head


class RingRecvConnector(RecvConnector):
    """Receiver side: consumes ``slots[tail % nslots]``, then bumps tail and rings the sender."""

    def __init__(self, ring: SlotRing, peer: int, channel: int):
        self.ring, self.peer, self.channel = ring, peer, channel
        self._tail = ring.tail.value
        self._nslots = self.nslots = ring.nslots
        self.bell: Doorbell | None = None  # the sender's doorbell, known once it attached

    def ready(self) -> bool:
        return self.ring.head.value != self._tail

    def slot_index(self, nbytes: int) -> int:
        i = self._tail % self._nslots
        return i if self.ring.sizes[i] == nbytes else -1  # a length with the top bit set is never equal

    def buffer(self) -> np.ndarray:
        i = self._tail % self._nslots
        return self.ring.slots[i][:self.ring.sizes[i]]

    def release(self) -> None:
        self._tail = (self._tail + 1) & MASK
        self.ring.tail.value = self._tail
        if self.bell is not None:
            self.bell.ring()

    def slot_region(self, index: int | None = None) -> Region:
        return slots_region(self.ring.slots, index)

    @property
    def tail(self) -> int:
        """Slots consumed so far (the sequence number of the next one)."""
        return self._tail
