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

Single copy: where a connector takes descriptors (``remote_min_bytes`` > 0, the shm
transport with PYXCCL_CMA), a step that only forwards bytes may post where they lie in
this rank's memory instead of copying them into the slot; a receiving ``r`` / ``rcs``
copies them straight into its destination, a reduction reads them into the slot first.
:func:`pyxccl.ir.passes.direct.direct_plan` decides per program, rank and aliasing which
sending steps may: ``s`` (its source), ``rcs`` and ``rrcs`` (the destination just
written), when no step of this rank that is not ordered before it writes the same chunk
(the peer reads it later, at its own pace). Whether they do is the call's choice
(``ProgramRun.path``, measured per call by :mod:`pyxccl.runtime.host.path_choice`: all, none, or those whose
receiver does not reduce what arrives): the kernel's copy
is slower than memcpy between cores that share a cache and much faster than pulling
slot lines out of another CCD's cache. A runner that posted descriptors finishes only
once the peer released them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ...ir.passes.direct import (
    copy_at_once,
    direct_any,
    direct_plan,
    early_offers,
    feeds_reduction,
    only_sends,
    put_from_copy,
    put_plan,
    span_ok,
    span_plan,
)
from ..kernels import Kernels, trim_pair
from ...errors import CollectiveTimeout, MismatchError
from ...ir.program import Buf, Op, Program, ThreadBlock, inplace_alias
from .path_choice import DIRECT, PUT
from .single_copy import SingleCopySteps, SlicePut
from ...transport.base import RecvConnector, SendConnector
from ...transport.doorbell import Doorbell

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
        self._addrs: dict[int, int] = {}
        self._plan: list[tuple[bool, ...]] | None = None
        self._mode: str | None = "?"  # _alias_mode() once known
        self.sends_direct = False  # some step of this run may send by descriptor (set by its runners)
        # some step of this run keeps its descriptor on the mixed path / loses it (set by its runners)
        self._mixed_keeps = self._mixed_drops = False
        self.put_differs = False  # some step of this run may write into its receiver on the put path
        self.path = DIRECT  # this call's path for those steps (:mod:`pyxccl.runtime.host.path_choice`)

    def addr_of(self, array: np.ndarray) -> int:
        """The address of ``array``'s first element (memoized: the call's arrays live as long as it)."""
        a = self._addrs.get(id(array))
        if a is None:
            a = self._addrs[id(array)] = array.ctypes.data
        return a

    def direct_plan(self) -> list[tuple[bool, ...]]:
        """Per thread block, per step: may it send by descriptor (see :func:`pyxccl.ir.passes.direct.direct_plan`)?"""
        if self._plan is None:
            self._plan = direct_plan(self.program, self.rank, self._alias_mode())
        return self._plan

    @property
    def mixed_differs(self) -> bool:
        """Whether the mixed path differs from both others in this run (some descriptor stays and
        some goes, in any of its thread blocks): only then is it a candidate (:mod:`pyxccl.runtime.host.path_choice`)."""
        return self._mixed_keeps and self._mixed_drops

    def span_plan(self) -> list[tuple[bool, ...]]:
        """Per thread block, per step: may it send every later slice at once (:func:`pyxccl.ir.passes.direct.span_plan`)?"""
        return span_plan(self.program, self.rank, self._alias_mode())

    def put_plan(self) -> list[tuple[bool, ...]]:
        """Per thread block, per step: may it write every slice into the receiver (:func:`pyxccl.ir.passes.direct.put_plan`)?"""
        return put_plan(self.program, self.rank, self._alias_mode())

    def put_from_copy(self) -> list[tuple[bool, ...]]:
        """Per thread block, per step: does a put write from the copy before it (:func:`pyxccl.ir.passes.direct.put_from_copy`)?"""
        return put_from_copy(self.program, self.rank, self._alias_mode())

    def early_offers(self) -> list[tuple[bool, ...]]:
        """Per thread block, per step: is its destination offered at the call's start (:func:`pyxccl.ir.passes.direct.early_offers`)?"""
        return early_offers(self.program, self.rank, self._alias_mode())

    def copy_at_once(self) -> list[tuple[bool, ...]]:
        """Per thread block, per step: may a local copy do every slice at its first turn (:func:`pyxccl.ir.passes.direct.copy_at_once`)?"""
        return copy_at_once(self.program, self.rank, self._alias_mode())

    def span_ok(self) -> list[tuple[bool, ...]]:
        """Per thread block, per step: may it write every later slice at once (:func:`pyxccl.ir.passes.direct.span_ok`)?"""
        return span_ok(self.program, self.rank, self._alias_mode())

    def alias_hint(self) -> str:
        """"inplace" when input and output may overlap (bounds only: cheap), else "oop"."""
        ai, ao = self.arrays.get(Buf.INPUT), self.arrays.get(Buf.OUTPUT)
        return "inplace" if ai is not None and ao is not None and np.may_share_memory(ai, ao) else "oop"

    def _alias_mode(self) -> str | None:
        """How input and output overlap: "oop" (not at all), "inplace" (as the collective's in-place
        call defines), None (otherwise: no single copy). Computed once per run."""
        mode = self._mode
        if mode == "?":
            mode = self._mode = self._find_alias_mode()
        return mode

    def _find_alias_mode(self) -> str | None:
        arrays = self.arrays
        ai, ao = arrays.get(Buf.INPUT), arrays.get(Buf.OUTPUT)
        if any(a is not None and a.size and not a.flags.c_contiguous for a in arrays.values()):
            return None
        if self.alias_hint() == "oop" or not ai.nbytes or not ao.nbytes:  # type: ignore[union-attr]
            return "oop"
        p = self.program
        small, big, off = inplace_alias(p.collective, p.nranks, p.chunks_per_block, self.rank)
        delta = (self.location(big, off)[1] - self.location(small, 0)[1]) * self.dtype.itemsize
        if self.addr_of(arrays[small]) - self.addr_of(arrays[big]) == delta:
            return "inplace"
        return None

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

    def reset(self, runners: list["TBRunner"]) -> None:
        """Make this run and its ``runners`` ready to run again over the same arrays (a repeated call)."""
        self.done = [0] * len(self.part.tbs)
        for r in runners:
            r.reset()

    def runners(self, conns: dict[ConnKey, object]) -> list["TBRunner"]:
        """One runner per thread block (none when the call moves no data), those that talk to a peer
        first: :func:`drive` advances them in this order, so a send posts (and a receive that can,
        reads) before a thread block of local copies runs through all its slices, and the peer
        does not wait for those copies (2-rank all-to-all at 16 MiB: 4-6 % less time)."""
        if self.geo.niters == 0:
            return []
        runners = [TBRunner(self, tb, self.skeleton[i], conns.get((tb.send, tb.channel, "send")),  # type: ignore[arg-type]
                            conns.get((tb.recv, tb.channel, "recv")), i)  # type: ignore[arg-type]
                   for i, tb in enumerate(self.part.tbs)]
        runners.sort(key=lambda r: r.sendc is None and r.recvc is None)  # stable: thread block order otherwise
        return runners


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


