"""Binomial-tree reduce: ceil(log2 n) rounds, partial sums climbing the binomial tree.

Relative rank v = (r - root) mod n; its children are v + 2^j for 2^j > v below n (the
broadcast tree reversed), its parent v minus its highest set bit. Per chunk (the
buffer is cut into ``nchannels`` chunks, chunk c on channel c):

* leaf: ``s`` its input chunk to the parent;
* inner rank: one thread block per child, nearest child first, chained: ``rrc`` the
  child's partial plus its own (input, then the running sum) into scratch, except the
  last child, whose thread block also sends to the parent: ``rrs`` straight up;
* root: the same chain into its output.

Other ranks' buffers are never written. nranks == 1: one ``cpy``.

Bytes on the wire: S per non-root rank (S = the buffer); the root receives
ceil(log2 n) * S; ceil(log2 n) hops of latency instead of the chain's n-1.
Supports every nranks >= 1, every root, nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._binomial import children, parent
from ._common import TBs

I, O, S = Buf.INPUT, Buf.OUTPUT, Buf.SCRATCH
PRIORITY = 110


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The binomial reduce to ``root`` for ``nranks`` ranks on ``nchannels`` channels."""
    n, k = nranks, nchannels
    if n < 1 or k < 1 or not 0 <= root < n:
        raise InvalidArgument(f"reduce binomial: bad nranks={n}, nchannels={k} or root={root}")
    b = ProgramBuilder(f"reduce_binomial_{n}r_{k}c_root{root}", "reduce", n, k, root=root)
    tbs = TBs(b)

    def real(v: int) -> int:
        return (v + root) % n

    for c in range(k):
        for v in range(n):
            r = real(v)
            kids = [real(x) for x in reversed(children(v, n))]  # nearest first
            if n == 1:
                tbs.local(r, c).copy(I, c, O, c)
                continue
            up = real(parent(v)) if v else -1
            acc = O if v == 0 else S
            if not kids:
                tbs.get(r, up, -1, c).send(I, c)
                continue
            prev: StepRef | None = None
            src = I
            for i, q in enumerate(kids):
                if i == len(kids) - 1 and v != 0:
                    tbs.get(r, up, q, c).recv_reduce_send(src, c, deps=[prev])
                else:
                    prev = tbs.get(r, -1, q, c).recv_reduce_copy(src, c, acc, c, deps=[prev])
                    src = acc
    return b.build()
