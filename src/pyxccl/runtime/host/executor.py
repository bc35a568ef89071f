"""The host executor: runs one rank's plan of an IR program over transport connectors.

This is pyxccl's only hot loop on the CPU. Every thread block of the plan
(:class:`~pyxccl.runtime.plan.RankPlan`) becomes a runner; one thread interleaves all runners
(MSCCL runs thread blocks concurrently; here a runner that cannot progress yields to the
others), so several channels are in flight at once and a step never blocks halfway. When no
runner can progress the thread sleeps on its doorbell until a peer or a progress thread rings it.

Pipelining: every chunk is cut into slices of ``n`` elements (a slot holds ``cnt`` slices, one
per chunk a step moves); the whole thread-block program runs once per slice index, exactly
like MSCCL's loop over ``gridOffset``. Slice ``i`` of every chunk is independent of slice
``j``, so thread blocks may be at different iterations.

A :class:`HostCall` binds a plan to one call's arrays (the plan itself knows none: a repeated
call reuses it) and makes the runners. Each step runs in its mode on the call's path (the plan's
:class:`~pyxccl.runtime.plan.StepMode`): through the slots here, by single copy through the
runner's :class:`~pyxccl.runtime.host.single_copy.SingleCopy` strategy, or (a local copy of a
whole chunk) every slice at once.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

from ...errors import CollectiveTimeout, MismatchError
from ...ir.program import Buf, Op, Program, inplace_alias
from ...memory import host as hostmem
from ...transport.base import RecvConnector, SendConnector
from ...transport.doorbell import Doorbell
from .. import plan as plans
from ..kernels import Kernels, trim_pair
from ..plan import DIRECT, PUT, ConnKey, Geometry, RankPlan, TBPlan
from .single_copy import SingleCopy, SlicePut

__all__ = ["ConnKey", "Geometry", "HostCall", "Piece", "Runner", "TBRunner", "drive"]


class Runner(Protocol):
    """Something the executor drives: advance without blocking, report when done."""

    finished: bool

    def advance(self) -> bool:
        """Run as many steps as can run now; True if at least one ran."""

    def describe(self) -> str:
        """What the runner is waiting for (for timeout messages)."""


class Piece:
    """Where chunk ``c`` of one buffer lives in this call: array, start element, valid length."""

    __slots__ = ("array", "start", "valid")

    def __init__(self, array, start: int, valid: int):
        self.array, self.start, self.valid = array, start, valid

    def view(self, o: int, m: int):
        vl = min(m, self.valid - o)
        if vl <= 0:
            return self.array[:0]
        s = self.start + o
        return self.array[s:s + vl]


class HostCall:
    """One rank's part of one call: a program bound to this call's arrays, kernels and connectors."""

    def __init__(self, program: Program, rank: int, arrays: dict, count: int, kernels: Kernels,
                 slot_bytes: int, label: str = "", layout: dict[Buf, list[tuple[int, int]]] | None = None):
        """``count``: elements per block; ``layout``: per buffer, (offset, count) of each block when
        blocks differ in size (the v-collectives; ``count`` is then the largest, equal on every rank)."""
        self.program = program
        self.rank = rank
        self.kernels = kernels
        self.label = label or f"{program.collective}({program.name})"
        self.dtype = arrays[Buf.INPUT].dtype
        self.count, self.slot_bytes, self.layout = count, slot_bytes, layout
        self.geo = plans.geometry(program, count, slot_bytes, self.dtype.itemsize)
        part = program.ranks[rank]
        self.arrays = arrays
        if part.s_chunks:
            self.arrays = dict(arrays)
            self.arrays[Buf.SCRATCH] = hostmem.empty(part.s_chunks * self.geo.ce, self.dtype)
        self.done = [0] * len(part.tbs)
        self.nsteps: list[int] = []  # steps per thread block (the plan's, once the runners are made)
        self.plan: RankPlan | None = None
        self._addrs: dict[int, int] = {}
        self.path = DIRECT  # this call's path for the steps that may go direct (:mod:`.path_choice`)

    @property
    def sends_direct(self) -> bool:
        """Some step of this call may send by descriptor (known once the runners are made)."""
        return self.plan is not None and self.plan.sends_direct

    @property
    def mixed_differs(self) -> bool:
        """The mixed path differs from both others in this call: only then is it a candidate."""
        return self.plan is not None and self.plan.mixed_differs

    @property
    def put_differs(self) -> bool:
        """Some step of this call may write into its receiver on the put path."""
        return self.plan is not None and self.plan.put_differs

    def addr_of(self, array) -> int:
        """The address of ``array``'s first element (memoized: the call's arrays live as long as it)."""
        a = self._addrs.get(id(array))
        if a is None:
            a = self._addrs[id(array)] = hostmem.address(array)
        return a

    def needed(self) -> frozenset[ConnKey]:
        """The connectors this rank's part uses."""
        return plans.needed(self.program, self.rank)

    def alias_hint(self) -> str:
        """"inplace" when input and output may overlap (bounds only: cheap), else "oop"."""
        return "inplace" if hostmem.may_overlap(self.arrays.get(Buf.INPUT), self.arrays.get(Buf.OUTPUT)) else "oop"

    def alias_mode(self, hint: str) -> str | None:
        """How input and output overlap: "oop" (not at all), "inplace" (as the collective's in-place
        call defines), None (otherwise: no single copy)."""
        arrays = self.arrays
        ai, ao = arrays.get(Buf.INPUT), arrays.get(Buf.OUTPUT)
        if not all(hostmem.contiguous(a) for a in arrays.values() if a is not None):
            return None
        if hint == "oop" or not ai.nbytes or not ao.nbytes:  # type: ignore[union-attr]
            return "oop"
        p, g = self.program, self.geo
        small, big, off = inplace_alias(p.collective, p.nranks, p.chunks_per_block, self.rank)
        delta = (g.location(big, off, self.layout)[1] - g.location(small, 0, self.layout)[1]) * self.dtype.itemsize
        if self.addr_of(arrays[small]) - self.addr_of(arrays[big]) == delta:
            return "inplace"
        return None

    def bind(self, locations) -> list[Piece] | None:
        """A step's chunk locations as pieces of this call's arrays."""
        if locations is None:
            return None
        arrays = self.arrays
        return [Piece(arrays[b], start, valid) for b, start, valid in locations]

    def runners(self, conns: dict[ConnKey, object]) -> list["TBRunner"]:
        """One runner per thread block (none when the call moves no data), in the plan's order."""
        if self.geo.niters == 0:
            return []
        part = self.program.ranks[self.rank]
        ends = [(conns.get((tb.send, tb.channel, "send")), conns.get((tb.recv, tb.channel, "recv"))) for tb in part.tbs]
        caps = tuple((s.remote_min_bytes if s is not None else 0,  # type: ignore[attr-defined]
                      r.remote_min_bytes if r is not None and r.remote_read else 0) for s, r in ends)  # type: ignore[attr-defined]
        direct = any(a or b for a, b in caps)
        hint = self.alias_hint() if direct or self.geo.niters > 1 else "-"
        mode = self.alias_mode(hint) if hint != "-" else "-"
        self.plan = plans.rank_plan(self.program, self.rank, self.count, self.dtype.itemsize, self.slot_bytes,
                                    caps, hint if direct else "-", mode, self.layout)
        self.nsteps = self.plan.nsteps
        return [TBRunner(self, self.plan.tbs[i], *ends[i]) for i in self.plan.order]  # type: ignore[arg-type]

    def reset(self, runners: list["TBRunner"]) -> None:
        """Make this call and its ``runners`` ready to run again over the same arrays (a repeated call)."""
        self.done = [0] * len(self.done)
        for r in runners:
            r.reset()


