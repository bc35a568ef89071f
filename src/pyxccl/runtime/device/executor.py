"""The device executor: lowers one rank's plan of an IR program onto CUDA streams.

The same :class:`~pyxccl.runtime.plan.RankPlan` the host executor runs, bound to device
memory: every thread block gets a stream, every step of every slice becomes stream operations,
and the host only enqueues (it never waits for the device), so a call returns as soon as its
work is queued, ordered after the caller's stream and before its later work (NCCL's semantics):

- a receive of slot ``k``: ``wait_value(ready, k + 1)``, then consume the slot, then
  ``write_value(released, k + 1)`` (the sender may refill it);
- a send of slot ``k``: ``wait_value(released, k - nslots + 1)`` (the slot is free), fill it in
  the receiver's memory, then ``write_value(ready, k + 1)``;
- copies are copy-engine copies (``copy``: no kernel, no SM); reductions are kernels that read
  the slot and the local chunk and write the result where it goes (the peer's slot for a
  recv-reduce-send: fused, one pass);
- a dependency on another thread block's step is an event recorded after that step and waited
  for by this block's stream.

Connectors are stream-ordered (:mod:`pyxccl.transport.cuda_ipc`): their flags are words in
device memory; every call counts its slots from 0 and ends with a handshake that resets the
words (:meth:`_Runner.close`), so the values a call waits for and writes are the same every time
it runs: a call captured in a CUDA graph replays correctly. The host enqueues the thread blocks round
robin, one slice iteration each per round, so no stream's queue runs far ahead of the others.
"""

from __future__ import annotations

from typing import Any

from ...errors import PyxcclError
from ...ir.program import Buf, Op, Program
from .. import plan as plans
from ..plan import DIRECT, ConnKey, RankPlan, StepMode, TBPlan
from . import direct
from .resources import DeviceResources


class DeviceCall:
    """One rank's part of one call on a device: a plan bound to device addresses, kernels, connectors."""

    def __init__(self, program: Program, rank: int, arrays: dict, count: int, itemsize: int, kernels: Any,
                 res: DeviceResources, slot_bytes: int, label: str = "",
                 layout: dict[Buf, list[tuple[int, int]]] | None = None, single_copy: bool = False,
                 windows: Any = None, unregistered: bool = True, internal: frozenset = frozenset()):
        """``arrays``: per buffer, (address, elements) of this call's device memory (the scratch
        buffer is added here); ``count``: elements per block; ``layout`` as the host's;
        ``single_copy``: receivers may read this call's sends from the senders' buffers
        (:mod:`.direct`; every rank must pass the same, and then run :meth:`exchange`): buffers in
        ``windows`` (registered), and others too when ``unregistered`` (``internal``: the
        buffers of ``arrays`` that are pyxccl's own)."""
        self.program, self.rank, self.kernels, self.res = program, rank, kernels, res
        self.device = res.device
        self.label = label or f"{program.collective}({program.name})"
        self.itemsize = itemsize
        self.count, self.slot_bytes = count, slot_bytes
        self.geo = plans.geometry(program, count, slot_bytes, itemsize)
        self.addrs = {b: a for b, (a, _) in arrays.items()}
        part = program.ranks[rank]
        sizes = {b: n * itemsize for b, (_, n) in arrays.items()}
        if part.s_chunks and self.geo.niters:
            sizes[Buf.SCRATCH] = part.s_chunks * self.geo.ce * itemsize
            self.addrs[Buf.SCRATCH] = res.space("scratch", sizes[Buf.SCRATCH])
        self.windows = windows
        self.described: bytes | None = None
        """single copy: what this rank tells the ranks it sends to (None: slots only)"""
        self.send_direct = False
        """this rank's sends that may go by single copy do"""
        self.recv_direct: dict[ConnKey, list] = {}
        """per receiving connector: the sender's sends of one slice iteration (by single copy?, from where)"""
        self.peer_addrs: dict[int, dict] = {}
        hint, mode = "-", None
        if single_copy and layout is None and self.geo.niters:
            hint, mode = direct.aliasing(program, rank, self.geo, arrays, itemsize)
            self.described, self.send_direct = direct.describe(self.device, self.addrs, sizes, hint, mode, windows,
                                                               unregistered, internal | {Buf.SCRATCH})
            if not self.send_direct:
                hint, mode = "-", None
        self.plan: RankPlan = plans.rank_plan(program, rank, count, itemsize, slot_bytes,
                                              direct.caps(program, rank, self.send_direct), hint, mode, layout)

    def exchange(self, swap: Any) -> None:
        """Single copy: tell the ranks this rank sends to where its buffers are and learn where the
        ranks it receives from keep theirs; ``swap(data, send_to, recv_from)`` -> {peer: data}."""
        if self.described is None:
            return
        needed = self.needed()
        send_to = sorted({p for p, _, d in needed if d == "send"})
        recv_from = sorted({p for p, _, d in needed if d == "recv"})
        got = swap(self.described, send_to, recv_from)
        for key in needed:
            peer, ch, d = key
            if d != "recv":
                continue
            bufs = direct.PeerBuffers(self.device, got[peer], peer, self.windows)
            if not bufs.ok:
                continue
            seq = direct.send_sequence(self.program, peer, self.rank, ch, self.count, self.itemsize,
                                       self.slot_bytes, bufs)
            if any(dr for dr, _ in seq):
                self.recv_direct[key] = seq
                self.peer_addrs[peer] = bufs.addrs

    def needed(self) -> frozenset[ConnKey]:
        return plans.needed(self.program, self.rank)

    def enqueue(self, conns: dict, streams: list[Any], after: list[Any]) -> list[Any]:
        """Enqueue every step on ``streams`` (one per thread block), each first waiting for the
        events ``after``; the events that end each stream's part (recorded here)."""
        plan, dev, res = self.plan, self.device, self.res
        if self.geo.niters == 0:
            return []
        for s in streams:
            for ev in after:
                dev.wait_event(s, ev)
        depended = plan.waited_steps()
        recorded: dict[tuple[int, int, int], Any] = {}
        used: list[Any] = []
        done = [0] * len(plan.tbs)
        runners = [_Runner(self, tp, streams[tp.index], conns, depended, recorded, used, done) for tp in plan.tbs]
        for r in runners:  # every call counts its slots from 0 (see _close)
            for c in (r.sendc, r.recvc):
                if c is not None:
                    c.head = c.tail = 0
        active = [r for r in runners if not r.finished]
        while active:
            progressed = False
            for r in active:
                progressed = r.advance() or progressed
            active = [r for r in active if not r.finished]
            if active and not progressed:
                raise PyxcclError(f"{self.label}: the program's thread blocks wait on each other "
                                  f"({'; '.join(r.describe() for r in active)})")
        for r in runners:
            r.close()
        ends = []
        for s in streams:
            ev = res.event()
            dev.record(ev, s)
            ends.append(ev)
        res.give_back(used)
        return ends


