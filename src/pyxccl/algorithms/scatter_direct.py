"""Direct scatter: the root sends every rank its block straight.

Each block is cut into ``k = nchannels`` chunks, chunk ``c`` on channel ``c``.

* root: one thread block per (peer, channel): ``s`` input block q, chunk c; and one
  local thread block: ``cpy`` its own input block into its output (a self-copy in
  place, where the output already is that block);
* non-root rank q: one thread block per channel (recv from root): ``r`` into output
  chunk c.

Bytes on the wire: the root sends (n-1) * S; each other rank receives S
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
    """The direct scatter from ``root`` for ``nranks`` ranks on ``nchannels`` channels."""
    n, k = nranks, nchannels
    if n < 1 or k < 1 or not 0 <= root < n:
        raise InvalidArgument(f"scatter direct: bad nranks={n}, nchannels={k} or root={root}")
    b = ProgramBuilder(f"scatter_direct_{n}r_{k}c_root{root}", "scatter", n, n * k, root=root)
    b.threadblock(root).copy(I, root * k, O, 0, cnt=k)
    for c in range(k):
        for q in range(n):
            if q != root:
                b.threadblock(root, send=q, channel=c).send(I, q * k + c)
                b.threadblock(q, recv=root, channel=c).recv(O, c)
    return b.build()
