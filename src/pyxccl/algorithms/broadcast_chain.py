"""Pipelined chain broadcast: root -> root+1 -> ... -> root+n-1.

The buffer is cut into ``k = nchannels`` chunks; channel ``c`` carries chunk ``c``
down its own chain (ring order starting at the root). Per channel:

* root:   ``cpy`` input -> output (a self-copy in place), ``s`` its input chunk;
* middle: ``rcs`` receive into the output and forward;
* last:   ``r``   receive into the output.

Large buffers pipeline because the executor runs the program once per slice: the
root sends slice i+1 while slice i travels down the chain.

Bytes on the wire per rank: S (the last rank sends nothing) for a buffer of S bytes.
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
    """The chain broadcast from ``root`` for ``nranks`` ranks on ``nchannels`` chains."""
    n, k = nranks, nchannels
    if n < 1 or k < 1 or not 0 <= root < n:
        raise InvalidArgument(f"broadcast chain: bad nranks={n}, nchannels={k} or root={root}")
    b = ProgramBuilder(f"broadcast_chain_{n}r_{k}c_root{root}", "broadcast", n, k, root=root)
    for c in range(k):
        for p in range(n):  # position in the chain
            r = (root + p) % n
            nxt = (r + 1) % n if p < n - 1 else -1
            prv = (r - 1) % n if p > 0 else -1
            tb = b.threadblock(r, send=nxt, recv=prv, channel=c)
            if p == 0:
                tb.copy(I, c, O, c)
                if n > 1:
                    tb.send(I, c)
            elif p < n - 1:
                tb.recv_copy_send(O, c)
            else:
                tb.recv(O, c)
    return b.build()
