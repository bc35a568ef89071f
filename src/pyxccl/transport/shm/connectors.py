"""shm's connectors: the ring's (:mod:`pyxccl.transport.ring`) plus single copy by CMA.

Single copy (``PYXCCL_CMA``, default on) uses the ring header's transport lines
(:data:`~pyxccl.transport.ring.EXTRA_OFFSET`; :class:`ShmRing` maps them):

- the handshake (its last cache line): the sender offers descriptors by publishing the
  address of a probe word in its own memory and the random value it holds; at its first
  release the receiver reads that word with process_vm_readv from the sender's pid and
  answers :data:`CMA_OK`, or :data:`CMA_OFF` (logged at INFO) when the kernel refuses or
  the value differs (a pid of another namespace, say). Until the answer every step goes
  through the slots, and afterwards whenever a step is small or cannot be sent from where
  its data lies.
- descriptors: a posted length with :data:`DESC_FLAG` (the ring's
  :data:`~pyxccl.transport.ring.MARK`) set marks a slot that holds a descriptor instead of
  the data: ``nbytes`` (the logical length), ``aux`` (a word for the caller) and regions
  (logical offset, address in the sender's memory, length); the receiver copies them
  from the sender's memory (:mod:`.cma`).
- destination offers (the other way round): a receiver waiting for a slot may publish
  where that slot's bytes should land in its memory (the slot's sequence number + 1,
  then regions like a descriptor's); a sender whose next slot is that one may write part
  of its data there itself (process_vm_writev) while the receiver reads the rest, then
  publishes ``put_done`` (or ``put_fail``) with the same number.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Any

import numpy as np

from ... import log
from ...errors import TransportError
from ..base import Capability, overlap
from ..doorbell import Doorbell
from ..ring import EXTRA_OFFSET, HEADER_BYTES, MARK, MASK, RingRecvConnector, RingSendConnector, SlotRing
from . import cma

_PUT_OFFSET = EXTRA_OFFSET  # a receiver's destination offer: seq, done, fail, n, regions
_CMA_OFFSET = HEADER_BYTES - 128  # the single-copy handshake's cache line
#: regions a destination offer holds
PUT_MAX_REGIONS = 8
#: a posted length with this bit set: the slot holds a descriptor, not data
DESC_FLAG = MARK
_DESC_HEAD = struct.Struct("<QQQ")  # nbytes, aux, number of regions
_DESC_REGION = struct.Struct("<QQQ")  # logical offset, address, length
#: probe states a receiver publishes (``cma_state``)
CMA_UNKNOWN, CMA_OK, CMA_OFF = 0, 1, 2
assert _PUT_OFFSET + 16 + PUT_MAX_REGIONS * _DESC_REGION.size <= _CMA_OFFSET


class ShmRing(SlotRing):
    """A slot ring with views on shm's transport lines of the header (see the module docstring)."""

    def __init__(self, mem: Any, slot_bytes: int, nslots: int):
        super().__init__(mem, slot_bytes, nslots)
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


class ShmSendConnector(RingSendConnector):
    """A ring sender that offers descriptors (single copy) when PYXCCL_CMA allows (``min_bytes`` > 0),
    and writes into the receiver where it offers its destination (``pid`` given, until refused)."""

    ring: ShmRing

    def __init__(self, ring: ShmRing, peer: int, channel: int, peer_doorbell: Doorbell, min_bytes: int,
                 pid: int = 0, rank: int = -1):
        super().__init__(ring, peer, channel, peer_doorbell)
        self._pid, self._rank = pid, rank
        self._remote_min: int | None = 0  # None: the receiver has not answered the offer yet
        self._offered_min = 0
        self._desc_mark: int | None = None  # head after the last descriptor posted
        self._put_ok = bool(pid)  # destination offers may be used (until the kernel refuses a write)
        self.writes = 0  # writes into the receiver's memory (tests look at it)
        token = int.from_bytes(os.urandom(8), "little") | 1
        self._probe = ctypes.c_uint64(token)  # lives as long as the connector: the receiver reads it once
        self._offer(ctypes.addressof(self._probe) if min_bytes > 0 else 0, token, min_bytes)

    def _offer(self, probe_addr: int, token: int, min_bytes: int) -> None:
        """Offer descriptors: the receiver checks it can read ``token`` at ``probe_addr`` (this process)."""
        ring = self.ring
        if probe_addr and min_bytes > 0 and ring.slot_bytes >= 4096:
            ring.cma_token.value = token
            ring.cma_min.value = min_bytes
            ring.cma_addr.value = probe_addr
            self._offered_min, self._remote_min = min_bytes, None
        ring.cma_attached.value = 1

    @property
    def capabilities(self) -> Capability:
        caps = Capability.SLOTS
        if self.remote_min_bytes > 0:
            caps |= Capability.READ_PEER
        if self._put_ok:
            caps |= Capability.WRITE_PEER
        return caps

    @property
    def remote_min_bytes(self) -> int:  # type: ignore[override]
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
        self._head = (self._head + 1) & MASK
        self._desc_mark = self._head
        ring.head.value = self._head
        self.bell.ring()

    def remote_pending(self) -> bool:
        mark = self._desc_mark
        if mark is None:
            return False
        if ((self.ring.tail.value - mark) & MASK) < 0x80000000:  # tail reached the mark
            self._desc_mark = None
            return False
        return True

    def destination(self) -> list[tuple[int, int, int]] | None:
        """The receiver's answer for the next slot: where its bytes go, (logical offset, address, length)
        regions in the receiver's memory; [] when it declined or writes are refused here; None
        while it has not answered."""
        ring = self.ring
        if ring.put_seq.value != (self._head + 1) & MASK:
            return None
        if not self._put_ok:
            return []
        n = min(ring.put_n.value, PUT_MAX_REGIONS)
        return [_DESC_REGION.unpack_from(ring.mem, _PUT_OFFSET + 16 + i * _DESC_REGION.size) for i in range(n)]

    def write_remote(self, pieces: list[tuple[int, int, int]]) -> bool:
        if not self._put_ok:
            return False
        try:
            cma.write(self._pid, pieces)
        except cma.CMAError as exc:
            if exc.errno in (errno.EPERM, errno.ESRCH, errno.ENOSYS, errno.EACCES):
                self._put_ok = False
                log.info("shm: writing into rank %d (pid %d) refused, it reads everything itself: %s",
                         self.peer, self._pid, exc, rank=self._rank)
                return False
            raise TransportError(f"shm: writing into rank {self.peer}'s buffer (pid {self._pid}, channel "
                                 f"{self.channel}) failed: {exc}") from exc
        self.writes += 1
        return True

    def put_finished(self, seq: int, ok: bool) -> None:
        """Tell the receiver the bytes promised for slot ``seq`` (a head value) are written (or never will be)."""
        (self.ring.put_done if ok else self.ring.put_fail).value = (seq + 1) & MASK
        self.bell.ring()


