"""Direct all-to-all: every rank sends every peer its block at once.

Each block is ``k = nchannels`` chunks; a message carries a whole block. Rank r runs
one thread block per peer q (send to q, recv from q), peers in the order r+1, r+2, ...:
``s`` input block q, then ``r`` q's block into output block q; and a local ``cpy`` of
its own block. In place, output block q is input block q, sent just before by the same
thread block.

Bytes on the wire per rank: (n-1) * S in one step of n-1 concurrent messages
(S = one block), where pairwise exchange orders them in n-1 rounds.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program
from ._common import TBs

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 110


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The direct all-to-all for ``nranks`` ranks (blocks of ``nchannels`` chunks; root is ignored)."""
    n, kb = nranks, nchannels
    if n < 1 or kb < 1:
        raise InvalidArgument(f"alltoall direct: need nranks >= 1 and nchannels >= 1, got {n}, {kb}")
    b = ProgramBuilder(f"alltoall_direct_{n}r_{kb}c", "alltoall", n, n * kb)
    tbs = TBs(b)
    for r in range(n):
        tbs.local(r).copy(I, r * kb, O, r * kb, kb)
        for s in range(1, n):
            q = (r + s) % n
            tb = tbs.get(r, q, q)
            tb.send(I, q * kb, kb)
            tb.recv(O, q * kb, kb)
    return b.build()
