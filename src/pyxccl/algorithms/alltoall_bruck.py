"""Bruck all-to-all (small messages): ceil(log2 n) steps for every n.

Each block is ``k = nchannels`` chunks; messages carry whole blocks (one channel).
Bruck's layout: slot i of rank r first holds the block for rank r+i (mod n). At step
k (d = 2^k < n) rank r sends the slots whose index has bit k set to rank r+d and
receives the same slots from rank r-d; at the end slot i holds rank (r-i)'s block for
r, which goes to output block r-i.

In the IR every step is one message: the slots to send are packed into a scratch
region (``cpy`` per slot, runs merged; slot i starts in input block r+i, later in the
scratch region it was received into), sent (``s``), and received into a fresh scratch
region (``r``). A slot is final after the step of its highest bit; the final ``cpy``s
move every slot to its output block. Steps run in order (step k waits for step k-1),
so in place the input is fully read before the output is written.

Bytes on the wire per rank: about n/2 * S per step, ceil(log2 n) * n/2 * S in total
(S = one block), in ceil(log2 n) messages instead of n-1: for small blocks.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import TBs, runs

I, O, S = Buf.INPUT, Buf.OUTPUT, Buf.SCRATCH
PRIORITY = 130


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The Bruck all-to-all for ``nranks`` ranks (blocks of ``nchannels`` chunks; root is ignored)."""
    n, kb = nranks, nchannels
    if n < 1 or kb < 1:
        raise InvalidArgument(f"alltoall bruck: need nranks >= 1 and nchannels >= 1, got {n}, {kb}")
    b = ProgramBuilder(f"alltoall_bruck_{n}r_{kb}c", "alltoall", n, n * kb)
    tbs = TBs(b)
    steps = []
    d = 1
    while d < n:
        steps.append((d, [i for i in range(n) if i & d]))
        d *= 2
    pack = max((len(sel) for _, sel in steps), default=0)  # scratch blocks 0..pack-1: the send buffer
    for r in range(n):
        where: dict[int, tuple[Buf, int]] = {i: (I, (r + i) % n) for i in range(n)}  # slot -> (buffer, block)
        nxt = pack
        deps: list[StepRef | None] = []
        tb = None
        for d, sel in steps:
            tb = tbs.get(r, (r + d) % n, (r - d) % n)
            srcs = [where[i] for i in sel]
            if all(s[0] is srcs[0][0] for s in srcs) and [s[1] for s in srcs] == list(
                    range(srcs[0][1], srcs[0][1] + len(srcs))):
                tb.send(srcs[0][0], srcs[0][1] * kb, len(sel) * kb, deps=deps)  # already contiguous
            else:
                for buf in (I, S):
                    for blk, j, m in runs((s[1], j) for j, s in enumerate(srcs) if s[0] is buf):
                        tb.copy(buf, blk * kb, S, j * kb, m * kb, deps=deps)
                        deps = []
                tb.send(S, 0, len(sel) * kb, deps=deps)
            deps = [tb.recv(S, nxt * kb, len(sel) * kb)]
            for j, i in enumerate(sel):
                where[i] = (S, nxt + j)
            nxt += len(sel)
        final = tb if tb is not None else tbs.local(r)
        for buf in (I, S):
            for blk, dst, m in runs(sorted((where[i][1], (r - i) % n) for i in range(n) if where[i][0] is buf)):
                final.copy(buf, blk * kb, O, dst * kb, m * kb, deps=deps)
                deps = []
    return b.build()
