"""Direct gather: every rank sends its block straight to the root.

Each block is cut into ``k = nchannels`` chunks, chunk ``c`` on channel ``c``.

* non-root rank q: one thread block per channel (send to root): ``s`` input chunk c;
* root: one thread block per (peer, channel): ``r`` into output block q, chunk c;
  and one local thread block: ``cpy`` its input into its own output block (a
  self-copy in place, where the input already is that block).

Bytes on the wire: S per non-root rank; the root receives (n-1) * S
(S = one rank's block).
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
    """The direct gather to ``root`` for ``nranks`` ranks on ``nchannels`` channels."""
    n, k = nranks, nchannels
    if n < 1 or k < 1 or not 0 <= root < n:
        raise InvalidArgument(f"gather direct: bad nranks={n}, nchannels={k} or root={root}")
    b = ProgramBuilder(f"gather_direct_{n}r_{k}c_root{root}", "gather", n, n * k, root=root)
    b.threadblock(root).copy(I, 0, O, root * k, cnt=k)
    for c in range(k):
        for q in range(n):
            if q != root:
                b.threadblock(q, send=root, channel=c).send(I, c)
                b.threadblock(root, recv=q, channel=c).recv(O, q * k + c)
    return b.build()
