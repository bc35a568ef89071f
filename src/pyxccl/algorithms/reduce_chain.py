"""Pipelined chain reduce: root+1 -> root+2 -> ... -> root+n-1 -> root.

The buffer is cut into ``k = nchannels`` chunks; channel ``c`` reduces chunk ``c``
along its own chain. Per channel:

* first:  ``s``   its input chunk;
* middle: ``rrs`` receive the partial sum, add its input chunk, forward;
* root:   ``rrc`` receive, add its input chunk, store into its output.

Bytes on the wire per rank: S (the root sends nothing) for a buffer of S bytes.
Supports every nranks >= 1, every root, nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program

I, O = Buf.INPUT, Buf.OUTPUT


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The chain reduce to ``root`` for ``nranks`` ranks on ``nchannels`` chains."""
    n, k = nranks, nchannels
    if n < 1 or k < 1 or not 0 <= root < n:
        raise InvalidArgument(f"reduce chain: bad nranks={n}, nchannels={k} or root={root}")
    b = ProgramBuilder(f"reduce_chain_{n}r_{k}c_root{root}", "reduce", n, k, root=root)
    for c in range(k):
        if n == 1:
            b.threadblock(0, channel=c).copy(I, c, O, c)
            continue
        for p in range(n):  # position in the chain; the root is last
            r = (root + 1 + p) % n
            nxt = (r + 1) % n if p < n - 1 else -1
            prv = (r - 1) % n if p > 0 else -1
            tb = b.threadblock(r, send=nxt, recv=prv, channel=c)
            if p == 0:
                tb.send(I, c)
            elif p < n - 1:
                tb.recv_reduce_send(I, c)
            else:
                tb.recv_reduce_copy(I, c, O, c)
    return b.build()
