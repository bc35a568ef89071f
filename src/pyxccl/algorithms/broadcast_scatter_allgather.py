"""Scatter + ring allgather broadcast (van de Geijn; for large messages).

The buffer is cut into n-1 pieces per channel. The root scatters piece j to the j-th
rank after it (one thread block per rank: ``s``), then the n-1 other ranks run a ring
allgather of the pieces among themselves (ring root+1 -> ... -> root-1 -> root+1; the
root takes no part): ``s`` its piece (after receiving it: ``r``), ``rcs`` n-3 pieces
from its ring predecessor, ``r`` the last. The root copies input to output (``cpy``, a
self-copy in place).

Bytes on the wire: the root sends S (each piece once); every other rank sends
(n-2)/(n-1) * S (S = the buffer): no rank sends more than ~S, where a binomial tree's
root sends log2(n) * S. nranks <= 2: the root sends the whole buffer.
Supports every nranks >= 1, every root, nchannels >= 1; needs 2 FIFO slots per
connection (``MIN_SLOTS``).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program
from ._common import Piece, TBs, ring_allgather

I, O = Buf.INPUT, Buf.OUTPUT
MIN_SLOTS = 2
PRIORITY = 120


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The scatter-allgather broadcast from ``root`` for ``nranks`` ranks on ``nchannels`` channels."""
    n, k = nranks, nchannels
    if n < 1 or k < 1 or not 0 <= root < n:
        raise InvalidArgument(f"broadcast scatter_allgather: bad nranks={n}, nchannels={k} or root={root}")
    m = max(1, n - 1)
    b = ProgramBuilder(f"broadcast_scatter_allgather_{n}r_{k}c_root{root}", "broadcast", n, m * k, root=root)
    tbs = TBs(b)
    others = [(root + 1 + j) % n for j in range(n - 1)]
    own = tbs.local(root).copy(I, 0, O, 0, m * k)
    for c in range(k):
        base = c * m
        for j, q in enumerate(others):
            tbs.get(root, q, -1, c).send(I, base + j, deps=[own])
            got = tbs.get(q, -1, root, c).recv(O, base + j)
            if m > 1:
                ring = tbs.get(q, others[(j + 1) % m], others[(j - 1) % m], c)
                ring_allgather(ring, j, m, lambda i: [Piece((O, base + i), (O, base + i), 1)], deps=[got])
    return b.build()
