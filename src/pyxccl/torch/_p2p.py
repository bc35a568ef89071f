"""send / recv / recv from any source for the torch backend, with MPI's matching rules.

pyxccl's point-to-point calls run on a communicator's ordered stream, so a pending
receive would hold up every later send of the same communicator; torch code posts
``irecv`` before ``isend`` freely (``batch_isend_irecv``, ring exchanges). Each
direction between two ranks therefore gets its own 2-rank pyxccl communicator and
worker thread (a *channel*), made lazily on first use: the sender publishes a unique
id in the group's c10d store, the receiver joins when it first wants a message.

Every message is a 16-byte header (byte count, tag) followed by the payload. A
channel's reader receives headers only while some posted receive could take a
message from that peer, and matches each header to the earliest posted receive that
accepts its source and tag (a specific source or any source). A message nobody
waits for (yet) is received into a buffer and kept as *unexpected*; a later receive
takes it from there. A send to this rank itself is kept the same way. This is what
makes ``recv_anysource`` possible on top of pyxccl's per-peer receives.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import pyxccl

from . import _tensors as T
from ._errors import (
    BACKEND,
    PyxcclBackendError,
    PyxcclInvalidArgument,
    PyxcclTimeout,
    wrap_error,
)
from ._work import Work

_HDR = 2  # int64 words: byte count, tag


class _Recv:
    __slots__ = ("posted", "src", "stage", "tag", "work")

    def __init__(self, src: int | None, tag: int, stage: T.Staged, work: Work):
        self.src, self.tag, self.stage, self.work = src, tag, stage, work
        self.posted = time.monotonic()

    def accepts(self, src: int, tag: int) -> bool:
        return (self.src is None or self.src == src) and self.tag == tag


class _Channel:
    """One direction between this rank and ``peer``: a 2-rank communicator (the sender is its rank 0)."""

    def __init__(self, p2p: P2P, peer: int, sending: bool):
        self.p2p, self.peer, self.sending = p2p, peer, sending
        self.comm: Any = None
        self.reading = False  # receive side: a reader task is queued or running
        self._tasks: deque[Callable[[], None]] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def key(self) -> str:
        src, dst = (self.p2p.rank, self.peer) if self.sending else (self.peer, self.p2p.rank)
        return f"pyxccl/p2p/{self.p2p.gen}/{src}-{dst}"

    def submit(self, task: Callable[[], None]) -> None:
        with self._cv:
            if self._closed:
                raise PyxcclBackendError(f"{BACKEND} backend: the process group was shut down")
            self._tasks.append(task)
            if self._thread is None:
                name = f"pyxccl-p2p-{'to' if self.sending else 'from'}{self.peer}-r{self.p2p.rank}"
                self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
                self._thread.start()
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._tasks and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                task = self._tasks.popleft()
            task()

    def connect(self) -> Any:
        """The channel's communicator, made on first use (blocks until the peer joins)."""
        if self.comm is None:
            store, key, timeout = self.p2p.store, self.key, self.p2p.timeout
            if self.sending:
                uid = pyxccl.get_unique_id()
                store.set(key, uid.to_bytes())
                self.comm = pyxccl.Communicator(2, uid, 0, timeout=timeout)
            else:
                deadline = time.monotonic() + timeout
                delay = 0.001
                while not store.check([key]):
                    if self._closed:
                        raise PyxcclBackendError(f"{BACKEND} backend: the process group was shut down")
                    if time.monotonic() > deadline:
                        raise pyxccl.CollectiveTimeout(f"rank {self.peer} did not start sending within {timeout} s")
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                self.comm = pyxccl.Communicator(2, bytes(store.get(key)), 1, timeout=timeout)
        return self.comm

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self.comm is not None:
            self.comm.abort()


