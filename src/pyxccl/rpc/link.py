"""A link: the two TCP lanes between a client node and a server node, with pRPC's send queues.

Lane 0 carries messages smaller than :data:`BULK_BYTES`, lane 1 the large ones, each
with its own :class:`Sender` and reader thread, so a 64 MiB array never holds a small
request or response behind it.

:class:`Sender` is pRPC's FrontEnd buffer, a thread-safe multi-producer queue:

* lane 0 (inline): a thread that pushes into an idle queue becomes the worker and
  writes until the queue is empty, taking every queued frame in one ``sendall``; a
  thread that finds a worker there only enqueues and returns;
* lane 1 (helper): pushing only enqueues; a helper thread writes the large frames
  with ``sendmsg`` from the callers' memory, so the caller goes on at once.

The first worker of a client link connects both lanes (lazy connect). Any failure
(connect, write, read, EOF) fails the whole link once: both lanes close and the owner
gets the ids of the requests that never left (safe to forward) and of those that may
have reached the peer (``in_flight``).
"""

from __future__ import annotations

import collections
import socket
import threading
from typing import Any, Callable

from .. import log
from ..bootstrap import net
from . import wire

BULK_BYTES = 256 * 1024
"""frames of at least this many bytes go on the bulk lane"""
_BATCH_BYTES = 1 << 20
_BATCH_FRAMES = 256

Item = tuple[int, list[Any], int]  # (request id, frame parts, frame bytes)
OnFrame = Callable[["Link", wire.Frame], None]
"""``on_frame(link, frame)``: a frame read on the link (runs in the lane's reader thread)"""
OnFail = Callable[["Link", list[int], BaseException], None]
"""``on_fail(link, unsent_ids, exc)``: the link failed (runs once)"""


class Sender:
    """The multi-producer send queue of one lane (see the module docstring)."""

    def __init__(self, link: "Link", lane: int) -> None:
        self.link = link
        self.lane = lane
        self.cond = threading.Condition(threading.Lock())
        self.queue: collections.deque[Item] = collections.deque()
        self.busy = False
        self.closed = False
        self.helper: threading.Thread | None = None

    def push(self, item: Item) -> bool:
        """Queue one frame; False when the lane is closed (the caller routes it elsewhere)."""
        with self.cond:
            if self.closed:
                return False
            self.queue.append(item)
            if self.lane == 1:
                if self.helper is None:
                    self.helper = threading.Thread(target=self._helper_loop, daemon=True,
                                                   name=f"{self.link.name}-bulk")
                    self.helper.start()
                self.cond.notify()
                return True
            if self.busy:
                return True
            self.busy = True
        self._drain()
        return True

    def _take(self) -> list[Item]:
        batch: list[Item] = []
        size = 0
        q = self.queue
        while q and len(batch) < _BATCH_FRAMES and size < _BATCH_BYTES:
            item = q.popleft()
            batch.append(item)
            size += item[2]
        return batch

    def _drain(self) -> None:
        while True:
            with self.cond:
                if self.closed or not self.queue:
                    self.busy = False
                    return
                batch = self._take()
            if not self._write(batch):
                return

    def _helper_loop(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                batch = [self.queue.popleft()]
            if not self._write(batch):
                return

    def _write(self, batch: list[Item]) -> bool:
        link = self.link
        try:
            sock = link.prepare(self.lane)
        except BaseException as exc:  # connect failed: nothing of the batch left this node
            link.fail(exc, [rid for rid, _, _ in batch])
            return False
        if link.track:
            for rid, _, _ in batch:
                link.in_flight.add(rid)
        try:
            if self.lane == 0:
                if len(batch) == 1 and len(batch[0][1]) == 1:
                    sock.sendall(batch[0][1][0])
                else:
                    sock.sendall(b"".join(p for _, parts, _ in batch for p in parts))
            else:
                wire.send_parts(sock, batch[0][1])
        except BaseException as exc:
            link.fail(exc, [])
            return False
        return True

    def close(self) -> list[int]:
        """Close the lane; the ids of the frames still queued (never written)."""
        with self.cond:
            self.closed = True
            left = [rid for rid, _, _ in self.queue]
            self.queue.clear()
            self.cond.notify_all()
        return left


class Link:
    """Two lanes to one peer node. Subclasses say how lanes are set up (:meth:`prepare`).

    ``on_frame(link, frame)`` runs in the lane's reader thread for every frame;
    ``on_fail(link, unsent_ids, exc)`` runs once when the link fails.
    """

    def __init__(self, name: str, on_frame: OnFrame, on_fail: OnFail, track: bool) -> None:
        self.name = name
        self.on_frame = on_frame
        self.on_fail = on_fail
        self.track = track
        self.in_flight: set[int] = set()
        """ids of requests written on this link and not answered yet (clients only)"""
        self.socks: list[socket.socket | None] = [None, None]
        self.senders = [Sender(self, 0), Sender(self, 1)]
        self.failed: BaseException | None = None
        self._fail_lock = threading.Lock()
        self.readers: list[threading.Thread] = []

    def send(self, rid: int, parts: list[Any], nbytes: int) -> bool:
        """Queue a frame on the lane for its size; False when the link has failed."""
        lane = 1 if nbytes >= BULK_BYTES and self.bulk_ready() else 0
        return self.senders[lane].push((rid, parts, nbytes))

    def bulk_ready(self) -> bool:
        """Whether large frames may use lane 1."""
        return True

    def prepare(self, lane: int) -> socket.socket:
        """The connected socket of ``lane`` (connecting it if need be); raises on failure."""
        sock = self.socks[lane]
        if sock is None:
            raise ConnectionError(f"{self.name}: lane {lane} is not connected")
        return sock

    def read_loop(self, lane: int, sock: socket.socket, what: str) -> None:
        """Read frames from ``sock`` until EOF or failure (runs in the lane's reader thread)."""
        reader = wire.FrameReader(sock, what)
        try:
            while self.failed is None:
                frame = reader.read()
                if frame is None:
                    raise ConnectionResetError(f"{what} closed the connection")
                self.on_frame(self, frame)
        except BaseException as exc:  # noqa: BLE001 - any reader failure fails the link
            self.fail(exc, [])

    def start_reader(self, lane: int, sock: socket.socket, what: str) -> None:
        """Run :meth:`read_loop` for ``lane`` in a new daemon thread."""
        t = threading.Thread(target=self.read_loop, args=(lane, sock, what), daemon=True,
                             name=f"{self.name}-rx{lane}")
        self.readers.append(t)
        t.start()

    def fail(self, exc: BaseException, unsent: list[int]) -> None:
        """Fail the link (idempotent): close both lanes and report to the owner once."""
        with self._fail_lock:
            if self.failed is not None:
                return
            self.failed = exc
        for s in self.senders:
            unsent = unsent + s.close()
        for sock in self.socks:
            if sock is not None:
                net.close_quietly(sock)
        try:
            self.on_fail(self, unsent, exc)
        except Exception as cb_exc:  # noqa: BLE001 - never let a callback kill a reader
            log.warn("pRPC %s: failure handler raised %r", self.name, cb_exc)

    def close(self) -> None:
        """Close the link as a failure with a ConnectionAbortedError."""
        self.fail(ConnectionAbortedError(f"{self.name} closed"), [])
