"""The transport contracts: connectors that move slots of bytes between two ranks, what they
can do (:class:`Capability`) and where their slots live (:class:`~pyxccl.memory.region.Region`).

A connector pair moves slots from one rank to another in order, with at most
``nslots`` in flight (NCCL's STEPS). The executor never blocks inside a connector:
it asks ``ready()``, and only then fills or consumes a slot, so one thread can drive
many connectors. Anything that may make a connector ready rings the owning
executor's :class:`~pyxccl.transport.doorbell.Doorbell`.

Sender:   ready() -> buffer() (fill it: copy or fused reduce) -> post(nbytes)
Receiver: ready() -> buffer() (consume it: copy or fused reduce) -> release()

Capabilities (``capabilities``, a :class:`Capability` flag set, as NCCL's transports declare
read and write): every connector has ``SLOTS`` (the buffered path above). ``READ_PEER``: the
receiver may copy a step straight from the sender's memory (descriptors, below); ``WRITE_PEER``:
the sender may write a step straight into the receiver's memory (destination offers, below);
``STREAM_ORDERED``: ready/post/release can be enqueued on a device stream instead of polled
(cuda_ipc's; their ``release_waits()`` lets every wait already enqueued on them pass: a lost
peer or ``abort()``, the host writes the flags the peer would have written). They may grow or
shrink during a connector's life (shm gains ``READ_PEER`` once its probe of the peer
succeeded, loses ``WRITE_PEER`` when the kernel refuses a write); socket and local connectors
have ``SLOTS`` only.

Memory: ``slot_region(i)`` says where slot ``i`` (all slots: ``None``) lives, as a
:class:`~pyxccl.memory.region.Region` (device ``"cpu"`` for host memory).

Descriptors (``READ_PEER``; the single-copy path of same-host peers). A sender whose
``remote_min_bytes`` is > 0 may, instead of filling a slot, post a *descriptor*:
``post_remote(nbytes, regions, aux)`` where ``regions`` are (logical offset, address,
length) of the data in the sender's own memory, ascending in offset; logical bytes no
region covers are padding (undefined on arrival). The receiver then copies the data
straight from the sender's memory into its destination (one copy instead of two):

Sender:   ready() -> post_remote(nbytes, regions, aux) ... until not remote_pending()
Receiver: ready() -> remote() -> (nbytes, aux) -> read_remote(targets) -> release()

The release is the acknowledgement: the regions must stay unchanged until the
receiver released that slot, i.e. until ``remote_pending()`` is False, and a sender
must not report an operation finished before then. Descriptors and plain slots may
alternate on one connection; ``remote()`` is None for a plain slot. ``buffer()`` on a
descriptor slot resolves it into the slot (for consumers that reduce anyway), so a
receiver that ignores descriptors still works as long as they fit a slot.
``remote_min_bytes`` is 0 while the transport cannot (or not yet) deliver descriptors
(not offered, the receiver's probe failed, ``PYXCCL_CMA=0``); it is the size under
which posting one does not pay.

Destination offers (``WRITE_PEER``): a receiver waiting for a slot may offer where that
slot's bytes go in its memory (``offer_destination``); the sender sees it with
``destination()``, writes pieces there (``write_remote``), posts a descriptor of the rest and
says with ``put_finished(seq, ok)`` whether its writes arrived, which the receiver asks with
``put_state(seq)``; ``seq`` is the slot's number (the sender's ``head``, the receiver's ``tail``
when the slot was next).

A :class:`Transport` builds connectors for one kind of peer: the receiver sets up
its side first and returns connect info (bytes) for the sender, which attaches.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..memory.region import HOST, Region

if TYPE_CHECKING:
    from .doorbell import Doorbell


class Capability(enum.Flag):
    """What a connector can do (see the module docstring)."""

    SLOTS = enum.auto()
    """slots in the transport's memory, filled and consumed in order (every connector)"""
    READ_PEER = enum.auto()
    """the receiver copies a step straight from the sender's memory (descriptors)"""
    WRITE_PEER = enum.auto()
    """the sender writes a step straight into the receiver's memory (destination offers)"""
    STREAM_ORDERED = enum.auto()
    """ready/post/release may be enqueued on a device stream instead of polled by the host"""


