"""Registered user memory (NCCL's ``ncclCommWindowRegister``): buffers the ranks of a host map
from each other once, so a call on them reads the peers' bytes where they are.

Every rank of a communicator registers its buffer in the same order (a collective: see
:meth:`pyxccl.Communicator.register`). Registering exports the allocation holding the buffer:

- memory of :func:`pyxccl.cuda.empty` (VMM, made shareable) as its POSIX file descriptor,
  offered on this rank's :class:`~.fds.FdServer` (the peers fetch it over the Unix socket);
- memory of ``cuMemAlloc`` (torch's and CuPy's caching allocators) as a legacy IPC handle.

The descriptors go to the peers of the host (the caller swaps them); each peer imports and
maps the allocation once and keeps, per window, where that rank's buffer is in its own address
space. A call then names its buffers as (window, offset): no handle moves per call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ...errors import InvalidArgument
from . import fds


@dataclass
class Window:
    """One registration: this rank's buffer and the peers' buffers as mapped here."""

    index: int
    address: int
    nbytes: int
    owner: Any = None
    """the object registered (kept alive while registered)"""
    peers: dict[int, tuple[int, int]] = field(default_factory=dict)
    """peer rank -> (address of its buffer in this process, its bytes)"""
    imported: list[Any] = field(default_factory=list)
    """blocks mapped for this window (unmapped at deregistration)"""


class Windows:
    """The registrations of one communicator on ``device`` (see the module docstring)."""

    def __init__(self, device: Any, label: str):
        self.device, self.label = device, label
        self._server: "fds.FdServer | None" = None
        self.windows: dict[int, Window] = {}
        self._next = 0
        self._tokens: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def export(self, address: int, nbytes: int, what: str) -> bytes:
        """The descriptor of this rank's buffer for the peers (InvalidArgument when its memory cannot
        be shared); the window it will be is the next index."""
        from ...cuda.memory import find
        hit = find(self.device.name, address)
        index = self._next
        desc: dict[str, Any] = {"pid": os.getpid(), "nbytes": nbytes}
        if hit is not None:
            block, offset = hit
            if offset + nbytes > block.nbytes:
                raise InvalidArgument(f"{what}: the buffer runs past the end of its pyxccl.cuda.empty allocation")
            if self._server is None:
                self._server = fds.FdServer(self.label)
            token = self._server.offer(block.fd)
            self._tokens[index] = token
            desc.update(kind="vmm", server=self._server.name, token=token.decode(), block=block.nbytes,
                        offset=offset, address=address)
        else:
            exported = self.device.export_ipc(address)
            if exported is None:
                raise InvalidArgument(f"{what}: this memory cannot be shared with the other ranks (it is neither "
                                      f"from pyxccl.cuda.empty nor from cuMemAlloc, e.g. torch's expandable "
                                      f"segments); allocate it with pyxccl.cuda.empty(...)")
            desc.update(kind="ipc", handle=exported[0].hex(), offset=exported[1], address=address)
        return json.dumps(desc).encode()

    def add(self, address: int, nbytes: int, owner: Any, descs: dict[int, bytes], timeout: float) -> Window:
        """Make the window this rank exported (:meth:`export`) with the peers' descriptors ``descs``,
        mapping their buffers here."""
        win = Window(self._next, address, nbytes, owner)
        self._next += 1
        try:
            for peer, data in descs.items():
                d = json.loads(data)
                if d["pid"] == os.getpid():  # ranks of this process (threads): the same address space
                    base = int(d["address"])
                elif d["kind"] == "vmm":
                    block = self.device.import_shared(fds.fetch(d["server"], d["token"].encode(), timeout),
                                                      int(d["block"]))
                    win.imported.append(block)
                    base = block.address + int(d["offset"])
                else:
                    base = self.device.open_ipc(bytes.fromhex(d["handle"])) + int(d["offset"])
                win.peers[peer] = (base, int(d["nbytes"]))
        except BaseException:
            self._unmap(win)
            raise
        self.windows[win.index] = win
        return win

    def remove(self, win: Window) -> None:
        if self.windows.pop(win.index, None) is not None:
            self._unmap(win)

    def _unmap(self, win: Window) -> None:
        for block in win.imported:
            self.device.free(block)
        win.imported.clear()
        token = self._tokens.pop(win.index, None)
        if token is not None and self._server is not None:
            self._server.withdraw(token)

    def lookup(self, address: int, nbytes: int) -> "tuple[int, int] | None":
        """(window index, offset) of the registered buffer holding ``nbytes`` at ``address``; None if none does."""
        for win in self.windows.values():
            if win.address <= address and address + nbytes <= win.address + win.nbytes:
                return win.index, address - win.address
        return None

    def peer_address(self, index: int, peer: int, offset: int, nbytes: int) -> "int | None":
        """Where ``peer``'s buffer of window ``index`` is, at ``offset``, in this process (None when the
        window or that range is not known here)."""
        win = self.windows.get(index)
        hit = win.peers.get(peer) if win is not None else None
        if hit is None or offset + nbytes > hit[1]:
            return None
        return hit[0] + offset

    def close(self) -> None:
        for win in list(self.windows.values()):
            self.remove(win)
        if self._server is not None:
            self._server.close()
            self._server = None
