"""The socket transport's connectors: the executor's side of the slots.

Each field is written by one thread only (the executor or the progress thread), so
plain attribute and list-element stores (atomic under the GIL) suffice:

- sender: ``posted`` (executor) and ``credited`` (progress) count slots; credits left
  are ``nslots - (posted - credited)``; ``busy[i]`` is set by the executor on post and
  cleared by the progress thread once the staging slot has been written to the kernel
  (a small slot posted while none is busy is written by the executor itself, with one
  non-blocking send, and handed to the progress thread only for what did not fit).
- receiver: ``done_seq[i]`` (progress) is the sequence number of the slot completed in
  local slot ``i``; ``tail`` (executor) counts released slots, so slot ``tail % nslots``
  is ready when ``done_seq[tail % nslots] == tail``; ``owed`` (executor) and ``paid``
  (progress) count credits that had to go through the progress thread.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections import deque
from typing import Any, Protocol, Union

import numpy as np

from ...errors import InvalidArgument
from ...memory.region import Region
from ..base import RecvConnector, SendConnector, slots_region
from .wire import FRAME, chunk_range, frames_per_slot

_CREDIT = b"\x01"
DIRECT_BYTES = 32 * 1024
"""slots up to this size are written by the executor itself when the socket is idle"""


def _slots(slot_bytes: int, nslots: int) -> list[np.ndarray]:
    data = np.zeros(slot_bytes * nslots, dtype=np.uint8)
    return [data[i * slot_bytes:(i + 1) * slot_bytes] for i in range(nslots)]


class ProgressQueue(Protocol):
    """What a connector needs of the transport's progress thread (:class:`.progress.Progress`): its queue."""

    def submit(self, cmd: tuple[Any, ...]) -> None:
        """Queue ``cmd`` for the thread (never blocks)."""


class _Base:
    """What both connector kinds share: identity, failure state, lanes."""

    def __init__(self, peer: int, channel: int, slot_bytes: int, nslots: int, progress: ProgressQueue, who: str):
        self.peer, self.channel = peer, channel
        self.slot_bytes, self.nslots = slot_bytes, nslots
        self.progress = progress
        self.who = who
        """e.g. ``rank 3 on host-b, channel 1, recv`` for messages"""
        self.failure: Exception | None = None
        self.lanes: list["Lane | None"] = []
        self.nlanes = 0
        self.lock = threading.Lock()
        """held around socket sends from the executor and socket closes from the progress thread"""
        self.closed = False

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Drop this connector's connections (the peer sees them close); idempotent."""
        if not self.closed:
            self.closed = True
            self.progress.submit(("close", self))


class SocketSendConnector(_Base, SendConnector):
    """Sending end: staging slots written to the TCP lane(s) by the progress thread."""

    def __init__(self, peer: int, channel: int, slot_bytes: int, nslots: int, progress: ProgressQueue, who: str,
                 nlanes: int):
        super().__init__(peer, channel, slot_bytes, nslots, progress, who)
        self.nlanes = nlanes
        self.staging = _slots(slot_bytes, nslots)
        self.sizes = [0] * nslots
        self.busy = [False] * nslots
        self.pending = [0] * nslots  # frames of a slot not yet written (progress thread only)
        self.posted = 0
        self.credited = 0

    def ready(self) -> bool:
        if self.failure is not None:
            raise self.failure
        posted = self.posted
        return posted - self.credited < self.nslots and not self.busy[posted % self.nslots]

    def buffer(self) -> np.ndarray:
        return self.staging[self.posted % self.nslots]

    def post(self, nbytes: int) -> None:
        self._check()
        if not 0 <= nbytes <= self.slot_bytes:
            raise InvalidArgument(f"socket: post of {nbytes} bytes into a slot of {self.slot_bytes}")
        seq = self.posted
        i = seq % self.nslots
        self.sizes[i] = nbytes
        self.posted = seq + 1  # before any byte leaves: the credit may come back at once
        if nbytes <= DIRECT_BYTES and self.lanes and not any(self.busy):
            sent = self._send_direct(seq, nbytes)
            if sent == FRAME.size + nbytes:
                return
            self.busy[i] = True
            self.progress.submit(("send", self, seq, sent))
            return
        self.busy[i] = True
        self.progress.submit(("send", self, seq, 0))

    def _send_direct(self, seq: int, nbytes: int) -> int:
        """Write a small slot from the executor thread (non-blocking; bytes written, maybe 0).

        Only when no earlier slot is still queued in the progress thread, so that nothing
        else writes this socket; saves the hand-off to the progress thread for small slots.
        """
        lane = self.lanes[0]
        header = FRAME.pack(seq, nbytes)
        with self.lock:
            if lane is None or lane.closed:
                return 0
            try:
                if nbytes:
                    return lane.sock.sendmsg([header, self.staging[seq % self.nslots].data[:nbytes]])
                return lane.sock.send(header)
            except OSError:  # full, or lost (the progress thread sees the loss and fails the connector)
                return 0

    def slot_region(self, index: int | None = None) -> Region:
        return slots_region(self.staging, index)

    def in_flight(self) -> int:
        """Slots posted and not yet credited back by the receiver."""
        return self.posted - self.credited

    # progress thread side

    def frames(self, seq: int, resumed: bool) -> list[tuple[int, memoryview]]:
        """(lane, bytes) of each frame of slot ``seq`` (only lane 0's when ``resumed`` after
        a partial direct send); records how many are pending."""
        i = seq % self.nslots
        nbytes = self.sizes[i]
        view = self.staging[i].data
        out = []
        for j in range(1 if resumed else self.nlanes):
            lo, hi = chunk_range(nbytes, self.nlanes, j)
            if j == 0 or hi > lo:
                out.append((j, view[lo:hi]))
        self.pending[i] = len(out)
        return out

    def frame_sent(self, seq: int) -> bool:
        """Count one frame of slot ``seq`` written; True when the staging slot became free."""
        i = seq % self.nslots
        self.pending[i] -= 1
        if self.pending[i] == 0:
            self.busy[i] = False
            return True
        return False

    def add_credits(self, n: int) -> None:
        """Credits returned by the receiver; ValueError when more than were posted."""
        credited = self.credited + n
        if credited > self.posted:
            raise ValueError(f"{credited} credits for {self.posted} slots posted")
        self.credited = credited


