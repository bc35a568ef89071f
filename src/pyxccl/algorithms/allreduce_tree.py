"""Double binary tree allreduce (NCCL's trees, src/graph/trees.cc).

Two binary trees over the ranks (:func:`dtree`, NCCL's ``ncclGetDtree``): tree 0 is
the in-order tree where a rank's height is the index of its lowest set bit (root 0,
:func:`btree`); tree 1 is its mirror (n even) or its shift by one (n odd), so that
(for even n) no rank is an inner node in both. Each tree reduces then broadcasts
half of the buffer: 2 chunks per channel, chunk 2c+t on tree t, tree t of channel c
on IR channel t * nchannels + c (NCCL's ``channel1 = channel0 + nChannels``).

Per tree, rank r with children c1 (, c2) and parent p:

* leaf: one thread block towards p: ``s`` its input chunk, ``r`` the result;
* inner node: towards c1 (send and recv): ``rrc`` input + c1's partial into the output;
  towards p, receiving from the last child: ``rrs`` its partial + that child's partial
  up to p (after the first child's ``rrc`` when there are two); receiving from p,
  sending to the last child: ``rcs`` the result into the output and down; the first
  child's thread block then sends it the result (``s``);
* root: the last child's partial is stored (``rrc``), then sent down to each child (``s``).

A large buffer pipelines through the tree slice by slice. nranks == 1: one ``cpy``.

Bytes on the wire per rank: at most S (up, half per tree) + 2 * S/2 per child down
(S = the buffer); 2 ceil(log2 n) hops of latency.
Supports every nranks >= 1 and nchannels >= 1.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program
from ._common import TBs

I, O = Buf.INPUT, Buf.OUTPUT
PRIORITY = 110


def supports(nranks: int) -> bool:
    """Every rank count."""
    return nranks >= 1


def btree(n: int, r: int) -> tuple[int, int, int, int]:
    """NCCL's ``ncclGetBtree(n, r)``: (up, down0, down1, parentChildType); -1 = none.

    ``parentChildType`` is 0 when r is its parent's first child (r < up), 1 otherwise,
    and -1 for the root (NCCL leaves it unwritten).
    """
    bit = 1
    while bit < n:
        if bit & r:
            break
        bit <<= 1
    if r == 0:
        return -1, -1, (bit >> 1 if n > 1 else -1), -1
    up = (r ^ bit) | (bit << 1)
    if up >= n:
        up = r ^ bit
    ptype = 0 if r < up else 1
    low = bit >> 1
    if low == 0:
        return up, -1, -1, ptype
    down0 = r - low
    down1 = -1
    while low:
        if r + low < n:
            down1 = r + low
            break
        low >>= 1
    return up, down0, down1, ptype


def dtree(n: int, r: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """NCCL's ``ncclGetDtree(n, r)``: (tree 0, tree 1), each (up, down0, down1, parentChildType)."""
    t0 = btree(n, r)
    if n % 2 == 0:  # mirror
        u, d0, d1, pt = btree(n, n - 1 - r)
        t1 = tuple(n - 1 - x if x != -1 else -1 for x in (u, d0, d1)) + (pt,)
    else:  # shift
        u, d0, d1, pt = btree(n, (r - 1 + n) % n)
        t1 = tuple((x + 1) % n if x != -1 else -1 for x in (u, d0, d1)) + (pt,)
    return t0, t1  # type: ignore[return-value]


def build(nranks: int, *, nchannels: int = 1, root: int = 0) -> Program:
    """The double binary tree allreduce for ``nranks`` ranks on ``nchannels`` channels (root is ignored)."""
    n = nranks
    if n < 1 or nchannels < 1:
        raise InvalidArgument(f"allreduce tree: need nranks >= 1 and nchannels >= 1, got {n}, {nchannels}")
    b = ProgramBuilder(f"allreduce_tree_{n}r_{nchannels}c", "allreduce", n, 2 * nchannels)
    tbs = TBs(b)
    if n == 1:
        tbs.local(0).copy(I, 0, O, 0, cnt=2 * nchannels)
        return b.build()
    for c in range(nchannels):
        for r in range(n):
            for t, (up, d0, d1, _) in enumerate(dtree(n, r)):
                ch, x = t * nchannels + c, 2 * c + t
                kids = [k for k in (d0, d1) if k != -1]
                if not kids:  # leaf
                    tb = tbs.get(r, up, up, ch)
                    tb.send(I, x)
                    tb.recv(O, x)
                    continue
                first = last = None
                if len(kids) == 2:
                    first = tbs.get(r, kids[0], kids[0], ch)
                    acc = first.recv_reduce_copy(I, x, O, x)
                    src = O
                else:
                    acc, src = None, I
                if up == -1:  # root: keep the last partial, send the result down
                    last = tbs.get(r, kids[-1], kids[-1], ch)
                    done = last.recv_reduce_copy(src, x, O, x, deps=[acc])
                    last.send(O, x)
                    if first is not None:
                        first.send(O, x, deps=[done])
                    continue
                tbs.get(r, up, kids[-1], ch).recv_reduce_send(src, x, deps=[acc])
                down = tbs.get(r, kids[-1], up, ch).recv_copy_send(O, x)
                if first is not None:
                    first.send(O, x, deps=[down])
    return b.build()
