"""All-pairs allreduce (MSCCL's allpairs, for small messages): two steps.

The buffer is cut into n chunks per channel; rank r is responsible for chunk r.
Rank r runs one thread block per peer q (send to q, recv from q):

1. ``s``   its input chunk q (every rank sends every peer its contribution at once);
2. ``rrc`` receive q's contribution to chunk r and add it into output chunk r (the
   reductions of the n-1 thread blocks are chained by dependencies, in peer order);
3. ``s``   the reduced chunk r (after the last reduction);
4. ``r``   q's reduced chunk q into output chunk q.

In place, output chunk q is input chunk q, which the same thread block sent in step 1.
nranks == 1: one ``cpy``.

Bytes on the wire per rank: 2 (n-1)/n * S in 2 steps of n-1 messages each (S = the
buffer): few steps, many messages; for small buffers.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import TBs

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 140


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The all-pairs allreduce for ``nranks`` ranks on ``nchannels`` channels (root is ignored)."""
    n = nranks
    if n < 1 or nchannels < 1:
        raise InvalidArgument(f"allreduce allpairs: need nranks >= 1 and nchannels >= 1, got {n}, {nchannels}")
    b = ProgramBuilder(f"allreduce_allpairs_{n}r_{nchannels}c", "allreduce", n, n * nchannels)
    tbs = TBs(b)
    if n == 1:
        tbs.local(0).copy(I, 0, O, 0, cnt=nchannels)
        return b.build()
    for c in range(nchannels):
        base = c * n
        for r in range(n):
            peers = [(r + s) % n for s in range(1, n)]
            acc: StepRef | None = None
            for i, q in enumerate(peers):
                tb = tbs.get(r, q, q, c)
                tb.send(I, base + q)
                acc = tb.recv_reduce_copy(I if i == 0 else O, base + r, O, base + r, deps=[acc])
            for q in peers:
                tb = tbs.get(r, q, q, c)
                tb.send(O, base + r, deps=[acc])
                tb.recv(O, base + q)
    return b.build()
