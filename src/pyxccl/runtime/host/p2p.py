"""Point-to-point runners: send/recv ops towards one peer, sliced into that connector's slots.

The executor's :func:`~pyxccl.runtime.host.executor.drive` runs them like thread-block runners; the
communicator builds one per (peer, direction) of a send/recv or a group of them.
"""

from __future__ import annotations

import struct
from typing import Iterable

import numpy as np

from ...errors import MismatchError
from ...transport.base import RecvConnector, SendConnector


class P2PRunner:
    """Point-to-point ops towards one peer in one direction, in order, sliced into slots.

    The first slot of every op starts with an 8-byte header holding the op's total byte
    count, so a receive whose size differs from the matching send fails with
    MismatchError on the receiving rank instead of hanging or truncating silently.

    Single copy: where the connector takes descriptors, the bytes of an op before its
    last ``nslots`` slots' worth go by descriptors of up to :attr:`DESC_MAX` bytes (the
    first one carries the total in its ``aux`` word) and the receiver reads them from
    the sender's buffer; the tail still goes through the slots, so a send completes
    exactly when it would without descriptors (they were all released before the last
    slot could be posted).
    """

    HEADER = struct.Struct("<Q")
    DESC_MAX = 4 << 20

    def __init__(self, conn: SendConnector | RecvConnector, sending: bool, arrays: Iterable[np.ndarray],
                 slot_bytes: int, rank: int, label: str = "p2p"):
        self.conn, self.sending, self.slot_bytes, self.rank, self.label = conn, sending, slot_bytes, rank, label
        self.ops = [a.reshape(-1).view(np.uint8) for a in arrays]
        self.i = 0  # op index
        self.off = 0  # payload bytes done in the current op
        self.finished = not self.ops
        self._remote = False  # a descriptor was posted
        self._rread = not sending and conn.remote_read

    def describe(self) -> str:
        if not self.finished and self.i == len(self.ops):
            return f"{self.label}: waits for rank {self.conn.peer} to read the sent data (single copy)"
        what = "a free slot towards" if self.sending else "data from"
        return (f"{self.label}: {'send' if self.sending else 'recv'} #{self.i} of {len(self.ops)}, "
                f"{self.off}/{self.ops[self.i].size if not self.finished else 0} bytes, waits for {what} rank {self.conn.peer}")

    def advance(self) -> bool:
        progressed = False
        hsize = self.HEADER.size
        nops = len(self.ops)
        while not self.finished and self.i < nops and self.conn.ready():
            data = self.ops[self.i]
            head = hsize if self.off == 0 else 0
            n = min(self.slot_bytes - head, data.size - self.off)
            if self.sending and (sent := self._send_remote(data, head)):
                n = sent
            elif not self.sending and self._rread and (desc := self.conn.remote()) is not None:  # type: ignore[union-attr]
                n = self._recv_remote(data, head, desc)
            elif self.sending:
                slot = self.conn.buffer()
                if head:
                    self.HEADER.pack_into(slot, 0, data.size)
                slot[head:head + n] = data[self.off:self.off + n]
                self.conn.post(head + n)  # type: ignore[union-attr]
            else:
                raw = self.conn.buffer()
                if head:
                    (total,) = self.HEADER.unpack_from(raw, 0) if raw.size >= hsize else (-1,)
                    if total != data.size:
                        raise MismatchError(
                            f"{self.label}: rank {self.conn.peer} sends {total} bytes but rank {self.rank}'s recv "
                            f"#{self.i} from it expects {data.size}; the sizes of a send and its recv must match")
                if raw.size != head + n:  # the peer's slots disagree with the size it announced
                    raise MismatchError(
                        f"{self.label}: rank {self.conn.peer} sent a slot of {raw.size} bytes where rank "
                        f"{self.rank}'s recv #{self.i} expects {head + n} (byte {self.off} of {data.size})")
                data[self.off:self.off + n] = raw[head:head + n]
                self.conn.release()  # type: ignore[union-attr]
            progressed = True
            self.off += n
            if self.off >= data.size:  # a 0-byte op still moves its header
                self.i += 1
                self.off = 0
                if self.i == nops:
                    self.finished = not self._remote
        if not self.finished and self.i == nops and not self.conn.remote_pending():  # type: ignore[union-attr]
            self.finished = progressed = True
        return progressed

    def _send_remote(self, data: np.ndarray, head: int) -> int:
        """Post the next part of ``data`` as a descriptor when it may; its bytes (0: send a plain slot)."""
        conn = self.conn
        rmin = conn.remote_min_bytes
        if not rmin:
            return 0
        n = data.size - self.off - conn.nslots * self.slot_bytes  # the tail goes through the slots
        if n < rmin:
            return 0
        n = min(n, max(self.DESC_MAX, self.slot_bytes))
        addr = data.ctypes.data + self.off
        conn.post_remote(n, [(0, addr, n)], data.size if head else 0)  # type: ignore[union-attr]
        self._remote = True
        return n

    def _recv_remote(self, data: np.ndarray, head: int, desc: tuple[int, int]) -> int:
        """Read a descriptor into ``data``; the bytes it held."""
        n, total = desc
        if head and total != data.size:
            raise MismatchError(
                f"{self.label}: rank {self.conn.peer} sends {total} bytes but rank {self.rank}'s recv "
                f"#{self.i} from it expects {data.size}; the sizes of a send and its recv must match")
        if n > data.size - self.off:
            raise MismatchError(
                f"{self.label}: rank {self.conn.peer} sent {n} bytes where rank {self.rank}'s recv #{self.i} "
                f"has {data.size - self.off} left (byte {self.off} of {data.size})")
        self.conn.read_remote([(0, data.ctypes.data + self.off, n)])  # type: ignore[union-attr]
        self.conn.release()  # type: ignore[union-attr]
        return n
