"""BCube allreduce (Gloo's bcube): groups of up to ``BASE`` peers, reduce-scatter inside
the group, allreduce across groups (recursively), allgather inside the group.

n is written in mixed radix n = b_0 * b_1 * ... * b_{d-1} (:func:`radix`: prime factors
merged greedily while the product stays <= BASE; a prime factor above BASE is a digit
of its own). At step s rank r's group is the b_s ranks that differ from r only in digit
s. The buffer is cut into n chunks per channel; rank r's range starts as all of them.

1. Reduce-scatter, steps s = 0..d-1: the current range is cut into b_s parts, part j
   for the group member with digit j. Per member q one thread block (send to q, recv
   from q): ``s`` q's part of this rank's partial, then ``rrc`` q's contribution to this
   rank's part (reductions chained in member order; step s+1 waits for step s).
2. Allgather, steps s = d-1..0 (same thread blocks): ``s`` this rank's range, ``r`` q's part.

After step 1 rank r holds 1/n of the buffer reduced; with BASE = 2 and n a power of two
this is halving-doubling with direct exchanges, with a single digit (n prime or
<= BASE) it is all-pairs. nranks == 1: one ``cpy``.

Bytes on the wire per rank: 2 * sum_s (b_s - 1)/(b_0...b_s) * S in 2d steps, for a
buffer of S bytes.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import TBs

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 150
#: largest group (Gloo's ``base``) that factors are merged up to
BASE = 4


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def radix(n: int, base: int = BASE) -> list[int]:
    """The group sizes b_0, b_1, ... (product n), largest first."""
    primes, m, f = [], n, 2
    while m > 1:
        while m % f == 0:
            primes.append(f)
            m //= f
        f += 1 if f == 2 else 2
        if f * f > m and m > 1:
            primes.append(m)
            break
    digits: list[int] = []
    for p in sorted(primes, reverse=True):
        for i, d in enumerate(digits):
            if d * p <= base:
                digits[i] = d * p
                break
        else:
            digits.append(p)
    return sorted(digits, reverse=True)


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The BCube allreduce for ``nranks`` ranks on ``nchannels`` channels (root is ignored)."""
    n = nranks
    if n < 1 or nchannels < 1:
        raise InvalidArgument(f"allreduce bcube: need nranks >= 1 and nchannels >= 1, got {n}, {nchannels}")
    b = ProgramBuilder(f"allreduce_bcube_{n}r_{nchannels}c", "allreduce", n, n * nchannels)
    tbs = TBs(b)
    if n == 1:
        tbs.local(0).copy(I, 0, O, 0, cnt=nchannels)
        return b.build()
    digits = radix(n)
    weights = [1]
    for d in digits[:-1]:
        weights.append(weights[-1] * d)
    for c in range(nchannels):
        base = c * n
        for r in range(n):
            lo, ln = 0, n
            deps: list[StepRef | None] = []
            first = True
            levels = []  # (members [(q, part start)], my range before the step)
            for s, bs in enumerate(digits):
                w = weights[s]
                mine = (r // w) % bs
                part = ln // bs
                members = [(r + (j - mine) * w, lo + j * part) for j in range(bs)]
                levels.append((members, (lo, ln)))
                acc: StepRef | None = None
                order = [members[(mine + i) % bs] for i in range(1, bs)]
                for i, (q, start) in enumerate(order):
                    tb = tbs.get(r, q, q, c)
                    tb.send(I if first else O, base + start, part, deps=deps)
                    acc = tb.recv_reduce_copy(I if first and i == 0 else O, base + lo + mine * part,
                                              O, base + lo + mine * part, part, deps=[acc])
                deps = [acc]
                first = False
                lo, ln = lo + mine * part, part
            for s in reversed(range(len(digits))):
                members, (plo, pln) = levels[s]
                bs = digits[s]
                mine = (r // weights[s]) % bs
                got = []
                for i in range(1, bs):
                    q, start = members[(mine + i) % bs]
                    tb = tbs.get(r, q, q, c)
                    tb.send(O, base + lo, ln, deps=deps)
                    got.append(tb.recv(O, base + start, ln))
                deps = got
                lo, ln = plo, pln
    return b.build()
