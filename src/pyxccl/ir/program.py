"""The IR: MSCCL's program model, one to one.

A :class:`Program` implements one collective for ``nranks`` ranks. Each rank has
thread blocks (MSCCL ``<tb>``, run concurrently); each thread block has at most one
send peer and one recv peer on one channel and an ordered list of :class:`Step`.
A program is independent of the message size: every buffer is cut into chunks and
the executor runs the whole program once per slice of every chunk (pipelining).

Chunk layout (shared by the verifier and the executor): the user's buffers are made
of *blocks* of ``count`` elements (``count`` = the per-rank count for allgather,
reducescatter, gather, scatter and the per-peer count for alltoall, as in NCCL);
each block is cut into ``k = nchunksperloop / multiplier`` chunks, where
``multiplier`` is ``nranks`` for the collectives whose total is ``nranks * count``
and 1 otherwise. Chunk ``c`` of a buffer is chunk ``c % k`` of block ``c // k``.
When ``count`` is not a multiple of ``k`` every chunk is ``ceil(count / k)`` long and
the last chunks of a block are short or empty; a program stays correct because data
only ever moves between chunks of the same class ``c % k`` (the verifier checks it)
and the scratch buffer is padded.

Local operands: for ``s`` the source is (srcbuf, srcoff); for ``r`` and ``rcs`` the
destination is (dstbuf, dstoff); for ``rrs``/``rrc``/``rrcs`` the local reduction
operand is (srcbuf, srcoff) and the destination (dstbuf, dstoff); ``cpy`` copies src
to dst and ``re`` computes ``dst = dst (op) src``. The remote side's location is not
part of a step (MSCCL XML carries it only as information).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..errors import InvalidArgument


class Op(str, Enum):
    """Step types (MSCCL names)."""

    SEND = "s"
    RECV = "r"
    RECV_COPY_SEND = "rcs"
    RECV_REDUCE_SEND = "rrs"
    RECV_REDUCE_COPY = "rrc"
    RECV_REDUCE_COPY_SEND = "rrcs"
    COPY = "cpy"
    REDUCE = "re"
    NOP = "nop"

    @property
    def receives(self) -> bool:
        return self in _RECEIVES

    @property
    def sends(self) -> bool:
        return self in _SENDS

    @property
    def reduces(self) -> bool:
        return self in _REDUCES

    @property
    def reads_src(self) -> bool:
        """The step reads the local buffer (srcbuf, srcoff)."""
        return self in _READS_SRC

    @property
    def writes_dst(self) -> bool:
        """The step writes the local buffer (dstbuf, dstoff)."""
        return self in _WRITES_DST


_RECEIVES = {Op.RECV, Op.RECV_COPY_SEND, Op.RECV_REDUCE_SEND, Op.RECV_REDUCE_COPY, Op.RECV_REDUCE_COPY_SEND}
_SENDS = {Op.SEND, Op.RECV_COPY_SEND, Op.RECV_REDUCE_SEND, Op.RECV_REDUCE_COPY_SEND}
_REDUCES = {Op.RECV_REDUCE_SEND, Op.RECV_REDUCE_COPY, Op.RECV_REDUCE_COPY_SEND, Op.REDUCE}
_READS_SRC = {Op.SEND, Op.RECV_REDUCE_SEND, Op.RECV_REDUCE_COPY, Op.RECV_REDUCE_COPY_SEND, Op.COPY, Op.REDUCE}
_WRITES_DST = {Op.RECV, Op.RECV_COPY_SEND, Op.RECV_REDUCE_COPY, Op.RECV_REDUCE_COPY_SEND, Op.COPY, Op.REDUCE}


class Buf(str, Enum):
    """The three buffers of a rank: the user's input and output, and pyxccl's scratch."""

    INPUT = "i"
    OUTPUT = "o"
    SCRATCH = "s"


#: collective names (MSCCL spelling) and whether their total is nranks * count
COLLECTIVES = {
    "allreduce": False,
    "broadcast": False,
    "reduce": False,
    "allgather": True,
    "reducescatter": True,
    "alltoall": True,
    "gather": True,
    "scatter": True,
    "barrier": False,
}

#: blocks of ``count`` elements in the (input, output) buffer of each collective;
#: "n" stands for nranks. Rooted collectives: the root's shape (others hold 0 blocks
#: where the root alone has data, e.g. the output of gather).
_BLOCKS = {
    "allreduce": (1, 1),
    "broadcast": (1, 1),
    "reduce": (1, 1),
    "allgather": (1, "n"),
    "reducescatter": ("n", 1),
    "alltoall": ("n", "n"),
    "gather": (1, "n"),
    "scatter": ("n", 1),
    "barrier": (1, 1),
}


@dataclass(frozen=True)
class Step:
    """One step of a thread block; see the module docstring for the local operands."""

    op: Op
    srcbuf: Buf | None = None
    srcoff: int = -1
    dstbuf: Buf | None = None
    dstoff: int = -1
    cnt: int = 1
    deps: tuple[tuple[int, int], ...] = ()
    """(thread block id, step index) on the same rank that must complete first, per slice."""


@dataclass
class ThreadBlock:
    """MSCCL ``<tb>``: one sequential list of steps with one send and one recv peer."""

    id: int
    send: int = -1
    recv: int = -1
    channel: int = 0
    steps: list[Step] = field(default_factory=list)


@dataclass
class RankProgram:
    """One rank's part: chunk counts of its three buffers and its thread blocks."""

    rank: int
    i_chunks: int = 0
    o_chunks: int = 0
    s_chunks: int = 0
    tbs: list[ThreadBlock] = field(default_factory=list)


