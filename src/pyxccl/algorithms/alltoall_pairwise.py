"""Pairwise-exchange all-to-all: n-1 rounds; in round s rank r sends its block for
rank r+s and receives the block from rank r-s.

Each block is cut into ``k = nchannels`` chunks, chunk ``c`` on channel ``c``. Per
channel, rank ``r`` runs one thread block per round s (send to r+s, recv from r-s),
chained by dependencies so the rounds run in order:

1. ``s`` input block r+s (waits for the previous round's receive);
2. ``r`` the block from r-s: straight into output block r-s when 2s >= n, else into
   scratch slot s-1;
3. when 2(n-s) < n: ``cpy`` scratch slot n-s-1 (the block received in round n-s)
   into output block r+s.

Own block: one local thread block, ``cpy`` input block r -> output block r.

In place (input is output) output block r-s is input block r-s, which is sent in
round n-s. If n-s <= s that send came earlier in the chain (or earlier in the same
thread block), so receiving in place is safe; otherwise the block waits in scratch
until round n-s has sent the original, and that round's thread block copies it
into place (step 3), ordered after the scratch receive through the round chain.
Scratch: ((n-1)//2) * k chunks.

Bytes on the wire per rank: (n-1) * S for a per-peer block of S bytes.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program

I, O, S = Buf.INPUT, Buf.OUTPUT, Buf.SCRATCH


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The pairwise all-to-all for ``nranks`` ranks on ``nchannels`` channels (root is ignored)."""
    n, k = nranks, nchannels
    if n < 1 or k < 1:
        raise InvalidArgument(f"alltoall pairwise: need nranks >= 1 and nchannels >= 1, got {n}, {k}")
    b = ProgramBuilder(f"alltoall_pairwise_{n}r_{k}c", "alltoall", n, n * k)
    for r in range(n):
        b.threadblock(r).copy(I, r * k, O, r * k, cnt=k)
    for c in range(k):
        for r in range(n):
            prev: StepRef | None = None
            for s in range(1, n):
                to, frm = (r + s) % n, (r - s) % n
                tb = b.threadblock(r, send=to, recv=frm, channel=c)
                tb.send(I, to * k + c, deps=[prev])
                if 2 * s >= n:
                    prev = tb.recv(O, frm * k + c)
                else:
                    prev = tb.recv(S, (s - 1) * k + c)
                if 2 * (n - s) < n:
                    tb.copy(S, (n - s - 1) * k + c, O, to * k + c)
    return b.build()
