"""One rank's plan of a program: what every executor (and the simulator) runs.

A :class:`RankPlan` binds an IR program to this rank, a geometry (how a call's blocks are cut
into chunks and slices) and the capabilities of the connectors it got, once: the pieces of
every step (buffer, first element, valid length, per chunk it touches), each step's mode per
path (:class:`StepMode`: through the slots, a descriptor the peer reads, every later slice in
one descriptor, written into the peer, a local copy of every slice at once), and the
single-copy facts a runner needs (which receives offer their destination, which sends wait
for that answer). Nothing in it depends on a call's arrays: the executor binds them
(:mod:`pyxccl.runtime.host.executor`), so a repeated call reuses its plan.

The tables of which steps *may* go direct are an IR pass (:mod:`pyxccl.ir.passes.direct`);
the plan intersects them with what the connectors *can* do (their smallest worthwhile
descriptor, ``remote_min_bytes``: 0 where they cannot). This module keeps the one cache of
derived tables: the pass's tables per (program, rank, aliasing), the plans, and the
connectors each rank's part needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..ir.passes import direct
from ..ir.program import Buf, Op, Program, ThreadBlock

ConnKey = tuple[int, int, str]  # (peer, channel, "send" | "recv")


class StepMode(IntEnum):
    """How a step moves its bytes on one path (:mod:`pyxccl.runtime.host.path_choice`)."""

    SLOTS = 0
    """copied into (or out of) the connector's slots"""
    READ_PEER = 1
    """a descriptor of this slice: the peer reads it from this rank's memory (single copy)"""
    READ_REST = 2
    """one descriptor of every slice still to come, read by the peer at once"""
    WRITE_PEER = 3
    """every slice written into the receiver's offered destination by this rank (the put path)"""


#: the paths, in the order of a step's ``modes`` (the path chooser's numbers)
SLOTS, DIRECT, MIXED, PUT = 0, 1, 2, 3
_NO_MODES = (StepMode.SLOTS,) * 4
#: the largest number of chunks one slot may carry by descriptor (regions that fit any slot)
MAX_DIRECT_CNT = 128


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

    def location(self, buf: Buf, c: int, layout: dict[Buf, list[tuple[int, int]]] | None = None) -> tuple[Buf, int, int]:
        """(buffer, start element, valid length) of chunk ``c`` of buffer ``buf``; ``layout``: per
        buffer, (offset, count) of every block when blocks differ in size (the v-collectives)."""
        if buf is Buf.SCRATCH:
            return buf, c * self.ce, self.ce
        block, cls = divmod(c, self.k)
        blocks = layout.get(buf) if layout else None
        start, count = blocks[block] if blocks is not None else (block * self.count, self.count)
        return buf, start + cls * self.ce, max(0, min(self.ce, count - cls * self.ce))


Location = tuple[Buf, int, int]


class StepPlan:
    """One step of a thread block: the IR step, where each chunk it reads and writes lies, and its
    mode on each path (slots, single copy, mixed, put)."""

    __slots__ = ("step", "srcs", "dsts", "modes")

    def __init__(self, step: Any, srcs: list[Location] | None, dsts: list[Location] | None,
                 modes: tuple[StepMode, ...] = _NO_MODES):
        self.step, self.srcs, self.dsts, self.modes = step, srcs, dsts, modes


@dataclass
class TBPlan:
    """One thread block of this rank: its steps and the single-copy facts of its connectors."""

    tb: ThreadBlock
    index: int
    steps: list[StepPlan]
    send_key: ConnKey | None
    recv_key: ConnKey | None
    rmin: int = 0
    """the send connector's smallest worthwhile descriptor (0: none are posted)"""
    rread: bool = False
    """whether receives may find descriptors (and read them straight from the peer)"""
    offers: tuple[bool, ...] | None = None
    """per step: a plain receive from a peer that only sends answers its wish to write here"""
    early: int = -1
    """the receive whose destination is offered when the call starts (-1: none)"""
    wants_offer: bool = False
    """a sender that only sends waits (briefly) for the receiver's offer before sending the rest"""
    at_once: tuple[bool, ...] | None = None
    """per step: a local copy that copies every slice at its first turn"""
    put_src: dict[int, int] | None = None
    """per put step: the step whose destination it writes from (the copy just before it)"""
    span_ok: tuple[bool, ...] = ()
    """per step: may a plain receive take every slice still to come at once"""


