"""Dissemination barrier (Hensgen, Finkel, Manber): ceil(log2 n) rounds.

The program works on a one-chunk in-place buffer under the verifier's union
semantics (it proves every rank heard from every other rank, directly or not).
Rank ``r`` runs one thread block per round k (send to r+2^k, recv from r-2^k),
chained by dependencies:

1. ``s``   its buffer chunk (waits for the previous round's receive);
2. ``rrc`` receive and combine into its buffer chunk.

After round k a rank has heard from the 2^(k+1) ranks before it, so after
ceil(log2 n) rounds from everyone. The peers of different rounds differ
(0 < 2^k < n), so every round has its own connection. nranks == 1: no steps.
In place only (the buffer is written).

Bytes on the wire per rank: ceil(log2 n) one-chunk messages.
Supports every nranks >= 1; nchannels is ignored.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program

I = Buf.INPUT


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The dissemination barrier for ``nranks`` ranks (nchannels and root are ignored)."""
    n = nranks
    if n < 1:
        raise InvalidArgument(f"barrier dissemination: need nranks >= 1, got {n}")
    b = ProgramBuilder(f"barrier_dissemination_{n}r", "barrier", n, 1, inplace=True, outofplace=False)
    for r in range(n):
        prev: StepRef | None = None
        d = 1
        while d < n:
            tb = b.threadblock(r, send=(r + d) % n, recv=(r - d) % n)
            tb.send(I, 0, deps=[prev])
            prev = tb.recv_reduce_copy(I, 0, I, 0)
            d *= 2
    return b.build()
