"""Bruck allgather: ceil(log2 n) steps for every n, no power-of-two restriction.

Each block is ``k = nchannels`` chunks; messages carry whole blocks (one channel).
Rank r copies its input into its output block (``cpy``), then at step k (d = 2^k < n)
it sends the m = min(d, n-d) blocks r, r+1, ..., r+m-1 it holds (mod n) to rank r-d
and receives blocks r+d, ..., r+d+m-1 from rank r+d (one thread block per step,
sending to r-d and receiving from r+d). Blocks are addressed by their place in the
output, so there is no final rotation; a range that wraps past block n-1 travels as
two messages, sent and received alternately (``s``, ``r``, ``s``, ``r``: one FIFO slot
suffices). Step k waits for step k-1's receives. nranks == 1: one ``cpy``.

Bytes on the wire per rank: (n-1) * S in ceil(log2 n) steps (S = one block).
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import TBs

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 130


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def _ranges(lo: int, m: int, n: int) -> list[tuple[int, int]]:
    """Blocks lo, lo+1, ..., lo+m-1 (mod n) as (first block, count) ranges that do not wrap."""
    lo %= n
    if lo + m <= n:
        return [(lo, m)]
    return [(lo, n - lo), (0, lo + m - n)]


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The Bruck allgather for ``nranks`` ranks (blocks of ``nchannels`` chunks; root is ignored)."""
    n, kb = nranks, nchannels
    if n < 1 or kb < 1:
        raise InvalidArgument(f"allgather bruck: need nranks >= 1 and nchannels >= 1, got {n}, {kb}")
    b = ProgramBuilder(f"allgather_bruck_{n}r_{kb}c", "allgather", n, n * kb)
    tbs = TBs(b)
    for r in range(n):
        deps: list[StepRef | None] = [tbs.local(r).copy(I, 0, O, r * kb, kb)]
        d = 1
        while d < n:
            m = min(d, n - d)
            tb = tbs.get(r, (r - d) % n, (r + d) % n)
            outs, ins = _ranges(r, m, n), _ranges(r + d, m, n)
            got = []
            for i in range(max(len(outs), len(ins))):
                if i < len(outs):
                    tb.send(O, outs[i][0] * kb, outs[i][1] * kb, deps=deps if i == 0 else ())
                if i < len(ins):
                    got.append(tb.recv(O, ins[i][0] * kb, ins[i][1] * kb))
            deps = got[-1:]  # the step's last receive (program order covers the first)
            d *= 2
    return b.build()
