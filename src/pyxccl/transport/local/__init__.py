"""local: ranks as threads of one process (tests, simulator); rings in process memory.

The receiver registers its ring under a key in a process-wide table and sends the
key; the sender takes the ring out of the table. Doorbells are the same as shm's.
"""

from __future__ import annotations

import threading

from ..base import RecvConnector, SendConnector
from ..shm import ShmTransport
from ..slots import RingRecvConnector, RingSendConnector, SlotRing
from ...errors import TransportError

_rings: dict[bytes, SlotRing] = {}
_lock = threading.Lock()


class LocalTransport(ShmTransport):
    """Slot rings in the memory of one process."""

    name = "local"

    def setup_recv(self, peer: int, channel: int) -> tuple[RecvConnector, bytes]:
        ctx = self.ctx
        key = f"{ctx.comm_tag}/{peer}->{ctx.rank}/{channel}".encode()
        ring = SlotRing.allocate(ctx.slot_bytes, ctx.nslots)
        with _lock:
            _rings[key] = ring
        conn = RingRecvConnector(ring, peer, channel)
        conn.bell = self.peer_doorbell(peer)
        return conn, key

    def connect_send(self, peer: int, channel: int, info: bytes) -> SendConnector:
        with _lock:
            ring = _rings.pop(info, None)
        if ring is None:
            raise TransportError(f"local: rank {peer} is not in this process (ring {info!r} unknown)")
        return RingSendConnector(ring, peer, channel, self.peer_doorbell(peer))

    def close(self) -> None:
        self._bells.clear()
