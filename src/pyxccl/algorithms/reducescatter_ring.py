"""Ring reduce-scatter: partial sums travel n-1 hops around r -> r+1.

Each block (one per destination rank) is cut into ``k = nchannels`` chunks; channel
``c`` reduces chunk ``c`` of every block on its own ring. On each channel rank ``r``
runs one thread block (send to r+1, recv from r-1):

1. ``s``   its input block r-1 (chunk c);
2. ``rrs`` n-2 times: receive the partial sum of block r-1-s, add its own input
   chunk of that block, forward;
3. ``rrc`` receive the partial sum of block r, add its own input chunk into the
   output (in place the output is input block r itself: read and written by one step).

Bytes on the wire per rank: (n-1) * S for an output block of S bytes.
Supports every nranks >= 1 and nchannels >= 1; needs 2 FIFO slots per connection
(``MIN_SLOTS``).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program

I, O = Buf.INPUT, Buf.OUTPUT

#: FIFO slots per connection the ring needs: the rrs steps both receive and send and every link of
#: the ring holds one message, so with a single slot all ranks would wait for room
#: (a real deadlock, as in NCCL; its transports have NCCL_STEPS = 8 slots).
MIN_SLOTS = 2


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The ring reduce-scatter for ``nranks`` ranks and ``nchannels`` rings (root is ignored)."""
    n, k = nranks, nchannels
    if n < 1 or k < 1:
        raise InvalidArgument(f"reducescatter ring: need nranks >= 1 and nchannels >= 1, got {n}, {k}")
    b = ProgramBuilder(f"reducescatter_ring_{n}r_{k}c", "reducescatter", n, n * k)
    for c in range(k):
        for r in range(n):
            if n == 1:
                b.threadblock(r, channel=c).copy(I, c, O, c)
                continue
            tb = b.threadblock(r, send=(r + 1) % n, recv=(r - 1) % n, channel=c)
            tb.send(I, ((r - 1) % n) * k + c)
            for s in range(1, n - 1):
                tb.recv_reduce_send(I, ((r - 1 - s) % n) * k + c)
            tb.recv_reduce_copy(I, r * k + c, O, c)
    return b.build()