class P2P:
    """The point-to-point engine of one process group."""

    def __init__(self, store: Any, rank: int, size: int, timeout: float, gen: int = 0):
        self.store, self.rank, self.size, self.timeout, self.gen = store, rank, size, timeout, gen
        self._lock = threading.Lock()
        self._out: dict[int, _Channel] = {}
        self._in: dict[int, _Channel] = {}
        self._posted: list[_Recv] = []
        self._unexpected: list[tuple[int, int, torch.Tensor]] = []

    def _check_peer(self, peer: int, what: str) -> None:
        if not 0 <= peer < self.size:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: {what}: rank {peer} is not in the group "
                                        f"(ranks 0..{self.size - 1})")

    def _channel(self, table: dict[int, _Channel], peer: int, sending: bool) -> _Channel:
        with self._lock:
            ch = table.get(peer)
            if ch is None:
                ch = table[peer] = _Channel(self, peer, sending)
            return ch

    # ------------------------------------------------------------------ send
    def send(self, t: torch.Tensor, dst: int, tag: int) -> Work:
        self._check_peer(dst, "send")
        what = f"send to {dst}"
        work = Work(what, [t])
        if dst == self.rank:
            copy = t.detach().contiguous().view(-1).view(torch.uint8).clone() if t.numel() else \
                torch.empty(0, dtype=torch.uint8)
            self._arrived(self.rank, tag, copy)
            work._finish()
            return work
        payload = T.np_bytes(t.contiguous())
        hdr = np.array([payload.size, tag], dtype=np.int64)
        ch = self._channel(self._out, dst, True)

        def task() -> None:
            try:
                comm = ch.connect()
                with pyxccl.group():
                    comm.send(hdr, 1)
                    comm.send(payload, 1)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                work._finish(wrap_error(exc, what))
            else:
                work._finish()
        ch.submit(task)
        return work

    # ------------------------------------------------------------------ receive
    def recv(self, t: torch.Tensor, src: int | None, tag: int) -> Work:
        if src is not None:
            self._check_peer(src, "recv")
        what = f"recv from {src if src is not None else 'any source'}"
        work = Work(what, [t])
        r = _Recv(src, tag, T.staged(t, load=False), work)
        with self._lock:
            hit = next((i for i, (s, g, _) in enumerate(self._unexpected) if r.accepts(s, g)), None)
            if hit is None:
                self._posted.append(r)
                msg = None
            else:
                msg = self._unexpected.pop(hit)
        if msg is not None:
            self._deliver(r, msg[0], msg[2])
            return work
        peers = [src] if src is not None else [p for p in range(self.size) if p != self.rank]
        for p in peers:
            if p != self.rank:
                self._ensure_reading(p)
        return work

    def cancel(self, work: Work) -> None:
        """Withdraw a receive that is still posted (its message, if it comes, is kept as unexpected)."""
        with self._lock:
            self._posted = [r for r in self._posted if r.work is not work]

    def _ensure_reading(self, peer: int) -> None:
        ch = self._channel(self._in, peer, False)
        with self._lock:
            if ch.reading:
                return
            ch.reading = True
        try:
            ch.submit(lambda: self._read(ch))
        except PyxcclBackendError:
            with self._lock:
                ch.reading = False

    def _wanted(self, peer: int) -> bool:
        return any(r.src is None or r.src == peer for r in self._posted)

    def _read(self, ch: _Channel) -> None:
        """The reader of one incoming channel: headers, matched to posted receives, while any wants one."""
        peer = ch.peer
        hdr = np.zeros(_HDR, dtype=np.int64)
        while True:
            try:
                comm = ch.connect()
                comm.recv(hdr, 0)
            except pyxccl.CollectiveTimeout as exc:
                if self._timed_out(peer, exc):
                    return
                continue
            except BaseException as exc:  # noqa: BLE001 - the channel is broken: fail who waits on it
                self._fail_waiting(peer, exc)
                return
            nbytes, tag = int(hdr[0]), int(hdr[1])
            with self._lock:
                r = next((x for x in self._posted if x.accepts(peer, tag)), None)
                if r is not None:
                    self._posted.remove(r)
            try:
                if r is not None and T.nbytes(r.stage.t) == nbytes:
                    comm.recv(T.np_bytes(r.stage.flat), 0)
                    r.stage.done()
                    r.work._source = peer
                    r.work._finish()
                else:
                    buf = torch.empty(nbytes, dtype=torch.uint8)
                    comm.recv(buf.numpy(), 0)
                    if r is not None:
                        self._deliver(r, peer, buf)  # reports the size mismatch
                    else:
                        self._arrived(peer, tag, buf)
            except BaseException as exc:  # noqa: BLE001
                if r is not None:
                    r.work._finish(wrap_error(exc, r.work.what))
                self._fail_waiting(peer, exc)
                return
            with self._lock:
                if not self._wanted(peer):
                    ch.reading = False
                    return

    def _timed_out(self, peer: int, exc: BaseException) -> bool:
        """A header wait passed the timeout: fail receives from ``peer`` that waited that long. True: stop."""
        now = time.monotonic()
        with self._lock:
            late = [r for r in self._posted if r.src == peer and now - r.posted >= self.timeout]
            for r in late:
                self._posted.remove(r)
            stop = not self._wanted(peer)
            if stop:
                self._in[peer].reading = False
        for r in late:
            r.work._finish(PyxcclTimeout(f"{BACKEND} backend: {r.work.what}: nothing arrived within "
                                         f"{self.timeout:.0f} s ({exc})"))
        return stop

    def _fail_waiting(self, peer: int, exc: BaseException) -> None:
        with self._lock:
            dead = [r for r in self._posted if r.src == peer]
            for r in dead:
                self._posted.remove(r)
            self._in[peer].reading = False
        for r in dead:
            r.work._finish(wrap_error(exc, r.work.what))

    def _arrived(self, src: int, tag: int, buf: torch.Tensor) -> None:
        """Keep a message nobody waited for; hand it to a receive posted meanwhile."""
        with self._lock:
            r = next((x for x in self._posted if x.accepts(src, tag)), None)
            if r is None:
                self._unexpected.append((src, tag, buf))
                return
            self._posted.remove(r)
        self._deliver(r, src, buf)

    def _deliver(self, r: _Recv, src: int, buf: torch.Tensor) -> None:
        want = T.nbytes(r.stage.t)
        if buf.numel() != want:
            r.work._finish(PyxcclInvalidArgument(
                f"{BACKEND} backend: {r.work.what}: rank {src} sent {buf.numel()} bytes, the receive expects {want}"))
            return
        if want:
            T.np_bytes(r.stage.flat)[:] = buf.numpy()
            r.stage.done()
        r.work._source = src
        r.work._finish()

    # ------------------------------------------------------------------ life
    def close(self) -> None:
        """Fail receives still posted and close the channels (locally: each side closes its own)."""
        with self._lock:
            posted, self._posted = self._posted, []
            chans = list(self._out.values()) + list(self._in.values())
        for r in posted:
            r.work._finish(PyxcclBackendError(f"{BACKEND} backend: {r.work.what}: the process group was shut down"))
        for ch in chans:
            ch.close()

    abort = close