class TBRunner(SingleCopySteps):
    """Runs one thread block: every step, once per slice iteration (the single-copy steps are
    :class:`pyxccl.runtime.host.single_copy.SingleCopySteps`)."""

    def __init__(self, run: ProgramRun, tb: ThreadBlock, skeleton, send: SendConnector | None,
                 recv: RecvConnector | None, index: int = -1):
        self.run, self.tb, self.sendc, self.recvc, self.index = run, tb, send, recv, index
        self.it = 0
        self.s = 0
        self.finished = not tb.steps
        bind = run.bind
        # single copy: descriptors only where a step of this call can reach the connector's minimum
        rmin = send.remote_min_bytes if send is not None else 0
        rmin_in = recv.remote_min_bytes if recv is not None and recv.remote_read else 0
        plan: tuple[int, ...] | None = None
        mixed: tuple[int, ...] | None = None
        put: tuple[int, ...] | None = None
        self._rread = False
        if (rmin or rmin_in) and index >= 0:
            may_send, may_recv, cnt = direct_any(run.program, run.rank, run.alias_hint())[index]
            biggest = cnt * run.geo.n * run.dtype.itemsize
            if may_send and rmin and biggest >= rmin and cnt <= 128:  # 128 regions fit any slot that offers them
                span = run.span_plan()[index]
                # per step: 0 slots only, 1 may send by descriptor, 2 may also send the rest of the call at once
                plan = tuple(d + (d and span[i]) for i, d in enumerate(run.direct_plan()[index]))
                run.sends_direct = run.sends_direct or any(plan)
                # the mixed path: no descriptor where the peer reduces what arrives
                feeds = feeds_reduction(run.program, run.rank)[index]
                mixed = tuple(0 if feeds[i] else d for i, d in enumerate(plan))
                run._mixed_keeps = run._mixed_keeps or any(mixed)
                run._mixed_drops = run._mixed_drops or mixed != plan
                # the put path: 3 where the step may write every slice into the receiver itself
                puts = run.put_plan()[index]
                put = tuple(3 if d == 2 and puts[i] else d for i, d in enumerate(plan))
                run.put_differs = run.put_differs or put != plan
            # (the call's arrays are flat and C-contiguous: calls.py checks; addresses are computed from that)
            # a plain receive reads descriptors even where this rank's aliasing says none come: a peer
            # whose call aliases otherwise may send the rest of the call at once (see span_plan)
            self._rread = (may_recv or any(st.op is Op.RECV for st in tb.steps)) and bool(rmin_in) and biggest >= rmin_in
        self._rmin = rmin
        self._posted_remote = False
        # per step, once a descriptor moved every later slice of it: True (nothing left to do) or
        # (private buffer, its first element's offset): copy the slice from there at the step's turn
        self._spanned: list[bool | tuple[np.ndarray, int]] | None = None
        self._memo: dict[tuple, list] | None = None
        # plain receives from a peer that only sends: they answer its wish to write part of the
        # rest of the call here (an offer of the destination, or a refusal)
        self._offers: tuple[bool, ...] | None = None
        if self._rread and only_sends(run.program, tb.recv):
            self._offers = tuple(st.op is Op.RECV for st in tb.steps)
        self._offered = -1  # the tail value of the last answer given
        # the receive whose destination is offered when the call starts (-1: none)
        early = run.early_offers()[index] if self._rread else ()
        self._early = early.index(True) if True in early else -1
        self._early_due = self._early >= 0
        # a sender that only sends waits (briefly) for that answer before it sends the rest at once
        self._wants_offer = bool(plan and 2 in plan and only_sends(run.program, run.rank))
        self._offer_since: float | None = None
        self._await_put: int | None = None  # a slot (tail value) whose sender still writes its part
        self._steps = []
        for i, (st, srcs, dsts) in enumerate(skeleton):
            src_p, dst_p = bind(srcs), bind(dsts)
            # a COPY whose source and destination are the same memory (in place) is skipped;
            # decided once here, since a run's arrays never change
            same = tuple(_same_piece(a, b) for a, b in zip(src_p, dst_p)) if st.op is Op.COPY else None
            # per path (slots, direct, mixed, put): may the step send by descriptor (1), the rest of the
            # call at once (2), every slice written into the receiver (3)?
            by_path = (0, plan[i], mixed[i], put[i]) if plan and mixed and put else (0, 0, 0, 0)  # type: ignore[index]
            self._steps.append((st, src_p, dst_p, by_path, same))
        # local copies that do every slice at their first turn (on the put path, not those a put writes from)
        self._at_once = run.copy_at_once()[index] if run.geo.niters > 1 and index >= 0 else None
        # put steps that write from the destination of the copy before them (the same bytes, in the cache)
        self._put_src: dict[int, list[_Piece]] = {}
        if put is not None and 3 in put:
            for i, from_copy in enumerate(run.put_from_copy()[index]):
                if from_copy:
                    copied, mine = self._steps[i - 1][2], self._steps[i][1]
                    if all(a.valid == b.valid for a, b in zip(copied, mine)):
                        self._put_src[i] = copied

    def reset(self) -> None:
        """Back to the first step of the first slice (the run repeats over the same arrays)."""
        if self._memo is None and self.run.geo.niters == 1:
            self._memo = {}  # repeated: keep each step's kernel calls per slot (see _execute)
        self.it = self.s = 0
        self.finished = not self.tb.steps
        self._posted_remote = False
        self._spanned = None
        self._await_put = None
        self._early_due = self._early >= 0

    def describe(self) -> str:
        if self.finished:
            return f"tb {self.tb.id} done"
        if self.it == self.run.geo.niters:
            if self._await_put is not None:
                return (f"tb {self.tb.id} (channel {self.tb.channel}) waits for rank {self.tb.recv} to write "
                        f"its part of the data into this rank (single copy)")
            return (f"tb {self.tb.id} (channel {self.tb.channel}) waits for rank {self.tb.send} to read "
                    f"its last data (single copy)")
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
        if self._early_due:  # the call starts: tell the sender where the early receive's bytes go
            self._early_due = False
            self._offer(self._steps[self._early][2], self._early, 0, early=True)
        while not self.finished:
            if self.it == run.geo.niters:  # every step ran; the peers still read or write through descriptors
                if self._await_put is not None and not self._put_arrived():
                    return progressed
                if self.sendc is not None and self.sendc.remote_pending():
                    return progressed
                self.finished = True
                return True
            st, srcs, dsts, by_path, same = self._steps[self.s]
            direct = by_path[run.path]
            # a step waits for its dependencies even once it moved every slice (spanned): the steps
            # after it in this thread block are ordered after them through it
            for dtb, dstep in st.deps:
                if done[dtb] < self.it * nsteps[dtb] + dstep + 1:
                    return progressed
            spanned = self._spanned[self.s] if self._spanned is not None else False
            if spanned is not True:
                op = st.op
                if spanned:  # type: ignore[truthy-bool]
                    if type(spanned) is SlicePut:
                        self._put_slice(spanned, st.cnt)
                    else:
                        self._copy_staged(st.cnt, dsts, spanned)  # type: ignore[arg-type]
                else:
                    if op.receives and not self.recvc.ready():  # type: ignore[union-attr]
                        if self._offers is not None and self._offers[self.s]:
                            self._offer(dsts, self.s, self.it)
                        return progressed
                    if op.sends and not self.sendc.ready():  # type: ignore[union-attr]
                        return progressed
                    if (direct == 3 or direct == 2 and self._wants_offer) and self._awaits_offer():
                        return progressed
                    self._execute(op, st.cnt, srcs, dsts, direct, same)
            progressed = True
            done[tbid] += 1
            self.s += 1
            if self.s == len(self._steps):
                self.s = 0
                self.it += 1
                if self.it == run.geo.niters and not self._posted_remote and self._await_put is None:
                    self.finished = True
        return progressed

    def _execute(self, op: Op, cnt: int, srcs, dsts, direct: int = 0, same: tuple | None = None) -> None:
        run = self.run
        g = run.geo
        o = self.it * g.n
        m = min(g.n, g.ce - o)
        nbytes = cnt * m * run.dtype.itemsize
        if (direct or self._rread) and self._execute_direct(op, cnt, srcs, dsts, direct, o, m, nbytes):
            return
        if self._at_once is not None and self._at_once[self.s] and not (run.path == PUT and self.s + 1 in self._put_src):
            # only local copies go at once (direct_plan.copy_at_once): this slice and every later one, a
            # whole block whose destination nobody reads again soon
            for _, (dst, src) in self._actions(op, cnt, srcs, dsts, same, o, g.ce - o, 0):
                run.kernels.bulk_copy(dst, src)
            self._span_done(True)  # the step is skipped for the later slices
            return
        key = acts = None
        memo = self._memo
        if memo is not None:  # a repeated one-slice run: the same views every time a slot comes round
            si = self.sendc.slot_index() if op.sends else 0  # type: ignore[union-attr]
            ri = self.recvc.slot_index(nbytes) if op.receives else 0  # type: ignore[union-attr]
            if si >= 0 and ri >= 0:
                key = (self.s, si, ri)
                acts = memo.get(key)
        if acts is None:
            acts = self._actions(op, cnt, srcs, dsts, same, o, m, nbytes)
            if key is not None:
                memo[key] = acts  # type: ignore[index]
        for fn, args in acts:
            fn(*args)
        if op.sends:
            self.sendc.post(nbytes)  # type: ignore[union-attr]
        if op.receives:
            self.recvc.release()  # type: ignore[union-attr]

    def _actions(self, op: Op, cnt: int, srcs, dsts, same: tuple | None, o: int, m: int,
                 nbytes: int) -> list[tuple[Callable, tuple]]:
        """The kernel calls of one step on the slot path, as (function, arguments) over views of
        this step's slots and pieces (MismatchError when the slot holds another size)."""
        run = self.run
        reduce, copy = run.kernels.reduce, run.kernels.copy
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
        acts: list[tuple[Callable, tuple]] = []
        for j in range(cnt):
            lo, hi = j * m, (j + 1) * m
            if op is Op.SEND:
                src = srcs[j].view(o, m)
                acts.append((copy, (sv[lo:lo + src.size], src)))  # type: ignore[index]
            elif op is Op.RECV:
                dst = dsts[j].view(o, m)
                acts.append((copy, (dst, rv[lo:lo + dst.size])))  # type: ignore[index]
            elif op is Op.RECV_COPY_SEND:
                dst = dsts[j].view(o, m)
                acts.append((copy, (dst, rv[lo:lo + dst.size])))  # type: ignore[index]
                acts.append((copy, (sv[lo:hi], rv[lo:hi])))  # type: ignore[index]
            elif op is Op.RECV_REDUCE_SEND:
                src = srcs[j].view(o, m)
                acts.append((reduce, (rv[lo:lo + src.size], src, sv[lo:lo + src.size])))  # type: ignore[index]
            # a short user chunk (count not a multiple of k) may meet a full-length scratch
            # chunk: only the elements both have are real, the rest is padding
            elif op is Op.RECV_REDUCE_COPY:
                dst, src = trim_pair(dsts[j].view(o, m), srcs[j].view(o, m))
                acts.append((reduce, (rv[lo:lo + dst.size], src, dst)))  # type: ignore[index]
            elif op is Op.RECV_REDUCE_COPY_SEND:
                dst, src = trim_pair(dsts[j].view(o, m), srcs[j].view(o, m))
                acts.append((reduce, (rv[lo:lo + dst.size], src, dst)))  # type: ignore[index]
                acts.append((copy, (sv[lo:lo + dst.size], dst)))  # type: ignore[index]
            elif op is Op.COPY:
                if not same[j]:  # type: ignore[index]
                    dst, src = trim_pair(dsts[j].view(o, m), srcs[j].view(o, m))
                    if dst.size:
                        acts.append((copy, (dst, src)))
            elif op is Op.REDUCE:
                dst, src = trim_pair(dsts[j].view(o, m), srcs[j].view(o, m))
                acts.append((reduce, (dst, src, dst)))
        return acts

def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _same_piece(a: "_Piece", b: "_Piece") -> bool:
    """True when two pieces are the same memory (the same start of the same buffer)."""
    if a.array is b.array:
        return a.start == b.start
    return a.array.base is b.array.base and a.array.dtype == b.array.dtype and \
        _addr(a.array) + a.start * a.array.itemsize == _addr(b.array) + b.start * b.array.itemsize


def drive(runners: list, doorbell: Doorbell, deadline: float, what: str, rank: int,
          check: Callable[[], None] = lambda: None) -> None:
    """Run ``runners`` to completion; raise CollectiveTimeout at ``deadline`` (monotonic).

    ``check()`` runs whenever no runner can progress (at least every 50 ms while waiting) and
    raises to stop the call: Aborted after ``abort()``, PeerLostError once a peer is lost.
    """
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
        check()
        if not doorbell.wait(seen, min(deadline, time.monotonic() + 0.05)):
            check()
            if time.monotonic() >= deadline:
                waits = "; ".join(r.describe() for r in active)
                raise CollectiveTimeout(f"rank {rank}: {what} timed out: {waits}")
