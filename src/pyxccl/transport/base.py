"""The transport contracts: connectors that move slots of bytes between two ranks.

A connector pair moves slots from one rank to another in order, with at most
``nslots`` in flight (NCCL's STEPS). The executor never blocks inside a connector:
it asks ``ready()``, and only then fills or consumes a slot, so one thread can drive
many connectors. Anything that may make a connector ready rings the owning
executor's :class:`~pyxccl.transport.doorbell.Doorbell`.

Sender:   ready() -> buffer() (fill it: copy or fused reduce) -> post(nbytes)
Receiver: ready() -> buffer() (consume it: copy or fused reduce) -> release()

Descriptors (optional; the single-copy path of same-host peers). A sender whose
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
which posting one does not pay. Socket and local connectors keep the defaults (no
descriptors).

A :class:`Transport` builds connectors for one kind of peer: the receiver sets up
its side first and returns connect info (bytes) for the sender, which attaches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .doorbell import Doorbell


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
        """The receiver's answer for the next slot (see :mod:`.slots`): the (logical offset, address,
        length) regions its bytes go to, [] when it declined (or writes are refused), None while
        it has not answered."""
        return None

    def write_remote(self, pieces: list[tuple[int, int, int]]) -> bool:
        """Copy (local address, receiver's address, length) pieces into the receiver's memory; False
        when the kernel refuses this connector's writes (from then on ``destination()`` gives [])."""
        return False

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

    def slot_index(self, nbytes: int) -> int:
        """Which fixed slot ``buffer()`` returns now, when it holds exactly ``nbytes`` plain bytes
        (not a descriptor); else -1 (also when slots are not fixed memory). Valid after ``ready()``."""
        return -1

    def remote(self) -> tuple[int, int] | None:
        """(nbytes, aux) of the posted slot when it is a descriptor, else None; valid after ``ready()``."""
        return None

    def offer_destination(self, regions: list[tuple[int, int, int]]) -> bool:
        """Offer where the next slot's bytes go in this process (see :mod:`.slots`); False: not offered."""
        return False

    def read_remote(self, targets: list[tuple[int, int, int]]) -> None:
        """Copy the descriptor's logical bytes [offset, offset + length) to each (offset, address, length) target.

        ``targets`` ascend in offset; bytes outside the descriptor's regions are left as they are.
        """
        raise NotImplementedError(f"{type(self).__name__} does not read descriptors")

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
