"""Ring allgather: every block travels n-1 hops around r -> r+1.

The buffer of each rank's block is cut into ``k = nchannels`` chunks; channel ``c``
moves chunk ``c`` of every block on its own ring. On each channel rank ``r`` runs
one thread block (send to r+1, recv from r-1):

1. ``cpy`` its input chunk c into its own block of the output (a self-copy in place,
   where the input already is that block);
2. ``s``   its input chunk c;
3. ``rcs`` n-2 times: receive block r-t (t = 1..n-2), store it, forward it;
4. ``r``   block r+1 (= r-(n-1)), stored only.

Bytes on the wire per rank: (n-1) * S for a per-rank block of S bytes.
Supports every nranks >= 1 and nchannels >= 1; needs 2 FIFO slots per connection
(``MIN_SLOTS``).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program

I, O = Buf.INPUT, Buf.OUTPUT

#: FIFO slots per connection the ring needs: the rcs steps both receive and send and every link of
#: the ring holds one message, so with a single slot all ranks would wait for room
#: (a real deadlock, as in NCCL; its transports have NCCL_STEPS = 8 slots).
MIN_SLOTS = 2


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The ring allgather for ``nranks`` ranks and ``nchannels`` rings (root is ignored)."""
    n, k = nranks, nchannels
    if n < 1 or k < 1:
        raise InvalidArgument(f"allgather ring: need nranks >= 1 and nchannels >= 1, got {n}, {k}")
    b = ProgramBuilder(f"allgather_ring_{n}r_{k}c", "allgather", n, n * k)
    for c in range(k):
        for r in range(n):
            if n == 1:
                b.threadblock(r, channel=c).copy(I, c, O, r * k + c)
                continue
            tb = b.threadblock(r, send=(r + 1) % n, recv=(r - 1) % n, channel=c)
            tb.copy(I, c, O, r * k + c)
            tb.send(I, c)
            for t in range(1, n - 1):
                tb.recv_copy_send(O, ((r - t) % n) * k + c)
            tb.recv(O, ((r + 1) % n) * k + c)
    return b.build()
