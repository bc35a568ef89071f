"""shm: ranks on one host; slot rings in shared-memory files under /dev/shm.

The receiver creates the ring file and sends its path; the sender maps it and
unlinks it at once (both mappings stay valid), so a crash afterwards leaves nothing
behind. Each side rings the other's doorbell (a small shared file of the peer's
communicator, named in its PeerInfo).

Every file pyxccl puts in /dev/shm is named ``pyxccl-...-p<pid namespace>.<pid>`` after
the process that created it: :func:`sweep_stale` (run at every communicator's start and
when a same-host peer is lost) removes the files of processes that no longer exist, so a
crash of any rank leaves nothing behind for long.

Single copy (``PYXCCL_CMA``, default on): the sender offers descriptors (see
:mod:`..base`) by publishing in the ring's header the address of a probe word in its
own memory and the random value it holds; at its first release the receiver reads
that word with process_vm_readv from the sender's pid (PeerInfo.pid) and answers
CMA_OK, or CMA_OFF (logged at INFO) when the kernel refuses or the value differs (a
pid of another namespace, say). Until the answer every step goes through the slots,
and afterwards whenever a step is small or cannot be sent from where its data lies.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import time

from ... import config as _config
from ... import log
from ...errors import TransportError
from . import cma
from ..base import RecvConnector, SendConnector, Transport
from ..doorbell import PROGRESS_WRITER, Doorbell, attach_shared
from ..slots import CMA_OFF, CMA_OK, RingRecvConnector, RingSendConnector, SlotRing, map_ring, ring_bytes

from .files import SHM_DIR, owner_suffix, pid_alive, pid_namespace, sweep_stale  # noqa: F401 (re-exported)


class ShmSendConnector(RingSendConnector):
    """A ring sender that offers descriptors (single copy) when PYXCCL_CMA allows."""

    def __init__(self, ring: SlotRing, peer: int, channel: int, peer_doorbell: Doorbell, min_bytes: int,
                 pid: int = 0, rank: int = -1):
        super().__init__(ring, peer, channel, peer_doorbell)
        self._pid, self._rank = pid, rank
        self._put_ok = bool(pid)
        self.writes = 0  # writes into the receiver's memory (tests look at it)
        token = int.from_bytes(os.urandom(8), "little") | 1
        self._probe = ctypes.c_uint64(token)  # lives as long as the connector: the receiver reads it once
        self.offer_remote(ctypes.addressof(self._probe) if min_bytes > 0 else 0, token, min_bytes)

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


class ShmRecvConnector(RingRecvConnector):
    """A ring receiver that reads descriptors from the sender's memory with process_vm_readv."""

    def __init__(self, ring: SlotRing, peer: int, channel: int, pid: int, rank: int, enabled: bool):
        super().__init__(ring, peer, channel)
        self._pid, self._rank = pid, rank
        self.remote_read = enabled
        self._probed = not enabled
        self.reads = 0  # descriptors read (tests and tuning look at it)
        if not enabled:
            ring.cma_state.value = CMA_OFF

    def _answer_offer(self) -> None:
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

    def _read(self, pieces: list[tuple[int, int, int]]) -> None:
        try:
            cma.read(self._pid, pieces)
        except OSError as exc:
            raise TransportError(f"shm: reading rank {self.peer}'s buffer (pid {self._pid}, channel "
                                 f"{self.channel}) failed: {exc}") from exc
        self.reads += 1


class ShmTransport(Transport):
    """Slot rings in shared memory between processes of one host."""

    name = "shm"

    def __init__(self, ctx):
        super().__init__(ctx)
        self._bells: dict[int, Doorbell] = {}
        self._created: list[str] = []
        cfg = ctx.config if ctx.config is not None else _config.get()
        self._cma_min = cfg.cma_min_bytes if cfg.cma != "off" and cma.available() else 0

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
        path = os.path.join(SHM_DIR, f"pyxccl-{ctx.comm_tag}-{peer}to{ctx.rank}-c{channel}{owner_suffix()}")
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
            mem = map_ring(fd, size)
        finally:
            os.close(fd)
        os.unlink(path)
        return SlotRing(mem, ctx.slot_bytes, ctx.nslots)

    def setup_recv(self, peer: int, channel: int) -> tuple[RecvConnector, bytes]:
        ring, info = self._allocate(peer, channel)
        conn = ShmRecvConnector(ring, peer, channel, self.ctx.peers[peer].pid, self.ctx.rank, self._cma_min > 0)
        conn.bell = self.peer_doorbell(peer)
        return conn, info

    def connect_send(self, peer: int, channel: int, info: bytes) -> SendConnector:
        return ShmSendConnector(self._attach(info), peer, channel, self.peer_doorbell(peer), self._cma_min,
                                self.ctx.peers[peer].pid if self._cma_min > 0 else 0, self.ctx.rank)

    def close(self) -> None:
        for path in self._created:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._created.clear()
        self._bells.clear()
