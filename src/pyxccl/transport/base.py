"""The transport contracts: connectors that move slots of bytes between two ranks.

A connector pair moves slots from one rank to another in order, with at most
``nslots`` in flight (NCCL's STEPS). The executor never blocks inside a connector:
it asks ``ready()``, and only then fills or consumes a slot, so one thread can drive
many connectors. Anything that may make a connector ready rings the owning
executor's :class:`~pyxccl.transport.doorbell.Doorbell`.

Sender:   ready() -> buffer() (fill it: copy or fused reduce) -> post(nbytes)
Receiver: ready() -> buffer() (consume it: copy or fused reduce) -> release()

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
