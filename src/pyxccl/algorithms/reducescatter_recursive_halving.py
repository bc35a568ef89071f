"""Recursive-halving reduce-scatter: log2 p exchanges, the range halving each time.

p = the largest power of two <= n. Each block is ``k = nchannels`` chunks; messages
carry whole blocks (one channel). Virtual rank v stands for the real blocks 2v, 2v+1
(v < n-p) or v+n-p, so a range of virtual ranks is one contiguous range of blocks.

At step k = log2(p)-1 .. 0 (distance 2^k, halving) rank v splits its current range
of virtual ranks in two halves, keeps the one holding v, and exchanges with
v XOR 2^k on one thread block: ``s`` the partner's half of its partial sums, ``rrc``
the partner's contribution to its own half, accumulated in scratch (the input is
read-only out of place). The last step writes its own block straight to the output.

Non-powers of two (the standard pre/post step): of the first 2(n-p) ranks each even
rank sends its whole input to the odd rank above it, which folds it in (``rrc`` into
scratch), serves both blocks, and at the end sends the even rank its block.
nranks == 1: one ``cpy``.

Bytes on the wire per rank: (p-1)/p of the input (+ the folded ranks' pre/post traffic)
in log2(p) (+2) steps, i.e. about (n-1) * S for output blocks of S bytes.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import TBs, pow2_floor

I, O, S = Buf.INPUT, Buf.OUTPUT, Buf.SCRATCH
PRIORITY = 120


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The recursive-halving reduce-scatter for ``nranks`` ranks (blocks of ``nchannels`` chunks; root is ignored)."""
    n, kb = nranks, nchannels
    if n < 1 or kb < 1:
        raise InvalidArgument(f"reducescatter recursive_halving: need nranks >= 1 and nchannels >= 1, got {n}, {kb}")
    b = ProgramBuilder(f"reducescatter_recursive_halving_{n}r_{kb}c", "reducescatter", n, n * kb)
    tbs = TBs(b)
    if n == 1:
        tbs.local(0).copy(I, 0, O, 0, kb)
        return b.build()
    p = pow2_floor(n)
    rem = n - p

    def start(v: int) -> int:
        return 2 * v if v < rem else v + rem

    def real(v: int) -> int:
        return 2 * v + 1 if v < rem else v + rem

    for r in range(n):
        if r < 2 * rem and r % 2 == 0:  # folded away
            tb = tbs.get(r, r + 1, r + 1)
            tb.send(I, 0, n * kb)
            tb.recv(O, 0, kb)
            continue
        v = r // 2 if r < 2 * rem else r - rem
        deps: list[StepRef | None] = []
        src, post = I, None
        if r < 2 * rem:
            post = tbs.get(r, r - 1, r - 1)
            deps = [post.recv_reduce_copy(I, 0, S, 0, n * kb)]
            src = S
        lo, ln = 0, p  # virtual range
        d = p // 2
        while d >= 1:
            half = ln // 2
            keep, give = (lo + half, lo) if v & d else (lo, lo + half)
            tb = tbs.get(r, real(v ^ d), real(v ^ d))
            tb.send(src, start(give) * kb, (start(give + half) - start(give)) * kb, deps=deps)
            k0, k1 = start(keep), start(keep + half)
            if d == 1 and k1 - k0 == 1:  # the last step: only this rank's block is left
                deps = [tb.recv_reduce_copy(src, k0 * kb, O, 0, kb)]
            else:
                deps = [tb.recv_reduce_copy(src, k0 * kb, S, k0 * kb, (k1 - k0) * kb)]
            src = S
            lo, ln = keep, half
            d //= 2
        if post is not None:  # blocks r-1 (the folded rank's) and r are in scratch
            tbs.local(r).copy(S, r * kb, O, 0, kb, deps=deps)
            post.send(S, (r - 1) * kb, kb, deps=deps)
    return b.build()