class TBRunner:
    """Runs one thread block of a plan: every step, once per slice iteration."""

    def __init__(self, call: HostCall, tp: TBPlan, send: SendConnector | None, recv: RecvConnector | None):
        self.call, self.tb, self.sendc, self.recvc, self.index = call, tp.tb, send, recv, tp.index
        self.it = 0
        self.s = 0
        self.finished = not tp.steps
        bind = call.bind
        self._steps = []
        for sp in tp.steps:
            st = sp.step
            src_p, dst_p = bind(sp.srcs), bind(sp.dsts)
            # a COPY whose source and destination are the same memory (in place) is skipped;
            # decided once here, since a call's arrays never change
            same = tuple(hostmem.same_memory(a.array, b.array, a.start, b.start)
                         for a, b in zip(src_p, dst_p)) if st.op is Op.COPY else None  # type: ignore[arg-type]
            self._steps.append((st, src_p, dst_p, sp.modes, same))
        # per step, once it moved every later slice at once: True (nothing left to do), or how each
        # later slice is finished at its turn (single copy: a staged buffer or a put)
        self._spanned: list | None = None
        self._memo: dict[tuple, list] | None = None
        # local copies that do every slice at their first turn (on the put path, not those a put writes from)
        self._at_once = tp.at_once
        self._put_from = tp.put_src or {}
        self.single = SingleCopy(self, tp) if tp.rmin or tp.rread else None

    def reset(self) -> None:
        """Back to the first step of the first slice (the call repeats over the same arrays)."""
        if self._memo is None and self.call.geo.niters == 1:
            self._memo = {}  # repeated: keep each step's kernel calls per slot (see _execute)
        self.it = self.s = 0
        self.finished = not self.tb.steps
        self._spanned = None
        if self.single is not None:
            self.single.reset()

    def span_done(self, how) -> None:
        """The current step moved every later slice of this call now: nothing is left to do for
        them (True), or ``how`` finishes each at its turn (single copy's staged buffer or put)."""
        if self._spanned is None:
            self._spanned = [False] * len(self._steps)
        self._spanned[self.s] = how

    def describe(self) -> str:
        call = self.call
        if self.finished:
            return f"tb {self.tb.id} done"
        if self.it == call.geo.niters:
            return self.single.describe_wait() if self.single is not None else f"tb {self.tb.id} done"
        st = self.tb.steps[self.s]
        why = []
        for dtb, dstep in st.deps:
            if call.done[dtb] < self.it * call.nsteps[dtb] + dstep + 1:
                why.append(f"tb {dtb} step {dstep}")
        if st.op.receives and not self.recvc.ready():  # type: ignore[union-attr]
            why.append(f"data from rank {self.tb.recv}")
        if st.op.sends and not self.sendc.ready():  # type: ignore[union-attr]
            why.append(f"a free slot towards rank {self.tb.send}")
        return (f"tb {self.tb.id} (channel {self.tb.channel}) step {self.s} '{st.op.value}' "
                f"slice {self.it + 1}/{call.geo.niters} waits for {' and '.join(why) or 'nothing'}")

    def advance(self) -> bool:
        call = self.call
        done = call.done
        nsteps = call.nsteps
        niters = call.geo.niters
        tbid = self.tb.id
        sc = self.single
        progressed = False
        if sc is not None and sc.early_due:  # the call starts: tell the sender where the early receive's bytes go
            sc.offer_early()
        while not self.finished:
            if self.it == niters:  # every step ran; the peers still read or write through descriptors
                if sc is not None and not sc.drained():
                    return progressed
                self.finished = True
                return True
            st, srcs, dsts, modes, same = self._steps[self.s]
            mode = modes[call.path]
            # a step waits for its dependencies even once it moved every slice (spanned): the steps
            # after it in this thread block are ordered after them through it
            for dtb, dstep in st.deps:
                if done[dtb] < self.it * nsteps[dtb] + dstep + 1:
                    return progressed
            spanned = self._spanned[self.s] if self._spanned is not None else False
            if spanned is not True:
                op = st.op
                if spanned:
                    sc.finish_slice(spanned, st.cnt, dsts)  # type: ignore[union-attr]
                else:
                    if op.receives and not self.recvc.ready():  # type: ignore[union-attr]
                        if sc is not None and sc.offers is not None and sc.offers[self.s]:
                            sc.offer(dsts, self.s, self.it)
                        return progressed
                    if op.sends and not self.sendc.ready():  # type: ignore[union-attr]
                        return progressed
                    if mode >= 2 and sc.awaits_offer(mode):  # type: ignore[union-attr]
                        return progressed
                    self._execute(op, st.cnt, srcs, dsts, mode, same)
            progressed = True
            done[tbid] += 1
            self.s += 1
            if self.s == len(self._steps):
                self.s = 0
                self.it += 1
                if self.it == niters and (sc is None or not sc.pending()):
                    self.finished = True
        return progressed

    def _execute(self, op: Op, cnt: int, srcs, dsts, mode: int = 0, same: tuple | None = None) -> None:
        call = self.call
        g = call.geo
        o = self.it * g.n
        m = min(g.n, g.ce - o)
        nbytes = cnt * m * call.dtype.itemsize
        sc = self.single
        if sc is not None and (mode or sc.rread) and sc.execute(op, cnt, srcs, dsts, mode, o, m, nbytes):
            return
        if self._at_once is not None and self._at_once[self.s] and not (call.path == PUT and self.s + 1 in self._put_from):
            # only local copies go at once (a whole block whose destination nobody reads again soon)
            for _, (dst, src) in self._actions(op, cnt, srcs, dsts, same, o, g.ce - o, 0):
                call.kernels.bulk_copy(dst, src)
            self.span_done(True)  # the step is skipped for the later slices
            return
        key = acts = None
        memo = self._memo
        if memo is not None:  # a repeated one-slice call: the same views every time a slot comes round
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
        call = self.call
        reduce, copy = call.kernels.reduce, call.kernels.copy
        rv = sv = None
        if op.receives:
            raw = self.recvc.buffer()  # type: ignore[union-attr]
            if raw.size != nbytes:
                raise MismatchError(
                    f"{call.label}: rank {self.tb.recv} sent {raw.size} bytes where rank {call.rank} expects "
                    f"{nbytes} (channel {self.tb.channel}, slice {self.it + 1}); do the ranks agree on count and dtype?")
            rv = raw.view(call.dtype)
        if op.sends:
            sv = self.sendc.buffer()[:nbytes].view(call.dtype)  # type: ignore[union-attr]
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
