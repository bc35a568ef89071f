"""Recursive-doubling allgather: log2 p exchanges, the gathered range doubling each time.

p = the largest power of two <= n. Each block is ``k = nchannels`` chunks and every
message carries whole blocks (one channel; nchannels only cuts blocks finer).
Rank r (virtual rank v) first copies its input into its output block (``cpy``, a
self-copy in place); at step k it exchanges with virtual rank v XOR 2^k, on one
thread block per partner: ``s`` the 2^k virtual ranks' blocks it holds, ``r`` the
partner's 2^k. Virtual rank v stands for real blocks 2v, 2v+1 (v < n-p) or v+n-p, so
every virtual range is one contiguous range of output blocks: one message.

Non-powers of two (the standard pre/post step): of the first 2(n-p) ranks each even
rank sends its block to the odd rank above it (``s``) and receives every other block
from it at the end (``r``, one or two messages); the odd rank stores it (``r``) and
sends the rest back after the last exchange. nranks == 1: one ``cpy``.

Bytes on the wire per rank: (p-1)/p of the output (+ the pre/post traffic of the
folded ranks) in log2(p) (+2) steps, i.e. about (n-1) * S for blocks of S bytes.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import TBs, pow2_floor

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 120


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The recursive-doubling allgather for ``nranks`` ranks (blocks of ``nchannels`` chunks; root is ignored)."""
    n, kb = nranks, nchannels
    if n < 1 or kb < 1:
        raise InvalidArgument(f"allgather recursive_doubling: need nranks >= 1 and nchannels >= 1, got {n}, {kb}")
    b = ProgramBuilder(f"allgather_recursive_doubling_{n}r_{kb}c", "allgather", n, n * kb)
    tbs = TBs(b)
    p = pow2_floor(n)
    rem = n - p

    def start(v: int) -> int:  # first real block of virtual rank v (v may be p: the end)
        return 2 * v if v < rem else v + rem

    def real(v: int) -> int:
        return 2 * v + 1 if v < rem else v + rem

    for r in range(n):
        if r < 2 * rem and r % 2 == 1:  # folds r-1 in: copy and receive on one thread block (one dependency)
            own = tbs.get(r, r - 1, r - 1).copy(I, 0, O, r * kb, kb)
        else:
            own = tbs.local(r).copy(I, 0, O, r * kb, kb)
        if r < 2 * rem and r % 2 == 0:  # folded away
            tb = tbs.get(r, r + 1, r + 1)
            tb.send(I, 0, kb, deps=[own])
            for lo, hi in ((0, r), (r + 1, n)):
                if hi > lo:
                    tb.recv(O, lo * kb, (hi - lo) * kb)
            continue
        v = r // 2 if r < 2 * rem else r - rem
        deps: list[StepRef | None] = [own]
        post = None
        if r < 2 * rem:
            post = tbs.get(r, r - 1, r - 1)
            deps = [post.recv(O, (r - 1) * kb, kb)]
        d = 1
        while d < p:
            tb = tbs.get(r, real(v ^ d), real(v ^ d))
            mlo = v & ~(d - 1)
            plo = (v ^ d) & ~(d - 1)
            tb.send(O, start(mlo) * kb, (start(mlo + d) - start(mlo)) * kb, deps=deps)
            deps = [tb.recv(O, start(plo) * kb, (start(plo + d) - start(plo)) * kb)]
            d *= 2
        if post is not None:
            e = r - 1
            for lo, hi in ((0, e), (e + 1, n)):
                if hi > lo:
                    post.send(O, lo * kb, (hi - lo) * kb, deps=deps)
    return b.build()
