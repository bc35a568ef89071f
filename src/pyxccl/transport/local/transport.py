"""The local transport: ranks as threads of one process (tests, simulator); rings in process memory.

The receiver registers its ring under a key in a process-wide table and sends the
key; the sender takes the ring out of the table. Each side rings the other's doorbell,
as shm's do.
"""

from __future__ import annotations

import threading

from ...errors import TransportError
from ..base import RecvConnector, SendConnector, Transport, TransportContext
from ..doorbell import PeerDoorbells
from ..ring import SlotRing
from .connectors import LocalRecvConnector, LocalSendConnector

_rings: dict[bytes, SlotRing] = {}
_lock = threading.Lock()


class LocalTransport(Transport):
    """Slot rings in the memory of one process."""

    name = "local"

    def __init__(self, ctx: TransportContext):
        super().__init__(ctx)
        self._bells = PeerDoorbells([p.doorbell for p in ctx.peers], ctx.rank, self.name)

    def setup_recv(self, peer: int, channel: int) -> tuple[RecvConnector, bytes]:
        ctx = self.ctx
        key = f"{ctx.comm_tag}/{peer}->{ctx.rank}/{channel}".encode()
        ring = SlotRing.allocate(ctx.slot_bytes, ctx.nslots)
        with _lock:
            _rings[key] = ring
        conn = LocalRecvConnector(ring, peer, channel)
        conn.bell = self._bells.get(peer)
        return conn, key

    def connect_send(self, peer: int, channel: int, info: bytes) -> SendConnector:
        with _lock:
            ring = _rings.pop(info, None)
        if ring is None:
            raise TransportError(f"local: rank {peer} is not in this process (ring {info!r} unknown)")
        return LocalSendConnector(ring, peer, channel, self._bells.get(peer))

    def close(self) -> None:
        self._bells.clear()