@dataclass
class RankPlan:
    """One rank's part of a program for one geometry and set of connector capabilities."""

    program: Program
    rank: int
    geo: Geometry
    tbs: list[TBPlan]
    """every thread block, in the program's order"""
    order: list[int]
    """the order runners are advanced in: those that talk to a peer first (a send posts before a
    thread block of local copies runs through all its slices: 2-rank all-to-all 16 MiB 4-6 % faster)"""
    nsteps: list[int]
    """steps per thread block"""
    sends_direct: bool = False
    """some step may send by descriptor (the path chooser measures such calls)"""
    mixed_differs: bool = False
    """the mixed path differs from both others (some descriptor stays and some goes)"""
    put_differs: bool = False
    """some step may write into its receiver on the put path"""
    waited: "set[tuple[int, int]] | None" = None
    """(thread block, step) pairs another thread block of this rank waits for (the device executor
    records an event after those; made at its first call, kept with the plan)"""

    def waited_steps(self) -> "set[tuple[int, int]]":
        if self.waited is None:
            self.waited = {(dtb, dstep) for tp in self.tbs for st in tp.tb.steps for dtb, dstep in st.deps
                           if dtb != tp.index}
        return self.waited


# ---------------------------------------------------------------------------- the one cache

_CACHE: dict[tuple, tuple[Program, Any]] = {}
_CACHE_SIZE = 512


def _cached(program: Program, key: tuple, make) -> Any:
    """``make()`` remembered under (program, key); an entry keeps its program alive, so the
    program's id in the key stays its own."""
    full = (id(program),) + key
    hit = _CACHE.get(full)
    if hit is not None and hit[0] is program:
        return hit[1]
    value = make()
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[full] = (program, value)
    return value


def tables(program: Program, rank: int, mode: str | None) -> direct.Tables:
    """The single-copy pass's tables of ``rank`` in a call aliased as ``mode`` (cached)."""
    return _cached(program, ("tables", rank, mode), lambda: direct.tables(program, rank, mode))


def needed(program: Program, rank: int) -> frozenset[ConnKey]:
    """The connectors ``rank``'s part of ``program`` uses (cached)."""
    def make() -> frozenset[ConnKey]:
        keys: set[ConnKey] = set()
        for tb in program.ranks[rank].tbs:
            if any(s.op.sends for s in tb.steps):
                keys.add((tb.send, tb.channel, "send"))
            if any(s.op.receives for s in tb.steps):
                keys.add((tb.recv, tb.channel, "recv"))
        return frozenset(keys)
    return _cached(program, ("needed", rank), make)


def geometry(program: Program, count: int, slot_bytes: int, itemsize: int) -> Geometry:
    """How calls of ``count`` elements per block cut their buffers (cached: every call asks)."""
    return _cached(program, ("geo", count, slot_bytes, itemsize),
                   lambda: Geometry.of(count, program.chunks_per_block, slot_bytes, program.max_cnt, itemsize))


def rank_plan(program: Program, rank: int, count: int, itemsize: int, slot_bytes: int,
              caps: tuple[tuple[int, int], ...], hint: str, mode: str | None,
              layout: dict[Buf, list[tuple[int, int]]] | None = None) -> RankPlan:
    """The plan of ``rank`` for blocks of ``count`` elements of ``itemsize`` bytes, slots of
    ``slot_bytes``, connectors that can take descriptors from ``caps[i]`` = (send minimum,
    receive minimum) bytes per thread block (0: they cannot), aliasing ``hint`` (by bounds) and
    ``mode`` (exact). Cached, except for v-collective ``layout``s (each call its own)."""
    make = lambda: _build(program, rank, count, itemsize, slot_bytes, caps, hint, mode, layout)  # noqa: E731
    if layout is not None:
        return make()
    return _cached(program, ("plan", rank, count, itemsize, slot_bytes, caps, hint, mode), make)


