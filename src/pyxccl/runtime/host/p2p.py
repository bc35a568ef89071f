"""Point-to-point messages on one connector: the wire format, and matching by tag on arrival.

Between two ranks each direction has one connector (the p2p channel). A :class:`SendLane`
sends its messages in posting order (whatever their tags); a :class:`RecvLane` reads them
and matches each to the earliest posted receive of its tag, so messages of one sender
with one tag match in posting order (MPI's non-overtaking rule) while other tags never
wait for them.

Wire format of a message: its first slot starts with a 16-byte header (payload bytes,
tag), followed by as much payload as fits; the rest follows in plain slots or, where the
connector takes descriptors (same-host single copy), as descriptors of up to
:data:`DESC_MAX` bytes for all but the last ``nslots`` slots' worth, which always go
through the slots (so a send is complete once its last slot is posted, as without
descriptors: by then every descriptor was released).

A message nobody waits for yet is received into a buffer of its own (an
:class:`Arrival`, "unexpected" in MPI's words) while any receive is posted on the lane,
so a receive waiting for one tag never holds up the others; a receive posted later takes
it from there. A receive whose size differs from the message fails with MismatchError
naming both sizes, and the message is skipped (the lane stays usable).

These classes are the host runtime's send/recv runners; the communicator's point-to-point engine
(:mod:`pyxccl.comm.p2p`) posts the operations and drives them on its progress thread.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

import numpy as np

from ...errors import MismatchError, TransportError
from ...memory import host as hostmem

HEADER = struct.Struct("<Qq")  # payload bytes, tag
DESC_MAX = 4 << 20


class P2POp:
    """One posted send or recv (made by :mod:`pyxccl.comm.p2p`)."""

    __slots__ = ("kind", "peer", "tag", "data", "result", "work", "rec", "what", "deadline", "timeout",
                 "started", "done", "error")

    def __init__(self, kind: str, peer: int, tag: int, data: np.ndarray, result: Any, work: Any, rec: Any,
                 what: str):
        self.kind, self.peer, self.tag, self.result, self.work, self.rec = kind, peer, tag, result, work, rec
        self.data = data.reshape(-1).view(np.uint8)  # contiguous (checked by the caller)
        self.what = what
        self.deadline = 0.0
        self.timeout = 0.0
        self.started = False  # a byte of it moved (sends), or a message was bound to it (recvs)
        self.done = False
        self.error: BaseException | None = None


class Arrival:
    """A message that arrived (or is arriving) before a receive of its tag was posted."""

    __slots__ = ("data", "off", "taker")

    def __init__(self, nbytes: int, peer: int = -1):
        try:
            self.data = hostmem.empty(nbytes, np.uint8)
        except (MemoryError, ValueError, OverflowError):
            raise TransportError(f"p2p from rank {peer}: a message of {nbytes} bytes arrived before its receive "
                                 f"and cannot be buffered (corrupt stream, or post the receive first)") from None
        self.off = 0
        self.taker: P2POp | None = None  # a receive posted while the message was still arriving

    @property
    def complete(self) -> bool:
        return self.off >= self.data.size


def deliver(op: P2POp, data: np.ndarray, finished: list[P2POp]) -> None:
    """Complete receive ``op`` with a whole message ``data`` (its size checked)."""
    if data.size != op.data.size:
        op.error = _mismatch(op, data.size)
    else:
        op.data[:] = data
    finished.append(op)


def _mismatch(op: P2POp, sent: int) -> MismatchError:
    return MismatchError(f"{op.what}, tag {op.tag}: rank {op.peer} sent {sent} bytes but this receive expects "
                         f"{op.data.size}; the sizes of a send and its recv must match")


class SendLane:
    """Messages towards one peer, in posting order. ``conn`` is None until the peer's connect info came."""

    def __init__(self, peer: int, slot_bytes: int):
        self.peer, self.slot_bytes = peer, slot_bytes
        self.conn: Any = None
        self.queue: deque[P2POp] = deque()
        self.off = 0  # payload bytes of queue[0] posted
        self.remote = False  # queue[0] posted a descriptor
        self.broken: BaseException | None = None

    def advance(self, finished: list[P2POp]) -> bool:
        """Post what the connector takes now; completed sends go to ``finished``. True if anything moved."""
        conn, queue = self.conn, self.queue
        progressed = False
        while queue:
            op = queue[0]
            data, total = op.data, op.data.size
            if op.started and self.off >= total:  # posted whole, descriptors not all released yet
                if self.remote and conn.remote_pending():
                    return progressed
                queue.popleft()
                finished.append(op)
                self.off, self.remote, progressed = 0, False, True
                continue
            if not conn.ready():
                return progressed
            if not op.started:
                slot = conn.buffer()
                n = min(self.slot_bytes - HEADER.size, total)
                HEADER.pack_into(slot, 0, total, op.tag)
                slot[HEADER.size:HEADER.size + n] = data[:n]
                conn.post(HEADER.size + n)
                op.started = True
            else:
                n = self._post_remote(op)
                if not n:
                    n = min(self.slot_bytes, total - self.off)
                    conn.buffer()[:n] = data[self.off:self.off + n]
                    conn.post(n)
            self.off += n
            progressed = True
        return progressed

    def _post_remote(self, op: P2POp) -> int:
        """Post the next part of ``op`` as a descriptor when it may; its bytes (0: send a plain slot)."""
        conn = self.conn
        rmin = conn.remote_min_bytes
        if not rmin:
            return 0
        n = op.data.size - self.off - conn.nslots * self.slot_bytes  # the tail goes through the slots
        if n < rmin:
            return 0
        n = min(n, max(DESC_MAX, self.slot_bytes))
        conn.post_remote(n, [(0, op.data.ctypes.data + self.off, n)], 0)
        self.remote = True
        return n


