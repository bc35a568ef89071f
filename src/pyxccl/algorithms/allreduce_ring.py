"""Ring allreduce (NCCL's ring): reduce-scatter then allgather around r -> r+1.

Each of ``nchannels`` rings owns its own slice of the buffer: the buffer is cut
into ``n * nchannels`` chunks and channel ``c`` handles chunks ``c*n .. c*n+n-1``
(chunk ``c*n+j`` is called "chunk j" below). On every channel rank ``r`` runs one
thread block (send to r+1, recv from r-1) with 2n-1 steps, 2(n-1) of them receives:

1. ``s``    chunk r of its input;
2. ``rrs``  n-2 times: receive chunk r-s, add its own input chunk, forward;
3. ``rrcs`` receive chunk r+1, add its own input: the chunk is fully reduced; store
   it into the output and forward it (the allgather starts);
4. ``rcs``  n-2 times: receive a reduced chunk, store it, forward it;
5. ``r``    the last reduced chunk (r+2), stored only.

In place every chunk is read (steps 1-3) before it is overwritten (3-5) by the same
thread block, so the same program serves both modes. nranks == 1: one ``cpy``.

Bytes on the wire per rank: 2 (n-1)/n * S for a buffer of S bytes.
Supports every nranks >= 1 and nchannels >= 1; needs 2 FIFO slots per connection
(``MIN_SLOTS``).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program

I, O = Buf.INPUT, Buf.OUTPUT

#: FIFO slots per connection the ring needs: every step after the first both receives and sends and every link of
#: the ring holds one message, so with a single slot all ranks would wait for room
#: (a real deadlock, as in NCCL; its transports have NCCL_STEPS = 8 slots).
MIN_SLOTS = 2


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The ring allreduce for ``nranks`` ranks and ``nchannels`` rings (root is ignored)."""
    n = nranks
    if n < 1 or nchannels < 1:
        raise InvalidArgument(f"allreduce ring: need nranks >= 1 and nchannels >= 1, got {n}, {nchannels}")
    b = ProgramBuilder(f"allreduce_ring_{n}r_{nchannels}c", "allreduce", n, n * nchannels)
    if n == 1:
        b.threadblock(0).copy(I, 0, O, 0, cnt=n * nchannels)
        return b.build()
    for c in range(nchannels):
        for r in range(n):
            tb = b.threadblock(r, send=(r + 1) % n, recv=(r - 1) % n, channel=c)

            def ch(j: int) -> int:
                return c * n + j % n

            tb.send(I, ch(r))
            for s in range(1, n - 1):
                tb.recv_reduce_send(I, ch(r - s))
            tb.recv_reduce_copy_send(I, ch(r + 1), O, ch(r + 1))
            for t in range(1, n - 1):
                tb.recv_copy_send(O, ch(r + 1 - t))
            tb.recv(O, ch(r + 2))
    return b.build()