def slots_region(slots: Sequence[np.ndarray], index: int | None = None) -> Region:
    """The host region of slot ``index`` of ``slots`` (views of one array, in order), or of all
    of them when ``index`` is None."""
    if index is None:
        return Region(HOST, slots[0].ctypes.data, sum(s.nbytes for s in slots))
    slot = slots[index]
    return Region(HOST, slot.ctypes.data, slot.nbytes)


class SendConnector(ABC):
    """The sending end of one (peer, channel) connection."""

    peer: int
    channel: int

    @abstractmethod
    def ready(self) -> bool:
        """True when a free slot can be filled now."""

    @abstractmethod
    def buffer(self) -> np.ndarray:
        """The free slot (uint8, ``slot_bytes`` long); valid after ``ready()`` returned True."""

    @abstractmethod
    def post(self, nbytes: int) -> None:
        """Publish the first ``nbytes`` of the slot to the receiver."""

    #: descriptors: 0 when this connector cannot post them now, else the smallest worthwhile step
    remote_min_bytes: int = 0
    #: slots in flight (the ring's depth); informative
    nslots: int = 1

    @property
    def capabilities(self) -> Capability:
        """What this connector can do now (it may change, see the module docstring)."""
        return Capability.SLOTS

    def slot_region(self, index: int | None = None) -> Region:
        """Where slot ``index`` (0..nslots-1) lives, or all of the slots when None."""
        raise NotImplementedError(f"{type(self).__name__} does not say where its slots live")

    def slot_index(self) -> int:
        """Which fixed slot ``buffer()`` returns now (0..nslots-1), or -1 when slots are not fixed
        memory (then callers must not keep views of a slot between steps)."""
        return -1

    def post_remote(self, nbytes: int, regions: list[tuple[int, int, int]], aux: int = 0) -> None:
        """Publish a descriptor of ``nbytes`` logical bytes at ``regions`` (offset, address, length) in this process."""
        raise NotImplementedError(f"{type(self).__name__} does not post descriptors")

    def remote_pending(self) -> bool:
        """True while a posted descriptor has not been released (its regions are still being read)."""
        return False

    def destination(self) -> list[tuple[int, int, int]] | None:
        """The receiver's answer for the next slot (see :meth:`RecvConnector.offer_destination`):
        the (logical offset, address, length) regions its bytes go to, [] when it declined (or
        writes are refused), None while it has not answered."""
        return None

    def write_remote(self, pieces: list[tuple[int, int, int]]) -> bool:
        """Copy (local address, receiver's address, length) pieces into the receiver's memory; False
        when the kernel refuses this connector's writes (from then on ``destination()`` gives [])."""
        return False

    def put_finished(self, seq: int, ok: bool) -> None:
        """Tell the receiver the bytes promised for slot ``seq`` are written (``ok``) or never will be."""
        raise NotImplementedError(f"{type(self).__name__} does not write into its receiver")

    def release_waits(self) -> None:
        """Let every device wait enqueued on this connector pass now (``STREAM_ORDERED`` connectors;
        the others have none to release)."""

    def close(self) -> None:
        """Release local resources (idempotent)."""