class ShmRecvConnector(RingRecvConnector):
    """A ring receiver that reads descriptors from the sender's memory with process_vm_readv
    (``enabled``: PYXCCL_CMA allows it here) and offers its destination to the sender."""

    ring: ShmRing

    def __init__(self, ring: ShmRing, peer: int, channel: int, pid: int, rank: int, enabled: bool):
        super().__init__(ring, peer, channel)
        self._pid, self._rank = pid, rank
        self.remote_read = enabled
        self._probed = not enabled  # the sender's offer is answered at the first release
        self._remote_min = 0
        self._desc: tuple[int, int, int, list[tuple[int, int, int]]] | None = None  # (tail, nbytes, aux, regions)
        self.reads = 0  # descriptors read (tests and tuning look at it)
        if not enabled:
            ring.cma_state.value = CMA_OFF

    # the hot path: the ring's, with descriptors and the probe (whole bodies, not a call more)
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
        self._tail = (self._tail + 1) & MASK
        self.ring.tail.value = self._tail
        if self.bell is not None:
            self.bell.ring()

    @property
    def capabilities(self) -> Capability:
        if self.remote_read and self.remote_min_bytes > 0:  # it reads descriptors, and offers where it does
            return Capability.SLOTS | Capability.READ_PEER | Capability.WRITE_PEER
        return Capability.SLOTS

    @property
    def remote_min_bytes(self) -> int:  # type: ignore[override]
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

    def read_remote(self, targets: list[tuple[int, int, int]]) -> None:
        pieces = overlap(targets, self._descriptor()[3])
        if pieces:
            try:
                cma.read(self._pid, pieces)
            except OSError as exc:
                raise TransportError(f"shm: reading rank {self.peer}'s buffer (pid {self._pid}, channel "
                                     f"{self.channel}) failed: {exc}") from exc
            self.reads += 1

    def offer_destination(self, regions: list[tuple[int, int, int]]) -> bool:
        """Offer (logical offset, address, length) regions of this process as the destination of
        the next slot's bytes (see the module docstring), or decline (``[]``, also when they do
        not fit the offer: False); a sender waiting for the answer is woken."""
        seq = (self._tail + 1) & MASK
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
        want = (seq + 1) & MASK
        if self.ring.put_done.value == want:
            return True
        if self.ring.put_fail.value == want:
            return False
        return None

    def _descriptor(self) -> tuple[int, int, int, list[tuple[int, int, int]]]:
        d = self._desc
        if d is None or d[0] != self._tail:
            slot = self.ring.slots[self._tail % self._nslots]
            nbytes, aux, k = _DESC_HEAD.unpack_from(slot, 0)
            regions = [_DESC_REGION.unpack_from(slot, _DESC_HEAD.size + j * _DESC_REGION.size) for j in range(k)]
            d = self._desc = (self._tail, nbytes, aux, regions)
        return d

    def _answer_offer(self) -> None:
        """Publish CMA_OK or CMA_OFF in the ring for the sender's offer (after reading its probe word)."""
        ring = self.ring
        if not ring.cma_attached.value:  # cannot happen once a slot was posted; ask again next time
            return
        self._probed = True
        addr = ring.cma_addr.value
        if not addr:
            ring.cma_state.value = CMA_OFF
            return
        word = ctypes.c_uint64(0)
        why = ""
        try:
            cma.read(self._pid, [(ctypes.addressof(word), addr, 8)])
            if word.value != ring.cma_token.value:
                why = "the probe read another process's memory (pid namespaces differ?)"
        except OSError as exc:
            why = str(exc)
        if why:
            ring.cma_state.value = CMA_OFF
            log.info("shm: single copy from rank %d (pid %d) unavailable, copying through slots: %s",
                     self.peer, self._pid, why, rank=self._rank)
        else:
            ring.cma_state.value = CMA_OK
