"""Recursive-doubling allreduce (small messages): log2 p exchanges of the whole buffer.

p = the largest power of two <= n. Rank r (virtual rank v) exchanges its whole
partial result with the rank at virtual distance 1, 2, 4, ... < p; each exchange is
one thread block towards that partner:

1. ``s``   its partial (the input at the first exchange, then the output);
2. ``rrc`` receive the partner's partial, add its own, store into the output.

Non-powers of two (the standard pre/post step): of the first 2(n-p) ranks, each even
rank sends its input to the odd rank above it (``s``) and waits for the result
(``r``); the odd rank folds it in first (``rrc``) and sends the result back after the
last exchange (``s``). Every channel works on its own chunk (the buffer is cut into
``nchannels`` chunks). nranks == 1: one ``cpy``.

Bytes on the wire per rank: log2(p) * S (+ S before and after for the folded ranks),
in log2(p) (+2) steps, for a buffer of S bytes: the latency-optimal choice for small S.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program
from ._common import TBs, rd_allreduce

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 130


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The recursive-doubling allreduce for ``nranks`` ranks on ``nchannels`` channels (root is ignored)."""
    n = nranks
    if n < 1 or nchannels < 1:
        raise InvalidArgument(f"allreduce recursive_doubling: need nranks >= 1 and nchannels >= 1, got {n}, {nchannels}")
    b = ProgramBuilder(f"allreduce_recursive_doubling_{n}r_{nchannels}c", "allreduce", n, nchannels)
    tbs = TBs(b)
    if n == 1:
        tbs.local(0).copy(I, 0, O, 0, cnt=nchannels)
        return b.build()
    members = list(range(n))
    for c in range(nchannels):
        for r in range(n):
            rd_allreduce(lambda peer, r=r, c=c: tbs.get(r, peer, peer, c), members, r, c, 1, I, O)
    return b.build()
