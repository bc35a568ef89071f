"""A small helper to write IR programs by hand or from an algorithm module.

Example (a two-rank allreduce, one chunk)::

    b = ProgramBuilder("ar2", "allreduce", nranks=2, nchunksperloop=1)
    for r in range(2):
        tb = b.threadblock(r, send=1 - r, recv=1 - r)
        tb.send(Buf.INPUT, 0)
        tb.recv_reduce_copy(Buf.INPUT, 0, Buf.OUTPUT, 0)
    program = b.build()

Thread block ids are dense per rank in creation order. Every step method returns a
:class:`StepRef` that other steps of the same rank can name in ``deps``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidArgument
from .program import COLLECTIVES, Buf, Op, Program, RankProgram, Step, ThreadBlock, blocks


@dataclass(frozen=True)
class StepRef:
    """Names one step: (rank, thread block id, step index)."""

    rank: int
    tb: int
    step: int


DepLike = StepRef | tuple[int, int]


class TB:
    """Appends steps to one thread block of a :class:`ProgramBuilder`."""

    def __init__(self, rank: int, block: ThreadBlock) -> None:
        self.rank = rank
        self.block = block

    @property
    def id(self) -> int:
        """The thread block id (dense per rank)."""
        return self.block.id

    @property
    def last(self) -> StepRef | None:
        """The most recently added step, or None when the thread block is empty."""
        n = len(self.block.steps)
        return StepRef(self.rank, self.id, n - 1) if n else None

    def _deps(self, deps: Iterable[DepLike | None]) -> tuple[tuple[int, int], ...]:
        out: list[tuple[int, int]] = []
        for d in deps:
            if d is None:
                continue
            if isinstance(d, StepRef):
                if d.rank != self.rank:
                    raise InvalidArgument(
                        f"rank {self.rank} tb {self.id}: dependency on {d} of another rank "
                        "(dependencies are local; order ranks through send/recv)")
                d = (d.tb, d.step)
            tb, step = int(d[0]), int(d[1])
            if tb == self.id:
                if step >= len(self.block.steps):
                    raise InvalidArgument(f"rank {self.rank} tb {self.id}: dependency on its own future step {step}")
                continue  # implied by program order
            if (tb, step) not in out:
                out.append((tb, step))
        return tuple(out)

    def _add(self, op: Op, srcbuf: Buf | None, srcoff: int, dstbuf: Buf | None, dstoff: int,
             cnt: int, deps: Iterable[DepLike | None]) -> StepRef:
        self.block.steps.append(Step(op, srcbuf, srcoff if srcbuf is not None else -1,
                                     dstbuf, dstoff if dstbuf is not None else -1, cnt, self._deps(deps)))
        return StepRef(self.rank, self.id, len(self.block.steps) - 1)

    def send(self, src: Buf, off: int, cnt: int = 1, deps: Iterable[DepLike | None] = ()) -> StepRef:
        """``s``: send ``src[off:off+cnt]`` to the send peer."""
        return self._add(Op.SEND, src, off, None, -1, cnt, deps)

    def recv(self, dst: Buf, off: int, cnt: int = 1, deps: Iterable[DepLike | None] = ()) -> StepRef:
        """``r``: receive from the recv peer into ``dst[off:off+cnt]``."""
        return self._add(Op.RECV, None, -1, dst, off, cnt, deps)

    def recv_copy_send(self, dst: Buf, off: int, cnt: int = 1, deps: Iterable[DepLike | None] = ()) -> StepRef:
        """``rcs``: receive into ``dst[off:]`` and forward the same data to the send peer."""
        return self._add(Op.RECV_COPY_SEND, None, -1, dst, off, cnt, deps)

    def recv_reduce_send(self, src: Buf, off: int, cnt: int = 1, deps: Iterable[DepLike | None] = ()) -> StepRef:
        """``rrs``: send (received ⊕ ``src[off:]``) to the send peer; store nothing."""
        return self._add(Op.RECV_REDUCE_SEND, src, off, None, -1, cnt, deps)

    def recv_reduce_copy(self, src: Buf, srcoff: int, dst: Buf, dstoff: int, cnt: int = 1,
                         deps: Iterable[DepLike | None] = ()) -> StepRef:
        """``rrc``: ``dst[dstoff:] = received ⊕ src[srcoff:]``."""
        return self._add(Op.RECV_REDUCE_COPY, src, srcoff, dst, dstoff, cnt, deps)

    def recv_reduce_copy_send(self, src: Buf, srcoff: int, dst: Buf, dstoff: int, cnt: int = 1,
                              deps: Iterable[DepLike | None] = ()) -> StepRef:
        """``rrcs``: ``dst[dstoff:] = received ⊕ src[srcoff:]`` and send it to the send peer."""
        return self._add(Op.RECV_REDUCE_COPY_SEND, src, srcoff, dst, dstoff, cnt, deps)

    def copy(self, src: Buf, srcoff: int, dst: Buf, dstoff: int, cnt: int = 1,
             deps: Iterable[DepLike | None] = ()) -> StepRef:
        """``cpy``: local copy ``dst[dstoff:] = src[srcoff:]``."""
        return self._add(Op.COPY, src, srcoff, dst, dstoff, cnt, deps)

    def reduce(self, src: Buf, srcoff: int, dst: Buf, dstoff: int, cnt: int = 1,
               deps: Iterable[DepLike | None] = ()) -> StepRef:
        """``re``: local reduce ``dst[dstoff:] = dst[dstoff:] ⊕ src[srcoff:]``."""
        return self._add(Op.REDUCE, src, srcoff, dst, dstoff, cnt, deps)

    def nop(self, deps: Iterable[DepLike | None]) -> StepRef:
        """``nop``: no data movement; only waits for ``deps``."""
        return self._add(Op.NOP, None, -1, None, -1, 0, deps)


class ProgramBuilder:
    """Collects thread blocks and steps per rank and builds a validated :class:`Program`."""

    def __init__(self, name: str, collective: str, nranks: int, nchunksperloop: int, *,
                 root: int | None = None, inplace: bool = True, outofplace: bool = True,
                 protocol: str = "Simple") -> None:
        if nranks < 1:
            raise InvalidArgument(f"nranks must be >= 1, got {nranks}")
        if collective not in COLLECTIVES:
            raise InvalidArgument(f"program {name!r}: unknown collective {collective!r}")
        self.name = name
        self.collective = collective
        self.nranks = nranks
        self.nchunksperloop = nchunksperloop
        self.root = root
        self.inplace = inplace
        self.outofplace = outofplace
        self.protocol = protocol
        self._tbs: list[list[ThreadBlock]] = [[] for _ in range(nranks)]

    @property
    def k(self) -> int:
        """Chunks per block of ``count`` elements (nchunksperloop / multiplier)."""
        return self._program([]).chunks_per_block

    def threadblock(self, rank: int, send: int = -1, recv: int = -1, channel: int = 0) -> TB:
        """A new thread block on ``rank`` (id = the next dense id of that rank)."""
        if not 0 <= rank < self.nranks:
            raise InvalidArgument(f"rank {rank} out of range for nranks={self.nranks}")
        block = ThreadBlock(len(self._tbs[rank]), send, recv, channel)
        self._tbs[rank].append(block)
        return TB(rank, block)

    def _program(self, ranks: list[RankProgram]) -> Program:
        return Program(self.name, self.collective, self.nranks, self.nchunksperloop, ranks,
                       protocol=self.protocol, inplace=self.inplace, outofplace=self.outofplace,
                       root=self.root)

    def build(self) -> Program:
        """Compute each rank's buffer sizes, validate, and return the program.

        Sizes are max(offset + cnt) over the chunks used, but input and output are at
        least the collective's natural sizes (blocks × k); an in-place-only program's
        output is only as large as used (MSCCL writes ``o_chunks=0``).
        """
        k = self.k
        nat_in, nat_out = (b * k for b in blocks(self.collective, self.nranks))
        ranks = []
        for r, tbs in enumerate(self._tbs):
            used = {Buf.INPUT: 0, Buf.OUTPUT: 0, Buf.SCRATCH: 0}
            for tb in tbs:
                for st in tb.steps:
                    if st.op.reads_src and st.srcbuf is not None:
                        used[st.srcbuf] = max(used[st.srcbuf], st.srcoff + st.cnt)
                    if st.op.writes_dst and st.dstbuf is not None:
                        used[st.dstbuf] = max(used[st.dstbuf], st.dstoff + st.cnt)
            o_min = nat_out if self.outofplace else 0
            ranks.append(RankProgram(r, max(used[Buf.INPUT], nat_in), max(used[Buf.OUTPUT], o_min),
                                     used[Buf.SCRATCH], list(tbs)))
        program = self._program(ranks)
        program.validate()
        return program
