"""Pairwise-exchange reduce-scatter: n-1 rounds; in round s rank r sends its input
block for rank r+s to r+s and adds the block rank r-s sent it into its output.

Each block is cut into ``k = nchannels`` chunks, chunk ``c`` on channel ``c``. Per
channel, rank ``r`` runs one thread block per round s (send to r+s, recv from r-s):

1. ``s``   input block r+s (after the previous round's reduction);
2. ``rrc`` receive rank r-s's block r, add the partial (its own input block r in round
   1, the output afterwards), store into the output.

In place the output is input block r, which only rrc steps read and write.
nranks == 1: one ``cpy``.

Bytes on the wire per rank: (n-1) * S in n-1 steps, for output blocks of S bytes.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import TBs

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 130


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The pairwise reduce-scatter for ``nranks`` ranks on ``nchannels`` channels (root is ignored)."""
    n, k = nranks, nchannels
    if n < 1 or k < 1:
        raise InvalidArgument(f"reducescatter pairwise: need nranks >= 1 and nchannels >= 1, got {n}, {k}")
    b = ProgramBuilder(f"reducescatter_pairwise_{n}r_{k}c", "reducescatter", n, n * k)
    tbs = TBs(b)
    for c in range(k):
        for r in range(n):
            if n == 1:
                tbs.local(r, c).copy(I, c, O, c)
                continue
            prev: StepRef | None = None
            for s in range(1, n):
                to, frm = (r + s) % n, (r - s) % n
                tb = tbs.get(r, to, frm, c)
                tb.send(I, to * k + c, deps=[prev])
                prev = tb.recv_reduce_copy(I if s == 1 else O, r * k + c if s == 1 else c, O, c)
    return b.build()