class _Runner:
    """Enqueues one thread block's steps, one slice iteration per :meth:`advance`."""

    def __init__(self, call: DeviceCall, tp: TBPlan, stream: Any, conns: dict, depended: set,
                 recorded: dict, used: list, done: list[int]):
        self.call, self.tp, self.stream = call, tp, stream
        self.sendc = conns.get(tp.send_key) if tp.send_key is not None else None
        self.recvc = conns.get(tp.recv_key) if tp.recv_key is not None else None
        self.depended, self.recorded, self.used, self.done = depended, recorded, used, done
        self.nsteps = call.plan.nsteps
        self.it = self.s = 0
        self.finished = not tp.steps

    def describe(self) -> str:
        return f"tb {self.tp.tb.id} step {self.s} slice {self.it + 1}"

    def close(self) -> None:
        """End the call on this thread block's connectors, so the next call (or the next replay of a
        captured graph) counts from 0 again: the receiver resets the ready word (nobody writes it
        before the next call) and then writes released = received + 1, one past any slot's release;
        the sender waits for that mark (every slot consumed, the ready word reset) and resets the
        released word. The words thus start every call at 0 whatever the last one did."""
        dev, stream, rc, sc = self.call.device, self.stream, self.recvc, self.sendc
        if rc is not None:
            dev.write_value(rc.ready_word, 0, stream)
            dev.write_value(rc.released_word, rc.tail + 1, stream)
        if sc is not None:
            dev.wait_value(sc.released_word, sc.head + 1, stream)
            dev.write_value(sc.released_word, 0, stream)

    def advance(self) -> bool:
        call, tp, dev, stream = self.call, self.tp, self.call.device, self.stream
        steps, done, index = tp.steps, self.done, tp.index
        progressed = False
        start_it = self.it
        while not self.finished and self.it == start_it:
            sp = steps[self.s]
            st = sp.step
            for dtb, dstep in st.deps:
                if done[dtb] < self.it * self.nsteps[dtb] + dstep + 1:
                    return progressed
            for dtb, dstep in st.deps:
                if dtb != index:
                    dev.wait_event(stream, self.recorded[(dtb, self.it, dstep)])
            self._emit(sp)
            if (index, self.s) in self.depended:
                ev = call.res.event()
                dev.record(ev, stream)
                self.recorded[(index, self.it, self.s)] = ev
                self.used.append(ev)
            done[index] += 1
            progressed = True
            self.s += 1
            if self.s == len(steps):
                self.s = 0
                self.it += 1
                if self.it == call.geo.niters:
                    self.finished = True
        return progressed

    def _piece(self, loc: tuple, o: int, m: int, addrs: "dict | None" = None) -> tuple[int, int]:
        """(address, elements) of slice ``o .. o+m`` of the chunk at ``loc`` (its valid part), in this
        rank's buffers or in ``addrs`` (a sender's, mapped here)."""
        buf, start, valid = loc
        n = min(m, valid - o)
        if n <= 0:
            return 0, 0
        return (addrs or self.call.addrs)[buf] + (start + o) * self.call.itemsize, n

    def _emit(self, sp: Any) -> None:
        """One step of the current slice iteration, as stream operations (see the module docstring)."""
        call, dev, stream = self.call, self.call.device, self.stream
        st, srcs, dsts = sp.step, sp.srcs, sp.dsts
        g, isz, k = call.geo, call.itemsize, call.kernels
        o = self.it * g.n
        m = min(g.n, g.ce - o)
        op = st.op
        rc, sc = self.recvc, self.sendc
        peer_locs = None  # the sender's chunk locations when this receive reads its memory
        rslot = sslot = 0
        if op.receives:
            dev.wait_value(rc.ready_word, rc.tail + 1, stream)
            seq = call.recv_direct.get(self.tp.recv_key)
            if seq is not None:
                by_copy, locs = seq[rc.tail % len(seq)]
                if by_copy:
                    peer_locs, peer_addrs = locs, call.peer_addrs[rc.peer]
            rslot = rc.slot(rc.tail)
        # a send the receiver reads itself moves nothing here: the bytes stay where they are
        send_slots = op.sends and not (call.send_direct and sp.modes[DIRECT] != StepMode.SLOTS)
        if send_slots:
            if sc.head >= sc.nslots:
                dev.wait_value(sc.released_word, sc.head - sc.nslots + 1, stream)
            sslot = sc.slot(sc.head)

        def received(j: int) -> tuple[int, int]:
            """(address, elements available) of chunk ``j`` of what arrived."""
            if peer_locs is not None:
                return self._piece(peer_locs[j], o, m, peer_addrs)
            return rslot + j * m * isz, m

        for j in range(st.cnt):
            lo = j * m * isz
            if op is Op.SEND:
                if send_slots:
                    a, n = self._piece(srcs[j], o, m)
                    _copy(dev, sslot + lo, a, n * isz, stream)
            elif op is Op.RECV:
                d, nd = self._piece(dsts[j], o, m)
                r, nr = received(j)
                _copy(dev, d, r, min(nd, nr) * isz, stream)
            elif op is Op.RECV_COPY_SEND:
                d, nd = self._piece(dsts[j], o, m)
                r, nr = received(j)
                _copy(dev, d, r, min(nd, nr) * isz, stream)
                if send_slots:
                    _copy(dev, sslot + lo, r, nr * isz, stream)
            elif op is Op.RECV_REDUCE_SEND:
                a, n = self._piece(srcs[j], o, m)
                r, nr = received(j)
                if min(n, nr):
                    k.reduce(sslot + lo, r, a, min(n, nr), stream)
            elif op is Op.RECV_REDUCE_COPY or op is Op.RECV_REDUCE_COPY_SEND:
                d, nd = self._piece(dsts[j], o, m)
                s_, ns = self._piece(srcs[j], o, m)
                r, nr = received(j)
                n = min(nd, ns, nr)
                if n:
                    k.reduce(d, r, s_, n, stream)
                    if op is Op.RECV_REDUCE_COPY_SEND and send_slots:
                        _copy(dev, sslot + lo, d, n * isz, stream)
            elif op is Op.COPY:
                d, nd = self._piece(dsts[j], o, m)
                s_, ns = self._piece(srcs[j], o, m)
                if d != s_:
                    _copy(dev, d, s_, min(nd, ns) * isz, stream)
            elif op is Op.REDUCE:
                d, nd = self._piece(dsts[j], o, m)
                s_, ns = self._piece(srcs[j], o, m)
                n = min(nd, ns)
                if n:
                    k.reduce(d, d, s_, n, stream)
            elif op is not Op.NOP:  # pragma: no cover - the IR has no other op
                raise PyxcclError(f"{call.label}: the device executor cannot run step {op}")
        if op.receives:
            rc.tail += 1
            dev.write_value(rc.released_word, rc.tail, stream)
        if op.sends:
            sc.head += 1
            dev.write_value(sc.ready_word, sc.head, stream)


def _copy(dev: Any, dst: int, src: int, nbytes: int, stream: Any) -> None:
    if nbytes > 0 and dst != src:
        dev.copy(dst, src, nbytes, stream)
