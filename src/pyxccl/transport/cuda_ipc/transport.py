"""The cuda_ipc transport: connections between GPU ranks of one host through shared device memory.

The receiver allocates its block (slots and flags, :mod:`.connectors`) as shareable memory of
its device (VMM ``cuMemCreate`` with a POSIX file descriptor, through the device contract of
:mod:`pyxccl.cuda`), offers the descriptor on its :class:`~.fds.FdServer` and sends the server's
name and a token as connect info over the bootstrap; the sender fetches the descriptor over the
Unix socket (``SCM_RIGHTS``), imports and maps the block. Ranks sharing one GPU and ranks on
different GPUs of a host connect alike. Never NVLink multicast.
"""

from __future__ import annotations

import json

from ...errors import TransportError
from ..base import RecvConnector, SendConnector, Transport, TransportContext
from . import fds
from .connectors import CudaIpcRecvConnector, CudaIpcSendConnector, block_bytes


class CudaIpcTransport(Transport):
    """Device-memory connections to the ranks of this host (``ctx.device``: this rank's GPU)."""

    name = "cuda_ipc"

    def __init__(self, ctx: TransportContext, device, slot_bytes: int, nslots: int):
        super().__init__(ctx)
        self.device, self.slot_bytes, self.nslots = device, slot_bytes, nslots
        self._server: fds.FdServer | None = None
        self._tokens: list[bytes] = []

    def setup_recv(self, peer: int, channel: int) -> tuple[RecvConnector, bytes]:
        if self._server is None:
            self._server = fds.FdServer(f"{self.ctx.comm_tag}-{self.ctx.rank}")
        nbytes = block_bytes(self.slot_bytes, self.nslots)
        block = self.device.alloc_shared(nbytes)
        token = self._server.offer(block.fd)
        self._tokens.append(token)
        conn = CudaIpcRecvConnector(self.device, block, peer, channel, self.slot_bytes, self.nslots)
        info = {"server": self._server.name, "token": token.decode(), "nbytes": block.nbytes,
                "slot_bytes": self.slot_bytes, "nslots": self.nslots, "device": self.device.name}
        return conn, json.dumps(info).encode()

    def connect_send(self, peer: int, channel: int, info: bytes) -> SendConnector:
        d = json.loads(info)
        if (d["slot_bytes"], d["nslots"]) != (self.slot_bytes, self.nslots):
            raise TransportError(f"cuda_ipc: rank {peer} has slots of {d['slot_bytes']} x {d['nslots']}, this rank "
                                 f"{self.slot_bytes} x {self.nslots}; set PYXCCL_CUDA_SLOT_BYTES alike on every rank")
        fd = fds.fetch(d["server"], d["token"].encode(), self.ctx.timeout)
        block = self.device.import_shared(fd, int(d["nbytes"]))
        return CudaIpcSendConnector(self.device, block, peer, channel, self.slot_bytes, self.nslots)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