class _Inbound:
    """The message a RecvLane is reading: where its bytes go (a receive, an Arrival, or nowhere)."""

    __slots__ = ("nbytes", "off", "op", "arrival")

    def __init__(self, nbytes: int, op: P2POp | None, arrival: Arrival | None):
        self.nbytes, self.off, self.op, self.arrival = nbytes, 0, op, arrival

    def target(self) -> np.ndarray | None:
        if self.op is not None:
            return self.op.data
        return self.arrival.data if self.arrival is not None else None


class RecvLane:
    """Messages from one peer, matched by tag to posted receives."""

    def __init__(self, peer: int, conn: Any):
        self.peer, self.conn = peer, conn
        self.posted: dict[int, deque[P2POp]] = {}
        self.nposted = 0
        self.unexpected: dict[int, deque[Arrival]] = {}
        self.cur: _Inbound | None = None
        self.broken: BaseException | None = None

    def post(self, op: P2POp, finished: list[P2POp]) -> None:
        """Take receive ``op``: from a message already (being) received, else wait for one."""
        box = self.unexpected.get(op.tag)
        if box:
            arrival = box.popleft()
            if not box:
                del self.unexpected[op.tag]
            op.started = True
            if arrival.complete:
                deliver(op, arrival.data, finished)
                return
            cur = self.cur
            if cur is not None and cur.arrival is arrival and arrival.data.size == op.data.size:
                op.data[:arrival.off] = arrival.data[:arrival.off]  # the rest goes straight to op
                cur.op, cur.arrival = op, None
            else:
                arrival.taker = op
            return
        self.posted.setdefault(op.tag, deque()).append(op)
        self.nposted += 1

    def withdraw(self, op: P2POp) -> bool:
        """Forget receive ``op`` (timed out, failed, cancelled); True when no message had matched it yet
        (a message it would have matched goes to the next receive of its tag)."""
        box = self.posted.get(op.tag)
        if box is not None and op in box:
            box.remove(op)
            self.nposted -= 1
            if not box:
                del self.posted[op.tag]
            return True
        cur = self.cur  # an incomplete message is always the one arriving now
        if cur is not None and cur.op is op:  # the rest of its message is skipped
            cur.op = None
        elif cur is not None and cur.arrival is not None and cur.arrival.taker is op:
            cur.arrival.taker = None  # the message is dropped once complete
        return False

    def ops(self) -> list[P2POp]:
        """Every receive still waiting on this lane."""
        out = [op for box in self.posted.values() for op in box]
        if self.cur is not None:
            if self.cur.op is not None:
                out.append(self.cur.op)
            elif self.cur.arrival is not None and self.cur.arrival.taker is not None:
                out.append(self.cur.arrival.taker)
        return out

    def advance(self, finished: list[P2POp]) -> bool:
        """Read what arrived; completed receives go to ``finished``. True if anything moved."""
        conn = self.conn
        progressed = False
        while (self.cur is not None or self.nposted) and conn.ready():
            cur = self.cur
            if cur is None:
                self._header(finished)
            else:
                desc = conn.remote() if conn.remote_read else None
                left = cur.nbytes - cur.off
                n = desc[0] if desc is not None else -1
                if desc is None:
                    raw = conn.buffer()
                    n = raw.size
                if n > left:
                    raise TransportError(f"p2p from rank {self.peer}: a slot of {n} bytes where the message "
                                         f"has {left} left (byte {cur.off} of {cur.nbytes}): the stream is corrupt")
                target = cur.target()
                if target is not None:
                    if desc is not None:
                        conn.read_remote([(0, hostmem.address(target) + cur.off, n)])
                    else:
                        target[cur.off:cur.off + n] = raw
                conn.release()
                cur.off += n
                if cur.arrival is not None:
                    cur.arrival.off = cur.off
                if cur.off >= cur.nbytes:
                    self._complete(cur, finished)
            progressed = True
        return progressed

    def _header(self, finished: list[P2POp]) -> None:
        conn = self.conn
        if conn.remote_read and conn.remote() is not None:
            raise TransportError(f"p2p from rank {self.peer}: a descriptor where a message header was expected: "
                                 f"the stream is corrupt")
        raw = conn.buffer()
        if raw.size < HEADER.size:
            raise TransportError(f"p2p from rank {self.peer}: a slot of {raw.size} bytes where a message header "
                                 f"was expected: the stream is corrupt")
        nbytes, tag = HEADER.unpack_from(raw, 0)
        payload = raw[HEADER.size:]
        if payload.size > nbytes:
            raise TransportError(f"p2p from rank {self.peer}: a message of {nbytes} bytes came with "
                                 f"{payload.size} in its first slot: the stream is corrupt")
        box = self.posted.get(tag)
        op = arrival = None
        if box:
            op = box.popleft()
            self.nposted -= 1
            if not box:
                del self.posted[tag]
            op.started = True
            if op.data.size != nbytes:
                op.error = _mismatch(op, nbytes)
                finished.append(op)
                op = None  # the message is skipped
        else:
            arrival = Arrival(nbytes, self.peer)
            self.unexpected.setdefault(tag, deque()).append(arrival)
        cur = _Inbound(nbytes, op, arrival)
        target = cur.target()
        if target is not None:
            target[:payload.size] = payload
        conn.release()
        cur.off = payload.size
        if arrival is not None:
            arrival.off = cur.off
        if cur.off >= nbytes:
            self._complete(cur, finished)
        else:
            self.cur = cur

    def _complete(self, cur: _Inbound, finished: list[P2POp]) -> None:
        self.cur = None
        if cur.op is not None:
            finished.append(cur.op)
        elif cur.arrival is not None and cur.arrival.taker is not None:
            taker, cur.arrival.taker = cur.arrival.taker, None
            deliver(taker, cur.arrival.data, finished)
