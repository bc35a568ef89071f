"""The executor: runs one rank's part of an IR program over transport connectors.

This is pyxccl's only hot loop. Every thread block of the program becomes a runner;
one thread interleaves all runners (MSCCL runs thread blocks concurrently; here a
runner that cannot progress yields to the others), so several channels are in
flight at once and a step never blocks halfway. When no runner can progress the
thread sleeps on its doorbell until a peer or a progress thread rings it.

Pipelining: every chunk is cut into slices of ``n`` elements (a slot holds ``cnt``
slices, one per chunk a step moves); the whole thread-block program runs once per
slice index, exactly like MSCCL's loop over ``gridOffset``. Slice ``i`` of every chunk
is independent of slice ``j``, so thread blocks may be at different iterations.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import numpy as np

from .dtypes import Kernels
from .errors import Aborted, CollectiveTimeout, MismatchError
from .ir.program import Buf, Op, Program, ThreadBlock
from .transport.base import RecvConnector, SendConnector
from .transport.doorbell import Doorbell

ConnKey = tuple[int, int, str]  # (peer, channel, "send" | "recv")


class Runner(Protocol):
    """Something the executor drives: advance without blocking, report when done."""

    finished: bool

    def advance(self) -> bool:
        """Run as many steps as can run now; True if at least one ran."""

    def describe(self) -> str:
        """What the runner is waiting for (for timeout messages)."""


@dataclass
class Geometry:
    """How a call's buffers are cut: chunk length ``ce`` (padded), slice length ``n``, iterations."""

    count: int
    k: int
    ce: int
    n: int
    niters: int

    @classmethod
    def of(cls, count: int, k: int, slot_bytes: int, max_cnt: int, itemsize: int) -> "Geometry":
        ce = -(-count // k) if count else 0
        n = max(1, min(ce, slot_bytes // (max_cnt * itemsize))) if ce else 1
        return cls(count, k, ce, n, -(-ce // n) if ce else 0)


class _Piece:
    """Where chunk ``c`` of one buffer lives in this call: array, start element, valid length."""

    __slots__ = ("array", "start", "valid")

    def __init__(self, array: np.ndarray, start: int, valid: int):
        self.array, self.start, self.valid = array, start, valid

    def view(self, o: int, m: int) -> np.ndarray:
        vl = min(m, self.valid - o)
        if vl <= 0:
            return self.array[:0]
        s = self.start + o
        return self.array[s:s + vl]


# (buffer, start, valid) of every chunk a step touches, per thread block: independent of the
# arrays, so it is cached per (program, rank, count, itemsize, slot size) and reused by calls
_Skeleton = list[list[tuple[object, list[tuple[Buf, int, int]] | None, list[tuple[Buf, int, int]] | None]]]
_SKELETONS: dict[tuple, tuple[Program, "Geometry", _Skeleton]] = {}
_SKELETON_CACHE_SIZE = 256


class ProgramRun:
    """One rank's program bound to concrete buffers, kernels and connectors."""

    def __init__(self, program: Program, rank: int, arrays: dict[Buf, np.ndarray], count: int,
                 kernels: Kernels, slot_bytes: int, label: str = "",
                 layout: dict[Buf, list[tuple[int, int]]] | None = None):
        """``count``: elements per block; ``layout``: per buffer, (offset, count) of each block when
        blocks differ in size (the v-collectives; ``count`` is then the largest, equal on every rank)."""
        self.program = program
        self.rank = rank
        self.part = program.ranks[rank]
        self.kernels = kernels
        self.label = label or f"{program.collective}({program.name})"
        dtype = arrays[Buf.INPUT].dtype
        self.dtype = dtype
        self.layout = layout or {}
        key = (id(program), rank, count, dtype.itemsize, slot_bytes)
        cached = _SKELETONS.get(key) if layout is None else None
        if cached is not None and cached[0] is program:
            _, self.geo, self.skeleton = cached
        else:
            self.geo = Geometry.of(count, program.chunks_per_block, slot_bytes, program.max_cnt, dtype.itemsize)
            self.skeleton = self._skeleton()
            if layout is None:
                if len(_SKELETONS) >= _SKELETON_CACHE_SIZE:
                    _SKELETONS.clear()
                _SKELETONS[key] = (program, self.geo, self.skeleton)
        self.arrays = arrays
        if self.part.s_chunks:
            self.arrays = dict(arrays)
            self.arrays[Buf.SCRATCH] = np.empty(self.part.s_chunks * self.geo.ce, dtype=dtype)
        self.done = [0] * len(self.part.tbs)
        self.nsteps = [len(tb.steps) for tb in self.part.tbs]

    def location(self, buf: Buf, c: int) -> tuple[Buf, int, int]:
        """(buffer, start element, valid length) of chunk ``c`` of buffer ``buf``."""
        g = self.geo
        if buf is Buf.SCRATCH:
            return buf, c * g.ce, g.ce
        block, cls = divmod(c, g.k)
        blocks = self.layout.get(buf)
        start, count = blocks[block] if blocks is not None else (block * g.count, g.count)
        return buf, start + cls * g.ce, max(0, min(g.ce, count - cls * g.ce))

    def _skeleton(self) -> _Skeleton:
        loc = self.location
        return [[(st, [loc(st.srcbuf, st.srcoff + j) for j in range(st.cnt)] if st.op.reads_src else None,
                  [loc(st.dstbuf, st.dstoff + j) for j in range(st.cnt)] if st.op.writes_dst else None)
                 for st in tb.steps] for tb in self.part.tbs]

    def bind(self, pieces: list[tuple[Buf, int, int]] | None) -> list[_Piece] | None:
        """The skeleton's locations as pieces of this call's arrays."""
        if pieces is None:
            return None
        arrays = self.arrays
        return [_Piece(arrays[b], start, valid) for b, start, valid in pieces]

    def needed(self) -> frozenset[ConnKey]:
        """The connectors this rank's part uses."""
        return _needed(self.program, self.rank)

    def runners(self, conns: dict[ConnKey, object]) -> list["TBRunner"]:
        """One runner per thread block (none when the call moves no data)."""
        if self.geo.niters == 0:
            return []
        return [TBRunner(self, tb, self.skeleton[i], conns.get((tb.send, tb.channel, "send")),  # type: ignore[arg-type]
                         conns.get((tb.recv, tb.channel, "recv")))  # type: ignore[arg-type]
                for i, tb in enumerate(self.part.tbs)]


_NEEDED: dict[tuple[int, int], tuple[Program, frozenset[ConnKey]]] = {}


def _needed(program: Program, rank: int) -> frozenset[ConnKey]:
    hit = _NEEDED.get((id(program), rank))
    if hit is not None and hit[0] is program:
        return hit[1]
    keys: set[ConnKey] = set()
    for tb in program.ranks[rank].tbs:
        if any(s.op.sends for s in tb.steps):
            keys.add((tb.send, tb.channel, "send"))
        if any(s.op.receives for s in tb.steps):
            keys.add((tb.recv, tb.channel, "recv"))
    if len(_NEEDED) >= _SKELETON_CACHE_SIZE:
        _NEEDED.clear()
    _NEEDED[(id(program), rank)] = (program, frozenset(keys))
    return _NEEDED[(id(program), rank)][1]


class TBRunner:
    """Runs one thread block: every step, once per slice iteration."""

    def __init__(self, run: ProgramRun, tb: ThreadBlock, skeleton, send: SendConnector | None,
                 recv: RecvConnector | None):
        self.run, self.tb, self.sendc, self.recvc = run, tb, send, recv
        self.it = 0
        self.s = 0
        self.finished = not tb.steps
        bind = run.bind
        self._steps = [(st, bind(srcs), bind(dsts)) for st, srcs, dsts in skeleton]

    def describe(self) -> str:
        if self.finished:
            return f"tb {self.tb.id} done"
        st = self.tb.steps[self.s]
        why = []
        for dtb, dstep in st.deps:
            if self.run.done[dtb] < self.it * self.run.nsteps[dtb] + dstep + 1:
                why.append(f"tb {dtb} step {dstep}")
        if st.op.receives and not self.recvc.ready():  # type: ignore[union-attr]
            why.append(f"data from rank {self.tb.recv}")
        if st.op.sends and not self.sendc.ready():  # type: ignore[union-attr]
            why.append(f"a free slot towards rank {self.tb.send}")
        return (f"tb {self.tb.id} (channel {self.tb.channel}) step {self.s} '{st.op.value}' "
                f"slice {self.it + 1}/{self.run.geo.niters} waits for {' and '.join(why) or 'nothing'}")

    def advance(self) -> bool:
        run = self.run
        done = run.done
        nsteps = run.nsteps
        tbid = self.tb.id
        progressed = False
        while not self.finished:
            st, srcs, dsts = self._steps[self.s]
            for dtb, dstep in st.deps:
                if done[dtb] < self.it * nsteps[dtb] + dstep + 1:
                    return progressed
            op = st.op
            if op.receives and not self.recvc.ready():  # type: ignore[union-attr]
                return progressed
            if op.sends and not self.sendc.ready():  # type: ignore[union-attr]
                return progressed
            self._execute(op, st.cnt, srcs, dsts)
            progressed = True
            done[tbid] += 1
            self.s += 1
            if self.s == len(self._steps):
                self.s = 0
                self.it += 1
                if self.it == run.geo.niters:
                    self.finished = True
        return progressed

    def _execute(self, op: Op, cnt: int, srcs, dsts) -> None:
        run = self.run
        g = run.geo
        o = self.it * g.n
        m = min(g.n, g.ce - o)
        reduce, copy = run.kernels.reduce, run.kernels.copy
        nbytes = cnt * m * run.dtype.itemsize
        rv = sv = None
        if op.receives:
            raw = self.recvc.buffer()  # type: ignore[union-attr]
            if raw.size != nbytes:
                raise MismatchError(
                    f"{run.label}: rank {self.tb.recv} sent {raw.size} bytes where rank {run.rank} expects "
                    f"{nbytes} (channel {self.tb.channel}, slice {self.it + 1}); do the ranks agree on count and dtype?")
            rv = raw.view(run.dtype)
        if op.sends:
            sv = self.sendc.buffer()[:nbytes].view(run.dtype)  # type: ignore[union-attr]
        for j in range(cnt):
            lo, hi = j * m, (j + 1) * m
            if op is Op.SEND:
                src = srcs[j].view(o, m)
                copy(sv[lo:lo + src.size], src)
            elif op is Op.RECV:
                dst = dsts[j].view(o, m)
                copy(dst, rv[lo:lo + dst.size])
            elif op is Op.RECV_COPY_SEND:
                dst = dsts[j].view(o, m)
                copy(dst, rv[lo:lo + dst.size])
                copy(sv[lo:hi], rv[lo:hi])
            elif op is Op.RECV_REDUCE_SEND:
                src = srcs[j].view(o, m)
                reduce(rv[lo:lo + src.size], src, sv[lo:lo + src.size])
            # a short user chunk (count not a multiple of k) may meet a full-length scratch
            # chunk: only the elements both have are real, the rest is padding
            elif op is Op.RECV_REDUCE_COPY:
                dst, src = _common(dsts[j].view(o, m), srcs[j].view(o, m))
                reduce(rv[lo:lo + dst.size], src, dst)
            elif op is Op.RECV_REDUCE_COPY_SEND:
                dst, src = _common(dsts[j].view(o, m), srcs[j].view(o, m))
                reduce(rv[lo:lo + dst.size], src, dst)
                copy(sv[lo:lo + dst.size], dst)
            elif op is Op.COPY:
                dst, src = _common(dsts[j].view(o, m), srcs[j].view(o, m))
                if dst.size and not (dst.base is src.base and _addr(dst) == _addr(src)):
                    copy(dst, src)
            elif op is Op.REDUCE:
                dst, src = _common(dsts[j].view(o, m), srcs[j].view(o, m))
                reduce(dst, src, dst)
        if op.sends:
            self.sendc.post(nbytes)  # type: ignore[union-attr]
        if op.receives:
            self.recvc.release()  # type: ignore[union-attr]


def _common(dst: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if dst.size == src.size:
        return dst, src
    n = min(dst.size, src.size)
    return dst[:n], src[:n]


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class P2PRunner:
    """Point-to-point ops towards one peer in one direction, in order, sliced into slots.

    The first slot of every op starts with an 8-byte header holding the op's total byte
    count, so a receive whose size differs from the matching send fails with
    MismatchError on the receiving rank instead of hanging or truncating silently.
    """

    HEADER = struct.Struct("<Q")

    def __init__(self, conn: SendConnector | RecvConnector, sending: bool, arrays: Iterable[np.ndarray],
                 slot_bytes: int, rank: int, label: str = "p2p"):
        self.conn, self.sending, self.slot_bytes, self.rank, self.label = conn, sending, slot_bytes, rank, label
        self.ops = [a.reshape(-1).view(np.uint8) for a in arrays]
        self.i = 0  # op index
        self.off = 0  # payload bytes done in the current op
        self.finished = not self.ops

    def describe(self) -> str:
        what = "a free slot towards" if self.sending else "data from"
        return (f"{self.label}: {'send' if self.sending else 'recv'} #{self.i} of {len(self.ops)}, "
                f"{self.off}/{self.ops[self.i].size if not self.finished else 0} bytes, waits for {what} rank {self.conn.peer}")

    def advance(self) -> bool:
        progressed = False
        hsize = self.HEADER.size
        while not self.finished and self.conn.ready():
            data = self.ops[self.i]
            head = hsize if self.off == 0 else 0
            n = min(self.slot_bytes - head, data.size - self.off)
            if self.sending:
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
                data[self.off:self.off + n] = raw[head:head + n]
                self.conn.release()  # type: ignore[union-attr]
            progressed = True
            self.off += n
            if self.off >= data.size:  # a 0-byte op still moves its header
                self.i += 1
                self.off = 0
                if self.i == len(self.ops):
                    self.finished = True
        return progressed


def drive(runners: list, doorbell: Doorbell, deadline: float, what: str, rank: int,
          aborted: Callable[[], bool] = lambda: False) -> None:
    """Run ``runners`` to completion; raise CollectiveTimeout at ``deadline`` (monotonic), Aborted when asked."""
    active = [r for r in runners if not r.finished]
    while active:
        seen = doorbell.value()
        progressed = False
        for r in active:
            if r.advance():
                progressed = True
        if progressed:
            active = [r for r in active if not r.finished]
            continue
        if aborted():
            raise Aborted(f"rank {rank}: {what} aborted")
        if not doorbell.wait(seen, min(deadline, time.monotonic() + 0.05)):
            if aborted():
                raise Aborted(f"rank {rank}: {what} aborted")
            if time.monotonic() >= deadline:
                waits = "; ".join(r.describe() for r in active)
                raise CollectiveTimeout(f"rank {rank}: {what} timed out: {waits}")
