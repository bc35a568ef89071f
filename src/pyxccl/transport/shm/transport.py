"""The shm transport: ranks on one host, slot rings in shared-memory files.

The receiver creates the ring file (:func:`.files.ring_path`) and sends its path; the sender
maps it and unlinks it at once (both mappings stay valid), so a crash afterwards leaves
nothing behind. Each side rings the other's doorbell (a small shared file of the peer's
communicator, named in its PeerInfo). Single copy: :mod:`.connectors`.
"""

from __future__ import annotations

import os

from ... import config as _config
from ...errors import TransportError
from ..base import RecvConnector, SendConnector, Transport, TransportContext
from ..doorbell import PeerDoorbells
from ..ring import map_ring, ring_bytes
from . import cma, files
from .connectors import ShmRecvConnector, ShmRing, ShmSendConnector


class ShmTransport(Transport):
    """Slot rings in shared memory between processes of one host."""

    name = "shm"

    def __init__(self, ctx: TransportContext):
        super().__init__(ctx)
        self._bells = PeerDoorbells([p.doorbell for p in ctx.peers], ctx.rank, self.name)
        self._created: list[str] = []
        cfg = ctx.config if ctx.config is not None else _config.get()
        self._cma_min = cfg.cma_min_bytes if cfg.cma != "off" and cma.available() else 0

    def _allocate(self, peer: int, channel: int) -> tuple[ShmRing, bytes]:
        ctx = self.ctx
        path = files.ring_path(ctx.comm_tag, peer, ctx.rank, channel)
        size = ring_bytes(ctx.slot_bytes, ctx.nslots)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            os.unlink(path)  # left over by a crashed run of the same communicator id
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)  # the memory now: a full /dev/shm fails here, not mid-call
            except OSError as exc:
                os.unlink(path)
                raise TransportError(f"shm: cannot allocate {size} bytes for the ring {path} (is /dev/shm full? "
                                     f"PYXCCL_SLOT_BYTES / PYXCCL_NSLOTS make rings smaller): {exc}") from exc
            mem = map_ring(fd, size)
        finally:
            os.close(fd)
        self._created.append(path)
        return ShmRing(mem, ctx.slot_bytes, ctx.nslots), path.encode()

    def _attach(self, info: bytes) -> ShmRing:
        path = info.decode()
        ctx = self.ctx
        size = ring_bytes(ctx.slot_bytes, ctx.nslots)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise TransportError(f"shm: cannot open the ring {path} a peer created: {exc}") from exc
        try:
            mem = map_ring(fd, size)
        finally:
            os.close(fd)
        os.unlink(path)
        return ShmRing(mem, ctx.slot_bytes, ctx.nslots)

    def setup_recv(self, peer: int, channel: int) -> tuple[RecvConnector, bytes]:
        ring, info = self._allocate(peer, channel)
        conn = ShmRecvConnector(ring, peer, channel, self.ctx.peers[peer].pid, self.ctx.rank, self._cma_min > 0)
        conn.bell = self._bells.get(peer)
        return conn, info

    def connect_send(self, peer: int, channel: int, info: bytes) -> SendConnector:
        return ShmSendConnector(self._attach(info), peer, channel, self._bells.get(peer), self._cma_min,
                                self.ctx.peers[peer].pid if self._cma_min > 0 else 0, self.ctx.rank)

    def close(self) -> None:
        for path in self._created:
            files.remove(path)
        self._created.clear()
        self._bells.clear()
