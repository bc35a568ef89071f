"""send / recv / recv from any source for the torch backend, with MPI's matching rules.

Everything travels on the group's pyxccl communicator, through its core point-to-point
calls: those progress beside the communicator's call queue and match per (peer, tag) in
posting order, so a pending receive holds up neither sends nor the group's collectives,
and torch code may post ``irecv`` before ``isend`` freely (``batch_isend_irecv``, ring
exchanges).

torch's tags and ``recv_anysource`` need a matching step of their own: every torch
message is a 16-byte header (byte count, torch tag) sent with core tag :data:`HEADER_TAG`,
then its payload with core tag :data:`DATA_TAG`, posted together (one ``pyxccl.group()``)
so that headers and payloads pair up in order. Per peer, a *reader* keeps one header
receive posted while some posted torch receive could take a message from that peer, and
matches each header to the earliest posted receive that accepts its source and tag (a
specific source or any source); the payload then goes straight into that receive's
tensor. A message nobody waits for (yet) is received into a buffer and kept as
*unexpected*; a later receive takes it from there. A send to this rank itself is kept the
same way. The reader runs from the completion callbacks of its core receives: no threads.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch

import pyxccl

from . import _tensors as T
from ._errors import BACKEND, PyxcclBackendError, PyxcclInvalidArgument, PyxcclTimeout, wrap_error
from ._work import Work

#: core tags of the backend's messages (negative: out of the way of tags a user picks on ``pg.comm``)
HEADER_TAG = -(1 << 62)
DATA_TAG = HEADER_TAG + 1
_HDR = 2  # int64 words: byte count, torch tag


class _Recv:
    __slots__ = ("posted", "src", "stage", "tag", "work")

    def __init__(self, src: int | None, tag: int, stage: T.Staged, work: Work):
        self.src, self.tag, self.stage, self.work = src, tag, stage, work
        self.posted = time.monotonic()

    def accepts(self, src: int, tag: int) -> bool:
        return (self.src is None or self.src == src) and self.tag == tag


class P2P:
    """The point-to-point engine of one process group, on its communicator ``comm``."""

    def __init__(self, comm: pyxccl.Communicator, rank: int, size: int, timeout: float):
        self.comm, self.rank, self.size, self.timeout = comm, rank, size, timeout
        self._lock = threading.Lock()
        self._posted: list[_Recv] = []
        self._unexpected: list[tuple[int, int, torch.Tensor]] = []
        self._reading: dict[int, Any] = {}  # peer -> its reader's pending header receive (None between two)
        self._closed = False

    def _check_peer(self, peer: int, what: str) -> None:
        if not 0 <= peer < self.size:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: {what}: rank {peer} is not in the group "
                                        f"(ranks 0..{self.size - 1})")

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
        if self._closed:
            raise PyxcclBackendError(f"{BACKEND} backend: the process group was shut down")
        payload = T.np_bytes(t.contiguous() if t.is_cpu else t.detach().cpu())  # CUDA: through host memory
        hdr = np.array([payload.size, tag], dtype=np.int64)
        comm = self.comm
        try:
            with pyxccl.group():  # header and payload are posted together: they pair up on the receiver
                comm.send(hdr, dst, tag=HEADER_TAG, async_op=True)
                sent = comm.send(payload, dst, tag=DATA_TAG, async_op=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            work._finish(wrap_error(exc, what))
            return work
        sent.add_done_callback(lambda w: work._finish(None if w.exception() is None
                                                      else wrap_error(w.exception(), what)))
        return work

    # ------------------------------------------------------------------ receive
    def recv(self, t: torch.Tensor, src: int | None, tag: int) -> Work:
        if src is not None:
            self._check_peer(src, "recv")
        what = f"recv from {src if src is not None else 'any source'}"
        work = Work(what, [t])
        r = _Recv(src, tag, T.staged_on_host(t, load=False), work)
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

    def _wanted(self, peer: int) -> bool:
        return any(r.src is None or r.src == peer for r in self._posted)

    def _ensure_reading(self, peer: int) -> None:
        with self._lock:
            if peer in self._reading or self._closed:
                return
            self._reading[peer] = None
        self._read_next(peer)

    def _read_next(self, peer: int) -> None:
        """Post the reader's next header receive from ``peer``."""
        hdr = np.zeros(_HDR, dtype=np.int64)
        try:
            w = self.comm.recv(hdr, peer, tag=HEADER_TAG, async_op=True)
        except BaseException as exc:  # noqa: BLE001 - the communicator is unusable: fail who waits
            self._fail_waiting(peer, exc)
            return
        with self._lock:
            if peer in self._reading:
                self._reading[peer] = w
            closed = self._closed
        if closed:  # close() ran meanwhile and could not see it
            w.cancel()
        w.add_done_callback(lambda done: self._on_header(peer, hdr, done))

    def _on_header(self, peer: int, hdr: np.ndarray, w: Any) -> None:
        exc = w.exception()
        if exc is not None:
            if isinstance(exc, pyxccl.CollectiveTimeout) and not self._closed:
                if not self._timed_out(peer, exc):
                    self._read_next(peer)
            else:
                self._fail_waiting(peer, exc)
            return
        nbytes, tag = int(hdr[0]), int(hdr[1])
        with self._lock:
            r = next((x for x in self._posted if x.accepts(peer, tag)), None)
            if r is not None:
                self._posted.remove(r)
            self._reading[peer] = None
        buf = None
        if r is not None and T.nbytes(r.stage.t) == nbytes:
            target = T.np_bytes(r.stage.flat)
        else:
            buf = torch.empty(nbytes, dtype=torch.uint8)
            target = buf.numpy()
        try:
            got = self.comm.recv(target, peer, tag=DATA_TAG, async_op=True)
        except BaseException as exc:  # noqa: BLE001
            if r is not None:
                r.work._finish(wrap_error(exc, r.work.what))
            self._fail_waiting(peer, exc)
            return
        got.add_done_callback(lambda done: self._on_data(peer, tag, r, buf, done))

    def _on_data(self, peer: int, tag: int, r: _Recv | None, buf: torch.Tensor | None, w: Any) -> None:
        exc = w.exception()
        if exc is not None:
            if r is not None:
                r.work._finish(wrap_error(exc, r.work.what))
            self._fail_waiting(peer, exc)
            return
        if buf is None:
            r.stage.done()  # type: ignore[union-attr]
            r.work._source = peer  # type: ignore[union-attr]
            r.work._finish()  # type: ignore[union-attr]
        elif r is not None:
            self._deliver(r, peer, buf)  # reports the size mismatch
        else:
            self._arrived(peer, tag, buf)
        with self._lock:
            if not self._wanted(peer) or self._closed:
                self._reading.pop(peer, None)
                return
        self._read_next(peer)

    def _timed_out(self, peer: int, exc: BaseException) -> bool:
        """A header wait passed the timeout: fail receives from ``peer`` that waited that long. True: stop."""
        now = time.monotonic()
        with self._lock:
            late = [r for r in self._posted if r.src == peer and now - r.posted >= self.timeout]
            for r in late:
                self._posted.remove(r)
            stop = not self._wanted(peer)
            if stop:
                self._reading.pop(peer, None)
        for r in late:
            r.work._finish(PyxcclTimeout(f"{BACKEND} backend: {r.work.what}: nothing arrived within "
                                         f"{self.timeout:.0f} s ({exc})"))
        return stop

    def _fail_waiting(self, peer: int, exc: BaseException) -> None:
        with self._lock:
            dead = [r for r in self._posted if r.src == peer]
            for r in dead:
                self._posted.remove(r)
            self._reading.pop(peer, None)
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
        """Fail receives still posted and withdraw the readers' header receives (locally)."""
        with self._lock:
            self._closed = True
            posted, self._posted = self._posted, []
            readers = [w for w in self._reading.values() if w is not None]
        for r in posted:
            r.work._finish(PyxcclBackendError(f"{BACKEND} backend: {r.work.what}: the process group was shut down"))
        for w in readers:
            w.cancel()

    abort = close