@dataclass
class Program:
    """A whole algorithm for ``nranks`` ranks (MSCCL ``<algo>``)."""

    name: str
    collective: str
    nranks: int
    nchunksperloop: int
    ranks: list[RankProgram]
    protocol: str = "Simple"
    inplace: bool = True
    outofplace: bool = True
    root: int | None = None

    @property
    def multiplier(self) -> int:
        """nranks for collectives whose total buffer is nranks * count, else 1."""
        return self.nranks if COLLECTIVES[self.collective] else 1

    @property
    def chunks_per_block(self) -> int:
        """k: chunks one block of ``count`` elements is cut into."""
        return self.nchunksperloop // self.multiplier

    @property
    def nchannels(self) -> int:
        return 1 + max((tb.channel for rp in self.ranks for tb in rp.tbs), default=0)

    @property
    def max_cnt(self) -> int:
        """The largest ``cnt`` of any step that moves data through a slot."""
        return max((s.cnt for rp in self.ranks for tb in rp.tbs for s in tb.steps
                    if s.op.sends or s.op.receives), default=1)

    def validate(self) -> None:
        """Structural checks (MSCCL's load-time rules); raise InvalidArgument on the first problem."""
        if self.collective not in COLLECTIVES:
            raise InvalidArgument(f"program {self.name!r}: unknown collective {self.collective!r}")
        if self.nranks < 1 or len(self.ranks) != self.nranks:
            raise InvalidArgument(f"program {self.name!r}: {len(self.ranks)} rank programs for nranks={self.nranks}")
        if self.nchunksperloop < 1 or self.nchunksperloop % self.multiplier:
            raise InvalidArgument(
                f"program {self.name!r}: nchunksperloop={self.nchunksperloop} must be a positive multiple of {self.multiplier}")
        for r, rp in enumerate(self.ranks):
            where = f"program {self.name!r} rank {r}"
            if rp.rank != r:
                raise InvalidArgument(f"{where}: rank programs must be listed in rank order")
            if sorted(tb.id for tb in rp.tbs) != list(range(len(rp.tbs))):
                raise InvalidArgument(f"{where}: thread block ids must be dense 0..n-1")
            seen: set[tuple[int, int, str]] = set()
            nchunks = {Buf.INPUT: rp.i_chunks, Buf.OUTPUT: rp.o_chunks, Buf.SCRATCH: rp.s_chunks}
            tbs = {tb.id: tb for tb in rp.tbs}
            for tb in rp.tbs:
                for peer, direction in ((tb.send, "send"), (tb.recv, "recv")):
                    if peer == -1:
                        continue
                    if not 0 <= peer < self.nranks or peer == r:
                        raise InvalidArgument(f"{where} tb {tb.id}: {direction} peer {peer} is invalid")
                    key = (tb.channel, peer, direction)
                    if key in seen:
                        raise InvalidArgument(
                            f"{where} tb {tb.id}: a second thread block {direction}s to/from {peer} on channel {tb.channel}")
                    seen.add(key)
                for i, st in enumerate(tb.steps):
                    sw = f"{where} tb {tb.id} step {i} ({st.op.value})"
                    if st.op.sends and tb.send < 0:
                        raise InvalidArgument(f"{sw}: sends but the thread block has no send peer")
                    if st.op.receives and tb.recv < 0:
                        raise InvalidArgument(f"{sw}: receives but the thread block has no recv peer")
                    if st.cnt < 1 and st.op is not Op.NOP:
                        raise InvalidArgument(f"{sw}: cnt must be >= 1")
                    for used, buf, off in ((st.op.reads_src, st.srcbuf, st.srcoff),
                                           (st.op.writes_dst, st.dstbuf, st.dstoff)):
                        if not used:
                            continue
                        if buf is None or not 0 <= off or off + st.cnt > nchunks[buf]:
                            raise InvalidArgument(
                                f"{sw}: chunks {off}..{off + st.cnt - 1} of buffer {buf and buf.value} "
                                f"out of range ({nchunks.get(buf, 0)} chunks)")
                    for dtb, dstep in st.deps:
                        if dtb not in tbs or not 0 <= dstep < len(tbs[dtb].steps) or dtb == tb.id:
                            raise InvalidArgument(f"{sw}: dependency ({dtb}, {dstep}) does not name a step of another tb")


def blocks(collective: str, nranks: int) -> tuple[int, int]:
    """Blocks of ``count`` elements in the (input, output) buffers of ``collective``."""
    return tuple(nranks if b == "n" else b for b in _BLOCKS[collective])  # type: ignore[return-value]


def inplace_alias(collective: str, nranks: int, k: int, rank: int) -> tuple[Buf, Buf, int]:
    """How the buffers alias in an in-place call: (small, big, offset).

    Chunk ``j`` of buffer ``small`` is chunk ``offset + j`` of buffer ``big``
    (allgather/gather: the input is the rank's block of the output; reducescatter/
    scatter: the output is the rank's block of the input; others: input is output).
    """
    if collective in ("allgather", "gather"):
        return Buf.INPUT, Buf.OUTPUT, rank * k
    if collective in ("reducescatter", "scatter"):
        return Buf.OUTPUT, Buf.INPUT, rank * k
    return Buf.INPUT, Buf.OUTPUT, 0
