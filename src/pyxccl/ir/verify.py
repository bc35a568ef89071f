"""The symbolic verifier: proves that a :class:`Program` implements its collective.

Every chunk location (rank, buffer, index) holds a symbolic value, the multiset of
contributions (origin rank, input chunk index) it is the reduction of; rank ``r``'s
input chunk ``c`` starts as ``{(r, c)}``, everything else as unset. The program runs
under MSCCL's semantics: thread blocks run concurrently, a step runs atomically once
its dependencies have completed, a message is waiting if it receives and its FIFO has
room if it sends; connections are FIFOs per (sender, receiver, channel) holding at
most ``nslots`` messages. Memory of a rank is shared by its thread blocks, so the
verifier also tracks happens-before (vector clocks over program order, dependencies
and send→receive) and reports any two unordered accesses to one chunk, one of them a
write (a data race: the outcome would depend on the schedule). Without races the run
is a bounded Kahn process network, so one deterministic schedule decides for all:
either it deadlocks (reported with what each blocked thread block waits for) or it
completes and the result is compared with the collective's definition.

Also checked: every message is received with the same ``cnt``; no message is left
over; out-of-place programs never write the input; values written into the input or
output keep their chunk class (``index % k``, see :mod:`.program`).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument, VerificationError
from .program import Buf, Op, Program, Step, blocks, inplace_alias

#: collectives with a root rank
ROOTED = frozenset({"broadcast", "reduce", "gather", "scatter"})

Contrib = tuple[int, int]
_BUFNAME = {Buf.INPUT: "input", Buf.OUTPUT: "output", Buf.SCRATCH: "scratch"}


class _Uninit:
    """A value read from a location nothing had written; remembers where."""

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where


Value = tuple[Contrib, ...] | _Uninit
Loc = tuple[int, Buf, int]


@dataclass
class _Msg:
    values: list[Value]
    cnt: int
    vc: tuple[int, ...]
    who: str


def _fmt(v: Value, limit: int = 8) -> str:
    if isinstance(v, _Uninit):
        return f"<uninitialised: {v.where}>"
    items = [f"{o}:{c}" + (f"x{m}" if m > 1 else "") for (o, c), m in sorted(Counter(v).items())]
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return "{" + ", ".join(items[:limit]) + more + "}"


class _Run:
    """One symbolic execution of a program in one mode."""

    def __init__(self, program: Program, inplace: bool, nslots: int) -> None:
        self.p = program
        self.inplace = inplace
        self.nslots = nslots
        self.n = program.nranks
        self.k = program.chunks_per_block
        self.union = program.collective == "barrier"
        self.alias = [inplace_alias(program.collective, self.n, self.k, r) for r in range(self.n)]
        # thread blocks, globally numbered
        self.tbs = [(rp.rank, tb) for rp in program.ranks for tb in sorted(rp.tbs, key=lambda t: t.id)]
        self.g = {(r, tb.id): i for i, (r, tb) in enumerate(self.tbs)}
        G = len(self.tbs)
        self.pc = [0] * G
        self.clock = [np.zeros(G, dtype=np.int64) for _ in range(G)]
        self.dep_targets = {(self.g[(r, d[0])], d[1]) for r, tb in self.tbs for st in tb.steps for d in st.deps}
        self.step_vc: dict[tuple[int, int], list[int]] = {}
        self.fifos: dict[tuple[int, int, int], deque[_Msg]] = {}
        self.mem: dict[Loc, Value] = {}
        self.wr: dict[Loc, tuple[int, int, str]] = {}
        self.rd: dict[Loc, dict[int, tuple[int, str]]] = {}
        nat_in = blocks(program.collective, self.n)[0] * self.k
        for r in range(self.n):
            for c in range(nat_in):
                self.mem[self.canon(r, Buf.INPUT, c)] = ((r, c),)

    # -- locations ----------------------------------------------------------------
    def canon(self, r: int, buf: Buf, idx: int) -> Loc:
        if self.inplace:
            small, big, off = self.alias[r]
            if buf is small:
                return (r, big, off + idx)
        return (r, buf, idx)

    def where(self, r: int, buf: Buf, idx: int) -> str:
        s = f"rank {r} {_BUFNAME[buf]} chunk {idx}"
        if not self.inplace:
            return s
        small, big, off = self.alias[r]
        nsmall = blocks(self.p.collective, self.n)[0 if small is Buf.INPUT else 1] * self.k
        if buf is small:
            return f"{s} (in place: {_BUFNAME[big]} chunk {off + idx})"
        if buf is big and off <= idx < off + nsmall:
            return f"{s} (in place: {_BUFNAME[small]} chunk {idx - off})"
        return s

    @staticmethod
    def who(r: int, tbid: int, i: int, st: Step) -> str:
        return f"rank {r} tb {tbid} step {i} ({st.op.value})"

    # -- memory with race detection -----------------------------------------------
    def read(self, r: int, buf: Buf, idx: int, g: int, vc: list[int], who: str) -> Value:
        loc = self.canon(r, buf, idx)
        w = self.wr.get(loc)
        if w is not None and vc[w[0]] < w[1]:
            raise VerificationError(
                f"data race on {self.where(r, buf, idx)}: {who} reads it, unordered with {w[2]} "
                "which writes it; add a dependency")
        self.rd.setdefault(loc, {})[g] = (vc[g], who)
        v = self.mem.get(loc)
        if v is None:
            v = self.mem[loc] = _Uninit(f"{self.where(r, buf, idx)} read by {who} before anything wrote it")
        return v

    def write(self, r: int, buf: Buf, idx: int, value: Value, g: int, vc: list[int], who: str) -> None:
        loc = self.canon(r, buf, idx)
        if not self.inplace and loc[1] is Buf.INPUT:
            raise VerificationError(
                f"{who} writes {self.where(r, buf, idx)} in out-of-place mode: "
                "out-of-place programs must leave the input untouched")
        if loc[1] is not Buf.SCRATCH and not isinstance(value, _Uninit):
            bad = [c for c in value if c[1] % self.k != loc[2] % self.k]
            if bad:
                raise VerificationError(
                    f"{who} writes {self.where(r, buf, idx)} (chunk class {loc[2] % self.k} of k={self.k}) "
                    f"a value from rank {bad[0][0]} chunk {bad[0][1]} (class {bad[0][1] % self.k}): "
                    "moves data between chunk classes; wrong for counts not divisible by k")
        w = self.wr.get(loc)
        if w is not None and vc[w[0]] < w[1]:
            raise VerificationError(
                f"data race on {self.where(r, buf, idx)}: {who} writes it, unordered with {w[2]} "
                "which writes it too; add a dependency")
        for rg, (epoch, rwho) in self.rd.get(loc, {}).items():
            if vc[rg] < epoch:
                raise VerificationError(
                    f"data race on {self.where(r, buf, idx)}: {who} writes it, unordered with {rwho} "
                    "which reads it; add a dependency")
        self.rd.pop(loc, None)
        self.wr[loc] = (g, vc[g], who)
        self.mem[loc] = value

    def combine(self, a: Value, b: Value) -> Value:
        if isinstance(a, _Uninit):
            return a
        if isinstance(b, _Uninit):
            return b
        if self.union:
            return tuple(sorted(set(a) | set(b)))
        return tuple(sorted(a + b))

    # -- scheduling -----------------------------------------------------------------
    def blocked(self, g: int) -> list[str]:
        """What step pc[g] of thread block g waits for (empty: it can run)."""
        r, tb = self.tbs[g]
        st = tb.steps[self.pc[g]]
        why = []
        for dtb, dstep in st.deps:
            if self.pc[self.g[(r, dtb)]] <= dstep:
                why.append(f"dependency (tb {dtb}, step {dstep})")
        if st.op.receives and not self.fifos.get((tb.recv, r, tb.channel)):
            why.append(f"a message from rank {tb.recv} on channel {tb.channel}")
        if st.op.sends and len(self.fifos.get((r, tb.send, tb.channel), ())) >= self.nslots:
            why.append(f"room towards rank {tb.send} on channel {tb.channel} "
                       f"({self.nslots} message(s) in flight)")
        return why

    def step(self, g: int) -> None:
        r, tb = self.tbs[g]
        i = self.pc[g]
        st = tb.steps[i]
        who = self.who(r, tb.id, i, st)
        vc = self.clock[g].copy()
        for dtb, dstep in st.deps:
            dvc = self.step_vc[(self.g[(r, dtb)], dstep)]
            np.maximum(vc, dvc, out=vc)
        msg = None
        if st.op.receives:
            msg = self.fifos[(tb.recv, r, tb.channel)].popleft()
            if msg.cnt != st.cnt:
                raise VerificationError(
                    f"cnt mismatch: {who} receives cnt={st.cnt} but the message from {msg.who} carries cnt={msg.cnt}")
            np.maximum(vc, msg.vc, out=vc)
        vc[g] += 1
        cnt = st.cnt if st.op is not Op.NOP else 0
        src = [self.read(r, st.srcbuf, st.srcoff + j, g, vc, who) for j in range(cnt)] if st.op.reads_src else []
        op, out, store = st.op, None, None
        if op is Op.SEND:
            out = src
        elif op in (Op.RECV, Op.RECV_COPY_SEND):
            store = out = msg.values  # type: ignore[union-attr]
        elif op in (Op.RECV_REDUCE_SEND, Op.RECV_REDUCE_COPY, Op.RECV_REDUCE_COPY_SEND):
            store = out = [self.combine(a, b) for a, b in zip(msg.values, src)]  # type: ignore[union-attr]
        elif op is Op.COPY:
            store = src
        elif op is Op.REDUCE:
            dst = [self.read(r, st.dstbuf, st.dstoff + j, g, vc, who) for j in range(cnt)]
            store = [self.combine(a, b) for a, b in zip(dst, src)]
        if store is not None and op.writes_dst:
            for j, v in enumerate(store):
                self.write(r, st.dstbuf, st.dstoff + j, v, g, vc, who)  # type: ignore[arg-type]
        if op.sends:
            self.fifos.setdefault((r, tb.send, tb.channel), deque()).append(_Msg(list(out), cnt, vc, who))
        self.clock[g] = vc
        if (g, i) in self.dep_targets:
            self.step_vc[(g, i)] = vc
        self.pc[g] = i + 1

    def run(self) -> None:
        G = len(self.tbs)
        while True:
            progress = False
            for g in range(G):
                steps = self.tbs[g][1].steps
                while self.pc[g] < len(steps) and not self.blocked(g):
                    self.step(g)
                    progress = True
            waiting = [g for g in range(G) if self.pc[g] < len(self.tbs[g][1].steps)]
            if not waiting:
                break
            if not progress:
                lines = []
                for g in waiting:
                    r, tb = self.tbs[g]
                    st = tb.steps[self.pc[g]]
                    lines.append(f"{self.who(r, tb.id, self.pc[g], st)} waits for " + " and ".join(self.blocked(g)))
                raise VerificationError(f"deadlock in {self.p.name!r}: " + "; ".join(lines))
        for (s, d, ch), q in sorted(self.fifos.items()):
            if q:
                m = q[0]
                raise VerificationError(
                    f"unmatched send: {m.who} sent cnt={m.cnt} to rank {d} on channel {ch} "
                    f"but no step of rank {d} received it ({len(q)} message(s) left over)")

    # -- result -----------------------------------------------------------------------
    def expected(self) -> Iterable[tuple[int, Buf, int, tuple[Contrib, ...]]]:
        n, k, coll = self.n, self.k, self.p.collective
        root = self.p.root or 0
        everyone = range(n)
        if coll in ("allreduce", "barrier", "reduce"):
            buf = Buf.INPUT if coll == "barrier" else Buf.OUTPUT
            for r in ([root] if coll == "reduce" else everyone):
                for c in range(k):
                    yield r, buf, c, tuple((q, c) for q in everyone)
        elif coll == "broadcast":
            for r in everyone:
                for c in range(k):
                    yield r, Buf.OUTPUT, c, ((root, c),)
        elif coll in ("allgather", "gather"):
            for r in ([root] if coll == "gather" else everyone):
                for q in everyone:
                    for j in range(k):
                        yield r, Buf.OUTPUT, q * k + j, ((q, j),)
        elif coll == "reducescatter":
            for r in everyone:
                for j in range(k):
                    yield r, Buf.OUTPUT, j, tuple((q, r * k + j) for q in everyone)
        elif coll == "alltoall":
            for r in everyone:
                for q in everyone:
                    for j in range(k):
                        yield r, Buf.OUTPUT, q * k + j, ((q, r * k + j),)
        elif coll == "scatter":
            for r in everyone:
                for j in range(k):
                    yield r, Buf.OUTPUT, j, ((root, r * k + j),)
        else:  # pragma: no cover - validate() rejects unknown collectives
            raise VerificationError(f"no definition for collective {coll!r}")

    def check(self) -> None:
        for r, buf, idx, want in self.expected():
            loc = self.canon(r, buf, idx)
            got = self.mem.get(loc)
            last = self.wr.get(loc)
            by = f"last written by {last[2]}" if last else "never written by the program"
            if got is None:
                raise VerificationError(f"wrong result: {self.where(r, buf, idx)} is never written; "
                                        f"expected {_fmt(want)}")
            if isinstance(got, _Uninit):
                raise VerificationError(f"wrong result: {self.where(r, buf, idx)} holds {_fmt(got)} ({by})")
            if got == want:
                continue
            cg, cw = Counter(got), Counter(want)
            parts = []
            dup = sorted(c for c in cg if c in cw and cg[c] > cw[c])
            extra = sorted(c for c in cg if c not in cw)
            missing = sorted((cw - cg).elements())
            if dup:
                parts.append("counted twice: " + ", ".join(f"{o}:{c}" for o, c in dup[:8]))
            if extra:
                parts.append("unexpected: " + ", ".join(f"{o}:{c}" for o, c in extra[:8]))
            if missing:
                parts.append("missing: " + ", ".join(f"{o}:{c}" for o, c in missing[:8]))
            raise VerificationError(f"wrong result: {self.where(r, buf, idx)} = {_fmt(got)}, expected "
                                    f"{_fmt(want)} ({'; '.join(parts)}; {by})")


def verify(program: Program, *, inplace: bool, nslots: int = 1) -> None:
    """Prove that ``program`` implements its collective in the given mode.

    Raises :class:`VerificationError` naming the rank, thread block and step at fault
    (structural problems, deadlock, data race, cnt mismatch, unmatched send, input
    written out of place, chunk-class violation) or the wrong output chunk.
    """
    try:
        program.validate()
    except InvalidArgument as e:
        raise VerificationError(f"invalid program: {e}") from e
    if nslots < 1:
        raise VerificationError(f"nslots must be >= 1, got {nslots}")
    if inplace and not program.inplace:
        raise VerificationError(f"program {program.name!r} does not declare in-place support")
    if not inplace and not program.outofplace:
        raise VerificationError(f"program {program.name!r} does not declare out-of-place support")
    if program.collective in ROOTED and program.root is not None and not 0 <= program.root < program.nranks:
        raise VerificationError(f"program {program.name!r}: root {program.root} out of range")
    run = _Run(program, inplace, nslots)
    run.run()
    run.check()


def verify_all(build: Callable[..., Program], ranks: Iterable[int] = range(1, 17), *,
               nchannels: Iterable[int] = (1,), roots: Callable[[int], Iterable[int]] | None = None,
               nslots: int = 1) -> int:
    """Build and verify ``build(n, nchannels=c, root=q)`` for every combination.

    ``roots(n)`` gives the roots to try (default: every rank for rooted collectives,
    else just 0); every mode the program declares is verified. Returns the number of
    (program, mode) pairs verified; the first failure raises with its parameters.
    """
    done = 0
    for n in ranks:
        for c in nchannels:
            first = build(n, nchannels=c, root=0)
            rs = list(roots(n)) if roots else (range(n) if first.collective in ROOTED else [0])
            for q in rs:
                prog = first if q == 0 else build(n, nchannels=c, root=q)
                for mode in [m for m, ok in ((True, prog.inplace), (False, prog.outofplace)) if ok]:
                    try:
                        verify(prog, inplace=mode, nslots=nslots)
                    except VerificationError as e:
                        raise VerificationError(
                            f"{prog.name} nranks={n} nchannels={c} root={q} "
                            f"{'in-place' if mode else 'out-of-place'}: {e}") from e
                    done += 1
    return done
