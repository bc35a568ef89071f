"""A ring of slots in memory shared by a sender and a receiver, and connectors over it.

Layout (``header_bytes`` then the slots): ``head`` (slots posted, written by the
sender only) and ``tail`` (slots released, written by the receiver only) on their own
cache lines, then the posted length of every slot. Counters are 32-bit and wrap.
The memory may be a shared-memory file (shm transport) or process memory (local
transport); the connectors are the same.

Descriptors (the single-copy path, see :mod:`.base`): a posted length with
:data:`DESC_FLAG` set marks a slot that holds a descriptor instead of the data:
``nbytes`` (the logical length), ``aux`` (a word for the caller) and regions
(logical offset, address in the sender's memory, length). The ring only carries
them; how the receiver reads the sender's memory is its subclass's business
(:meth:`RingRecvConnector._read`, e.g. process_vm_readv in the shm transport). The
last cache line of the header belongs to that handshake (:class:`SlotRing` ``cma_*``).

Destination offers (the other way round): a receiver waiting for a slot may publish where
that slot's bytes should land in its memory (``put_*`` in the header: the slot's sequence
number + 1, then regions like a descriptor's); a sender whose next slot is that one may
write part of its data there itself (``process_vm_writev``) while the receiver reads the
rest, then publishes ``put_done`` (or ``put_fail``) with the same number.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Any

import numpy as np

from .base import RecvConnector, SendConnector, overlap
from .doorbell import Doorbell

_MASK = 0xFFFFFFFF
HEADER_BYTES = 4096
_CMA_OFFSET = HEADER_BYTES - 128  # the single-copy handshake's cache line
_PUT_OFFSET = _CMA_OFFSET - 256  # a receiver's destination offer: seq, done, fail, n, regions
#: regions a destination offer holds
PUT_MAX_REGIONS = 8
#: a posted length with this bit set: the slot holds a descriptor, not data
DESC_FLAG = 0x80000000
_DESC_HEAD = struct.Struct("<QQQ")  # nbytes, aux, number of regions
_DESC_REGION = struct.Struct("<QQQ")  # logical offset, address, length
#: probe states a receiver publishes (``cma_state``)
CMA_UNKNOWN, CMA_OK, CMA_OFF = 0, 1, 2


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
        if nslots * 4 + 256 > _PUT_OFFSET:
            raise ValueError("too many slots for the ring header")
        self.mem = mem
        self.slot_bytes = slot_bytes
        self.nslots = nslots
        self.head = ctypes.c_uint32.from_buffer(mem, 0)
        self.tail = ctypes.c_uint32.from_buffer(mem, 128)
        self.sizes = (ctypes.c_uint32 * nslots).from_buffer(mem, 256)
        # single-copy handshake: the sender publishes the address of a probe word holding
        # ``cma_token`` (0: it offers no descriptors); the receiver reads it and says CMA_OK / CMA_OFF
        self.cma_addr = ctypes.c_uint64.from_buffer(mem, _CMA_OFFSET)
        self.cma_token = ctypes.c_uint64.from_buffer(mem, _CMA_OFFSET + 8)
        self.cma_attached = ctypes.c_uint32.from_buffer(mem, _CMA_OFFSET + 16)
        self.cma_state = ctypes.c_uint32.from_buffer(mem, _CMA_OFFSET + 20)
        self.cma_min = ctypes.c_uint64.from_buffer(mem, _CMA_OFFSET + 24)
        self.put_seq = ctypes.c_uint32.from_buffer(mem, _PUT_OFFSET)
        self.put_done = ctypes.c_uint32.from_buffer(mem, _PUT_OFFSET + 4)
        self.put_fail = ctypes.c_uint32.from_buffer(mem, _PUT_OFFSET + 8)
        self.put_n = ctypes.c_uint32.from_buffer(mem, _PUT_OFFSET + 12)
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
        self._remote_min: int | None = 0  # None: the receiver has not answered the offer yet
        self._offered_min = 0
        self._desc_mark: int | None = None  # head after the last descriptor posted
        self._put_ok = False  # destination offers may be used: a subclass that can write sets it (until refused)

    def ready(self) -> bool:
        return ((self._head - self.ring.tail.value) & _MASK) < self._nslots

    def buffer(self) -> np.ndarray:
        return self.ring.slots[self._head % self._nslots]

    def slot_index(self) -> int:
        return self._head % self._nslots

    def post(self, nbytes: int) -> None:
        ring = self.ring
        ring.sizes[self._head % self._nslots] = nbytes
        self._head = (self._head + 1) & _MASK
        ring.head.value = self._head
        self.bell.ring()

    # ------------------------------------------------------------------ descriptors
    def offer_remote(self, probe_addr: int, token: int, min_bytes: int) -> None:
        """Offer descriptors: the receiver checks it can read ``token`` at ``probe_addr`` (this process)."""
        ring = self.ring
        if probe_addr and min_bytes > 0 and ring.slot_bytes >= 4096:
            ring.cma_token.value = token
            ring.cma_min.value = min_bytes
            ring.cma_addr.value = probe_addr
            self._offered_min, self._remote_min = min_bytes, None
        ring.cma_attached.value = 1

    @property
    def remote_min_bytes(self) -> int:
        m = self._remote_min
        if m is None:
            state = self.ring.cma_state.value
            if state == CMA_UNKNOWN:
                return 0
            m = self._remote_min = self._offered_min if state == CMA_OK else 0
        return m

    def post_remote(self, nbytes: int, regions: list[tuple[int, int, int]], aux: int = 0) -> None:
        ring = self.ring
        i = self._head % self._nslots
        slot = ring.slots[i]
        end = _DESC_HEAD.size + _DESC_REGION.size * len(regions)
        if end > ring.slot_bytes:
            raise ValueError(f"a descriptor of {len(regions)} regions does not fit a slot of {ring.slot_bytes} bytes")
        _DESC_HEAD.pack_into(slot, 0, nbytes, aux, len(regions))
        off = _DESC_HEAD.size
        for r in regions:
            _DESC_REGION.pack_into(slot, off, *r)
            off += _DESC_REGION.size
        ring.sizes[i] = DESC_FLAG | end
        self._head = (self._head + 1) & _MASK
        self._desc_mark = self._head
        ring.head.value = self._head
        self.bell.ring()

    def destination(self) -> list[tuple[int, int, int]] | None:
        """The receiver's answer for the next slot: where its bytes go, (logical offset, address, length)
        regions in the receiver's memory; [] when it declined or writes are refused here; None
        while it has not answered."""
        ring = self.ring
        if ring.put_seq.value != (self._head + 1) & _MASK:
            return None
        if not self._put_ok:
            return []
        n = min(ring.put_n.value, PUT_MAX_REGIONS)
        return [_DESC_REGION.unpack_from(ring.mem, _PUT_OFFSET + 16 + i * _DESC_REGION.size) for i in range(n)]

    def put_finished(self, seq: int, ok: bool) -> None:
        """Tell the receiver the bytes promised for slot ``seq`` (a head value) are written (or never will be)."""
        (self.ring.put_done if ok else self.ring.put_fail).value = (seq + 1) & _MASK
        self.bell.ring()

    @property
    def head(self) -> int:
        """Slots posted so far (the sequence number of the next one)."""
        return self._head

    def remote_pending(self) -> bool:
        mark = self._desc_mark
        if mark is None:
            return False
        if ((self.ring.tail.value - mark) & _MASK) < 0x80000000:  # tail reached the mark
            self._desc_mark = None
            return False
        return True


class RingRecvConnector(RecvConnector):
    """Receiver side: consumes ``slots[tail % nslots]``, then bumps tail and rings the sender."""

    _probed = True  # subclasses that read descriptors answer the sender's offer at the first release

    def __init__(self, ring: SlotRing, peer: int, channel: int):
        self.ring, self.peer, self.channel = ring, peer, channel
        self._tail = ring.tail.value
        self._nslots = ring.nslots
        self.bell: Doorbell | None = None  # the sender's doorbell, known once it attached
        self._desc: tuple[int, int, int, list[tuple[int, int, int]]] | None = None  # (tail, nbytes, aux, regions)

    def ready(self) -> bool:
        return self.ring.head.value != self._tail

    def slot_index(self, nbytes: int) -> int:
        i = self._tail % self._nslots
        return i if self.ring.sizes[i] == nbytes else -1  # a descriptor has DESC_FLAG set: never equal

    def buffer(self) -> np.ndarray:
        i = self._tail % self._nslots
        size = self.ring.sizes[i]
        if size & DESC_FLAG:  # a consumer that does not read descriptors itself: resolve into the slot
            nbytes = self._descriptor()[1]
            slot = self.ring.slots[i]
            if nbytes > slot.size:
                raise ValueError(f"a descriptor of {nbytes} bytes does not fit a slot of {slot.size} bytes")
            self.read_remote([(0, slot.ctypes.data, nbytes)])
            self.ring.sizes[i] = size = nbytes  # the slot is the receiver's until released
        return self.ring.slots[i][:size]

    def release(self) -> None:
        if not self._probed:
            self._answer_offer()
        self._desc = None
        self._tail = (self._tail + 1) & _MASK
        self.ring.tail.value = self._tail
        if self.bell is not None:
            self.bell.ring()

    # ------------------------------------------------------------------ descriptors
    _remote_min = 0

    @property
    def remote_min_bytes(self) -> int:
        """0 until this receiver accepted the sender's offer, then the sender's smallest descriptor step."""
        m = self._remote_min
        if not m and self.ring.cma_state.value == CMA_OK:
            m = self._remote_min = int(self.ring.cma_min.value)
        return m

    def remote(self) -> tuple[int, int] | None:
        i = self._tail % self._nslots
        if not self.ring.sizes[i] & DESC_FLAG:
            return None
        d = self._descriptor()
        return d[1], d[2]

    def offer_destination(self, regions: list[tuple[int, int, int]]) -> bool:
        """Offer (logical offset, address, length) regions of this process as the destination of
        the next slot's bytes (see the module docstring), or decline (``[]``, also when they do
        not fit the offer: False); a sender waiting for the answer is woken."""
        seq = (self._tail + 1) & _MASK
        if not seq:
            return False
        if len(regions) > PUT_MAX_REGIONS:
            regions = []
        ring = self.ring
        ring.put_seq.value = 0  # a sender never sees a half-written offer
        for i, r in enumerate(regions):
            _DESC_REGION.pack_into(ring.mem, _PUT_OFFSET + 16 + i * _DESC_REGION.size, *r)
        ring.put_n.value = len(regions)
        ring.put_seq.value = seq
        if self.bell is not None:
            self.bell.ring()
        return bool(regions)

    def put_state(self, seq: int) -> bool | None:
        """Whether the sender wrote what it promised for slot ``seq`` (a tail value): True, False
        (it could not), None (not yet)."""
        want = (seq + 1) & _MASK
        if self.ring.put_done.value == want:
            return True
        if self.ring.put_fail.value == want:
            return False
        return None

    @property
    def tail(self) -> int:
        """Slots consumed so far (the sequence number of the next one)."""
        return self._tail

    def read_remote(self, targets: list[tuple[int, int, int]]) -> None:
        pieces = overlap(targets, self._descriptor()[3])
        if pieces:
            self._read(pieces)

    def _descriptor(self) -> tuple[int, int, int, list[tuple[int, int, int]]]:
        d = self._desc
        if d is None or d[0] != self._tail:
            slot = self.ring.slots[self._tail % self._nslots]
            nbytes, aux, k = _DESC_HEAD.unpack_from(slot, 0)
            regions = [_DESC_REGION.unpack_from(slot, _DESC_HEAD.size + j * _DESC_REGION.size) for j in range(k)]
            d = self._desc = (self._tail, nbytes, aux, regions)
        return d

    def _read(self, pieces: list[tuple[int, int, int]]) -> None:
        """Copy (local address, sender's address, length) pieces from the sender's memory."""
        raise NotImplementedError(f"{type(self).__name__} cannot read descriptors")

    def _answer_offer(self) -> None:
        """Publish CMA_OK or CMA_OFF in the ring for the sender's offer (subclasses)."""
        self._probed = True