class RecvConnector(ABC):
    """The receiving end of one (peer, channel) connection."""

    peer: int
    channel: int

    @abstractmethod
    def ready(self) -> bool:
        """True when a posted slot is waiting."""

    @abstractmethod
    def buffer(self) -> np.ndarray:
        """The posted slot's bytes (uint8, exactly the posted length); valid after ``ready()``."""

    @abstractmethod
    def release(self) -> None:
        """Hand the slot back to the sender."""

    #: True when this connector may receive descriptors (then ask ``remote()`` before ``buffer()``)
    remote_read: bool = False
    #: 0 while no descriptor can arrive, else the sender's smallest descriptor step (a hint)
    remote_min_bytes: int = 0
    #: slots in flight (the ring's depth); informative
    nslots: int = 1

    @property
    def capabilities(self) -> Capability:
        """What this connector can do now (it may change, see the module docstring)."""
        return Capability.SLOTS

    def slot_region(self, index: int | None = None) -> Region:
        """Where slot ``index`` (0..nslots-1) lives, or all of the slots when None."""
        raise NotImplementedError(f"{type(self).__name__} does not say where its slots live")

    def slot_index(self, nbytes: int) -> int:
        """Which fixed slot ``buffer()`` returns now, when it holds exactly ``nbytes`` plain bytes
        (not a descriptor); else -1 (also when slots are not fixed memory). Valid after ``ready()``."""
        return -1

    def remote(self) -> tuple[int, int] | None:
        """(nbytes, aux) of the posted slot when it is a descriptor, else None; valid after ``ready()``."""
        return None

    def offer_destination(self, regions: list[tuple[int, int, int]]) -> bool:
        """Offer (logical offset, address, length) regions of this process as where the next slot's
        bytes go, or decline with ``[]``; False: not offered (declined, or the transport cannot)."""
        return False

    def read_remote(self, targets: list[tuple[int, int, int]]) -> None:
        """Copy the descriptor's logical bytes [offset, offset + length) to each (offset, address, length) target.

        ``targets`` ascend in offset; bytes outside the descriptor's regions are left as they are.
        """
        raise NotImplementedError(f"{type(self).__name__} does not read descriptors")

    def put_state(self, seq: int) -> bool | None:
        """Whether the sender wrote what it promised for slot ``seq``: True, False (it could not), None (not yet)."""
        return None

    def release_waits(self) -> None:
        """Let every device wait enqueued on this connector pass now (``STREAM_ORDERED`` connectors;
        the others have none to release)."""

    def close(self) -> None:
        """Release local resources (idempotent)."""


@dataclass
class PeerInfo:
    """What every rank tells every other at init (allgathered over the bootstrap)."""

    rank: int
    host: str
    """host identity: same value = same host (shm reachable)"""
    pid: int
    doorbell: str
    """path of this rank's doorbell (shared memory file) for same-host peers"""
    hostname: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TransportContext:
    """What a transport needs from its communicator."""

    rank: int
    nranks: int
    comm_tag: str
    """unique per communicator; names shared-memory files and local registries"""
    peers: list[PeerInfo]
    doorbell: "Doorbell"
    """this rank's doorbell (connectors ring it through their own handles)"""
    slot_bytes: int
    nslots: int
    timeout: float
    address: str = "127.0.0.1"
    """this rank's IP address for listening sockets (the one its bootstrap advertises)"""
    secret: bytes = b""
    """the unique id's secret (for authenticating connections)"""
    config: Any = None


class Transport(ABC):
    """Builds connectors towards peers of one kind (shm, socket, local)."""

    name: str = "?"

    def __init__(self, ctx: TransportContext):
        self.ctx = ctx

    @abstractmethod
    def setup_recv(self, peer: int, channel: int) -> tuple[RecvConnector, bytes]:
        """Create the receiving side; return it and the connect info to send to ``peer``."""

    @abstractmethod
    def connect_send(self, peer: int, channel: int, info: bytes) -> SendConnector:
        """Attach to the receiver described by ``info``."""

    def close(self) -> None:
        """Release every resource of this transport (idempotent)."""


def overlap(a: list[tuple[int, int, int]], b: list[tuple[int, int, int]],
            end: int | None = None) -> list[tuple[int, int, int]]:
    """(address in ``a``, address in ``b``, length) of every logical byte range (below ``end``) that two
    lists of (logical offset, address, length) regions, each ascending in offset, both cover."""
    out = []
    j, nb = 0, len(b)
    for ao, aa, an in a:
        lo_a, hi_a = ao, ao + an if end is None else min(ao + an, end)
        while j < nb and b[j][0] + b[j][2] <= lo_a:
            j += 1
        k = j
        while k < nb and b[k][0] < hi_a:
            bo, ba, bn = b[k]
            lo, hi = max(lo_a, bo), min(hi_a, bo + bn)
            if hi > lo:
                out.append((aa + lo - ao, ba + lo - bo, hi - lo))
            k += 1
    return out
