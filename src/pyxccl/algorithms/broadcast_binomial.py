"""Binomial-tree broadcast: ceil(log2 n) rounds, the number of ranks holding the data
doubling each round.

Relative rank v = (r - root) mod n receives from v minus its highest set bit and sends
to v + 2^j for every 2^j > v below n, farthest first. Each chunk (the buffer is cut
into ``nchannels`` chunks, chunk c on channel c) travels down its own tree:

* root: ``cpy`` input -> output (a self-copy in place); one thread block per child:
  ``s`` its input chunk;
* other ranks: a thread block receiving from the parent and sending to the first
  (farthest) child: ``rcs`` into the output and on (``r`` for a leaf); one thread
  block per further child: ``s`` the output chunk (after the receive).

Large buffers pipeline slice by slice through the tree.

Bytes on the wire: the root sends ceil(log2 n) * S, a rank with c children c * S
(S = the buffer); ceil(log2 n) hops of latency instead of the chain's n-1.
Supports every nranks >= 1, every root, nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program
from ._binomial import children, parent
from ._common import TBs

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 110


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The binomial broadcast from ``root`` for ``nranks`` ranks on ``nchannels`` channels."""
    n, k = nranks, nchannels
    if n < 1 or k < 1 or not 0 <= root < n:
        raise InvalidArgument(f"broadcast binomial: bad nranks={n}, nchannels={k} or root={root}")
    b = ProgramBuilder(f"broadcast_binomial_{n}r_{k}c_root{root}", "broadcast", n, k, root=root)
    tbs = TBs(b)

    def real(v: int) -> int:
        return (v + root) % n

    for c in range(k):
        for v in range(n):
            r = real(v)
            kids = [real(x) for x in children(v, n)]
            if v == 0:
                own = tbs.local(r, c).copy(I, c, O, c)
                for q in kids:
                    tbs.get(r, q, -1, c).send(I, c, deps=[own])
                continue
            first = kids[0] if kids else -1
            tb = tbs.get(r, first, real(parent(v)), c)
            got = tb.recv_copy_send(O, c) if kids else tb.recv(O, c)
            for q in kids[1:]:
                tbs.get(r, q, -1, c).send(O, c, deps=[got])
    return b.build()