class SocketRecvConnector(_Base, RecvConnector):
    """Receiving end: local slots filled by the progress thread straight from the socket(s)."""

    def __init__(self, peer: int, channel: int, slot_bytes: int, nslots: int, progress: ProgressQueue, who: str):
        super().__init__(peer, channel, slot_bytes, nslots, progress, who)
        self.slots = _slots(slot_bytes, nslots)
        self.views = [s.data for s in self.slots]
        self.seq_of = [-1] * nslots  # progress thread only
        self.remaining = [0] * nslots  # progress thread only
        self.size = [0] * nslots
        self.done_seq = [-1] * nslots
        self.tail = 0
        self.owed = 0
        self.paid = 0
        self.bound = 0  # lanes attached (progress thread only)

    def ready(self) -> bool:
        tail = self.tail
        if self.done_seq[tail % self.nslots] == tail:
            return True
        if self.failure is not None:  # slots completed before the loss are still delivered
            raise self.failure
        return False

    def buffer(self) -> np.ndarray:
        i = self.tail % self.nslots
        return self.slots[i][:self.size[i]]

    def release(self) -> None:
        """Free the slot and send the sender one credit (a 1-byte non-blocking send).

        Never raises for a lost peer: the data was delivered, and the loss shows at the
        next ``ready()`` once no completed slot is left.
        """
        self.tail += 1
        if self.failure is not None:
            return
        lane = self.lanes[0] if self.lanes else None
        if lane is None:
            return
        with self.lock:
            if lane.closed:
                return
            try:
                if self.owed == self.paid and lane.sock.send(_CREDIT) == 1:
                    return
            except BlockingIOError:
                pass
            except OSError:
                return  # the progress thread sees the reset or EOF and fails the connector
        self.owed += 1
        self.progress.submit(("credit", self))

    def slot_region(self, index: int | None = None) -> Region:
        return slots_region(self.slots, index)

    # progress thread side

    def begin_frame(self, lane: int, seq: int, nbytes: int) -> memoryview:
        """Where the frame (``seq``, ``nbytes``) arriving on ``lane`` goes; ValueError when it may not."""
        if nbytes > self.slot_bytes:
            raise ValueError(f"frame of {nbytes} bytes for slots of {self.slot_bytes}")
        tail = self.tail
        if not tail <= seq < tail + self.nslots:
            raise ValueError(f"frame for slot {seq} outside the credit window [{tail}, {tail + self.nslots})")
        i = seq % self.nslots
        if self.seq_of[i] != seq:
            self.seq_of[i] = seq
            self.size[i] = nbytes
            self.remaining[i] = frames_per_slot(nbytes, self.nlanes)
        elif self.size[i] != nbytes:
            raise ValueError(f"lanes disagree on the length of slot {seq}")
        lo, hi = chunk_range(nbytes, self.nlanes, lane)
        if lane and hi <= lo:
            raise ValueError(f"lane {lane} sent an empty chunk of slot {seq}")
        return self.views[i][lo:hi]

    def frame_done(self, seq: int) -> bool:
        """Count one frame of slot ``seq`` received; True when the slot became ready."""
        i = seq % self.nslots
        self.remaining[i] -= 1
        if self.remaining[i] == 0:
            self.done_seq[i] = seq
            return True
        return False


def mismatch(conn: "Conn", slot_bytes: int, nslots: int, nlanes: int) -> str | None:
    """Why a hello's parameters cannot work with ``conn`` (None when they can)."""
    if slot_bytes != conn.slot_bytes or nslots != conn.nslots:
        return (f"{conn.who}: the peer uses slots of {slot_bytes} bytes x {nslots}, this rank "
                f"{conn.slot_bytes} x {conn.nslots}; set PYXCCL_SLOT_BYTES and PYXCCL_NSLOTS alike on every rank")
    if conn.nlanes and nlanes != conn.nlanes:
        return f"{conn.who}: the peer's lanes disagree on their number ({nlanes} vs {conn.nlanes})"
    return None


Conn = Union[SocketSendConnector, SocketRecvConnector]


class Lane:
    """One TCP lane of a connection: one of a connector's TCP connections (slots larger than
    :data:`~.wire.MIN_CHUNK` are split across them), with its read or write position."""

    def __init__(self, sock: socket.socket, conn: Conn, index: int):
        self.sock, self.conn, self.index = sock, conn, index
        self.closed = False
        self.events = selectors.EVENT_READ
        self.queue: deque[list[Any]] = deque()  # sender: [seq, header, body, offset] per frame
        self.hdr = bytearray(FRAME.size)  # receiver: the frame header being read
        self.hdr_view = memoryview(self.hdr)
        self.hdr_got = 0
        self.view: memoryview | None = None  # receiver: the chunk being read, None while in a header
        self.got = 0
        self.seq = 0


def drain(sock: socket.socket) -> None:
    """Read and drop what the peer sent (non-blocking), so that closing sends a FIN, not a reset."""
    try:
        sock.setblocking(False)
        while sock.recv(65536):
            pass
    except OSError:
        pass


__all__ = ["Conn", "Lane", "ProgressQueue", "SocketRecvConnector", "SocketSendConnector", "drain", "mismatch"]
