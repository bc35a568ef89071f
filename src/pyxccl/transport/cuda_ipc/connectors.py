"""cuda_ipc connectors: slots and flags in the receiver's device memory, both ends mapped.

The receiver owns one shareable block per connection (:class:`Block` layout: the ready word,
the released word, then ``nslots`` slots). The sender maps it (:mod:`.transport`). The
device executor drives them on CUDA streams (``STREAM_ORDERED``), never the host:

- send slot ``k``: wait (on the stream) until released >= k - nslots + 1, fill slot
  ``k % nslots`` in the receiver's memory (copy engines, or a reduce kernel writing there),
  then write ready = k + 1;
- receive slot ``k``: wait until ready >= k + 1, consume the slot, then write released = k + 1.

The counters ``head`` (sent) and ``tail`` (received) live on the host and count one call's slots
from 0; the executor ends each call with a handshake that resets both words (the receiver:
ready := 0, then released := tail + 1; the sender waits for that and sets released := 0), so a
call's values are the same every time (a captured CUDA graph replays). The words are 32 bits,
compared wrap-aware (``cuStreamWaitValue32`` GEQ). Host-polled use (``ready``/``buffer``) is not offered: these connectors have no host
view.

Abandoning waits (a lost peer, ``abort()``): ``release_waits()`` writes, from the host, the word
only the peer writes to the value every wait enqueued so far needs (the counters are advanced
at enqueue time, so that value is ``tail`` for a receiver's ready word and ``head + 1`` for a
sender's released word, the closing handshake's mark). The block stays mapped in this process whatever became of the peer,
so the write is safe after the peer died; the data the released steps move is garbage.
"""

from __future__ import annotations

from ...errors import TransportError
from ...memory.region import Region
from ..base import Capability, RecvConnector, SendConnector

READY, RELEASED, SLOTS = 0, 256, 512
"""byte offsets in a block: the word the sender writes, the word the receiver writes, the slots"""


def block_bytes(slot_bytes: int, nslots: int) -> int:
    return SLOTS + slot_bytes * nslots


class _Ends:
    """What both ends share: where the block is mapped in this process and its geometry."""

    capabilities = Capability.SLOTS | Capability.STREAM_ORDERED

    def __init__(self, device, block, peer: int, channel: int, slot_bytes: int, nslots: int):
        self.device, self.block, self.peer, self.channel = device, block, peer, channel
        self.slot_bytes, self.nslots = slot_bytes, nslots
        base = block.address
        self.ready_word, self.released_word, self.slots_address = base + READY, base + RELEASED, base + SLOTS

    def slot(self, k: int) -> int:
        """The address (in this process) of slot ``k % nslots``."""
        return self.slots_address + (k % self.nslots) * self.slot_bytes

    def slot_region(self, index: int | None = None) -> Region:
        if index is None:
            return Region(self.device.name, self.slots_address, self.slot_bytes * self.nslots)
        return Region(self.device.name, self.slot(index), self.slot_bytes)

    def _host_polled(self, *args, **kwargs):
        raise TransportError("cuda_ipc connectors are stream-ordered: the device executor drives them, not the host")

    def close(self) -> None:
        if self.block is not None:
            self.device.free(self.block)
            self.block = None


class CudaIpcSendConnector(_Ends, SendConnector):
    """The sender's end: ``head`` slots sent so far."""

    def __init__(self, *args):
        super().__init__(*args)
        self.head = 0

    ready = buffer = post = _Ends._host_polled  # type: ignore[assignment]

    def release_waits(self) -> None:
        """Free every slot the receiver would have released, and pass the closing handshake:
        released := head + 1 (see the module docstring)."""
        if self.block is not None:
            self.device.host_write_value(self.released_word, self.head + 1)


class CudaIpcRecvConnector(_Ends, RecvConnector):
    """The receiver's end: ``tail`` slots received so far."""

    def __init__(self, *args):
        super().__init__(*args)
        self.tail = 0

    ready = buffer = release = _Ends._host_polled  # type: ignore[assignment]

    def release_waits(self) -> None:
        """Mark every slot the sender would have filled as ready: ready := tail (see the module docstring)."""
        if self.block is not None:
            self.device.host_write_value(self.ready_word, self.tail)
