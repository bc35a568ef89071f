"""shm: ranks on one host; slot rings in shared-memory files under /dev/shm.

The receiver creates the ring file and sends its path; the sender maps it and
unlinks it at once (both mappings stay valid), so a crash afterwards leaves nothing
behind. Each side rings the other's doorbell (a small shared file of the peer's
communicator, named in its PeerInfo).
"""

from __future__ import annotations

import mmap
import os

from ...errors import TransportError
from ..base import RecvConnector, SendConnector, Transport
from ..doorbell import PROGRESS_WRITER, Doorbell, attach_shared
from ..slots import RingRecvConnector, RingSendConnector, SlotRing, ring_bytes

SHM_DIR = "/dev/shm"


class ShmTransport(Transport):
    """Slot rings in shared memory between processes of one host."""

    name = "shm"

    def __init__(self, ctx):
        super().__init__(ctx)
        self._bells: dict[int, Doorbell] = {}
        self._created: list[str] = []

    def peer_doorbell(self, peer: int) -> Doorbell:
        """A handle on ``peer``'s doorbell (writer id = this rank + 1)."""
        bell = self._bells.get(peer)
        if bell is None:
            path = self.ctx.peers[peer].doorbell
            try:
                bell = attach_shared(path, writer=self.ctx.rank % (PROGRESS_WRITER - 1) + 1)
            except OSError as exc:
                raise TransportError(f"shm: cannot open rank {peer}'s doorbell {path}: {exc}") from exc
            self._bells[peer] = bell
        return bell

    def _allocate(self, peer: int, channel: int) -> tuple[SlotRing, bytes]:
        ctx = self.ctx
        path = os.path.join(SHM_DIR, f"pyxccl-{ctx.comm_tag}-{peer}to{ctx.rank}-c{channel}")
        size = ring_bytes(ctx.slot_bytes, ctx.nslots)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            os.unlink(path)  # left over by a crashed run of the same communicator id
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            mem = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._created.append(path)
        return SlotRing(mem, ctx.slot_bytes, ctx.nslots), path.encode()

    def _attach(self, info: bytes) -> SlotRing:
        path = info.decode()
        ctx = self.ctx
        size = ring_bytes(ctx.slot_bytes, ctx.nslots)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise TransportError(f"shm: cannot open the ring {path} a peer created: {exc}") from exc
        try:
            mem = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        os.unlink(path)
        return SlotRing(mem, ctx.slot_bytes, ctx.nslots)

    def setup_recv(self, peer: int, channel: int) -> tuple[RecvConnector, bytes]:
        ring, info = self._allocate(peer, channel)
        conn = RingRecvConnector(ring, peer, channel)
        conn.bell = self.peer_doorbell(peer)
        return conn, info

    def connect_send(self, peer: int, channel: int, info: bytes) -> SendConnector:
        return RingSendConnector(self._attach(info), peer, channel, self.peer_doorbell(peer))

    def close(self) -> None:
        for path in self._created:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._created.clear()
        self._bells.clear()