def _build(program: Program, rank: int, count: int, itemsize: int, slot_bytes: int,
           caps: tuple[tuple[int, int], ...], hint: str, mode: str | None,
           layout: dict[Buf, list[tuple[int, int]]] | None) -> RankPlan:
    geo = geometry(program, count, slot_bytes, itemsize)
    part = program.ranks[rank]
    loc = geo.location
    plan = RankPlan(program, rank, geo, [], [], [len(tb.steps) for tb in part.tbs])
    mixed_keeps = mixed_drops = False
    hinted = tables(program, rank, hint) if any(a or b for a, b in caps) else None
    exact = tables(program, rank, mode) if hinted is not None else None
    for index, tb in enumerate(part.tbs):
        steps = [StepPlan(st, [loc(st.srcbuf, st.srcoff + j, layout) for j in range(st.cnt)] if st.op.reads_src else None,
                          [loc(st.dstbuf, st.dstoff + j, layout) for j in range(st.cnt)] if st.op.writes_dst else None)
                 for st in tb.steps]
        sends = any(s.op.sends for s in tb.steps)
        recvs = any(s.op.receives for s in tb.steps)
        tp = TBPlan(tb, index, steps, (tb.send, tb.channel, "send") if sends else None,
                    (tb.recv, tb.channel, "recv") if recvs else None)
        plan.tbs.append(tp)
        rmin, rmin_in = caps[index]
        tp.rmin = rmin
        if hinted is None or exact is None or not (rmin or rmin_in):
            continue
        may_send, may_recv, cnt = hinted.any[index]
        biggest = cnt * geo.n * itemsize
        if may_send and rmin and biggest >= rmin and cnt <= MAX_DIRECT_CNT:
            span = exact.span[index]
            # per step: slots only, a descriptor of each slice, or also the rest of the call at once
            on = tuple(StepMode(d + (d and span[i])) for i, d in enumerate(exact.direct[index]))
            feeds = exact.feeds[index]  # the mixed path: no descriptor where the peer reduces what arrives
            mixed = tuple(StepMode.SLOTS if feeds[i] else d for i, d in enumerate(on))
            puts = exact.put[index]  # the put path: written into the receiver where the step may
            put = tuple(StepMode.WRITE_PEER if d == StepMode.READ_REST and puts[i] else d for i, d in enumerate(on))
            plan.sends_direct = plan.sends_direct or any(on)
            mixed_keeps = mixed_keeps or any(mixed)
            mixed_drops = mixed_drops or mixed != on
            plan.put_differs = plan.put_differs or put != on
            for i, sp in enumerate(steps):
                sp.modes = (StepMode.SLOTS, on[i], mixed[i], put[i])
            tp.wants_offer = StepMode.READ_REST in on and exact.only_sends
            if StepMode.WRITE_PEER in put:
                tp.put_src = {}
                for i, from_copy in enumerate(exact.put_from[index]):
                    if from_copy and all(a[2] == b[2] for a, b in zip(steps[i - 1].dsts or (), steps[i].srcs or ())):
                        tp.put_src[i] = i - 1
        # a plain receive reads descriptors even where this rank's aliasing says none come: a peer
        # whose call aliases otherwise may send the rest of the call at once (see direct.span_plan)
        tp.rread = (may_recv or any(st.op is Op.RECV for st in tb.steps)) and bool(rmin_in) and biggest >= rmin_in
        if tp.rread:
            if exact.only_sends_peer(tb.recv):
                tp.offers = tuple(st.op is Op.RECV for st in tb.steps)
            early = exact.early[index]
            tp.early = early.index(True) if True in early else -1
        tp.span_ok = exact.span_ok[index]
    if geo.niters > 1:  # local copies of every slice at their first turn
        copy_once = tables(program, rank, mode).copy_once
        for tp in plan.tbs:
            tp.at_once = copy_once[tp.index]
    plan.mixed_differs = mixed_keeps and mixed_drops
    plan.order = sorted(range(len(plan.tbs)), key=lambda i: plan.tbs[i].send_key is None and plan.tbs[i].recv_key is None)
    return plan
