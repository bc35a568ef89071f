"""Recursive halving-doubling allreduce (Rabenseifner; Gloo's halving_doubling).

p = the largest power of two <= n; the buffer is cut into p chunks per channel.

1. Reduce-scatter by distance doubling: at step k (distance 2^k) rank v exchanges
   half of its current range with v XOR 2^k: ``s`` the half the partner keeps, ``rrc``
   the partner's contribution to the half it keeps (into the output). After log2 p
   steps rank v holds chunk bitreverse(v) fully reduced.
2. Allgather by distance halving: the same partners in reverse order, ``s`` the range
   it holds, ``r`` the partner's range; the range doubles each step.

Both phases with one partner share one thread block (s, rrc, ..., s, r). Non-powers
of two use the standard pre/post step: of the first 2(n-p) ranks each even rank sends
its whole input to the odd rank above it and receives the result at the end.
nranks == 1: one ``cpy``.

Bytes on the wire per rank: 2 (p-1)/p * S (+ S before and after for the folded ranks)
in 2 log2(p) (+2) steps, for a buffer of S bytes.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program
from ._common import TBs, rhd_allreduce, rhd_chunks

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 120


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The halving-doubling allreduce for ``nranks`` ranks on ``nchannels`` channels (root is ignored)."""
    n = nranks
    if n < 1 or nchannels < 1:
        raise InvalidArgument(f"allreduce halving_doubling: need nranks >= 1 and nchannels >= 1, got {n}, {nchannels}")
    p = rhd_chunks(n)
    b = ProgramBuilder(f"allreduce_halving_doubling_{n}r_{nchannels}c", "allreduce", n, p * nchannels)
    tbs = TBs(b)
    if n == 1:
        tbs.local(0).copy(I, 0, O, 0, cnt=nchannels)
        return b.build()
    members = list(range(n))
    for c in range(nchannels):
        for r in range(n):
            rhd_allreduce(lambda peer, r=r, c=c: tbs.get(r, peer, peer, c), members, r, c * p, I, O)
    return b.build()
