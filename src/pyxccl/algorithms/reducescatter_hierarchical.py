"""Hierarchical reduce-scatter: a reduce-scatter inside each host, then one across hosts
among the ranks with the same local rank.

Needs ``hosts`` (at least 2 hosts). Each block is ``k = nchannels`` chunks; messages
carry whole blocks. Column c is the blocks of the ranks with local rank c
(:class:`~._common.Shape`, blocked: on a host with fewer ranks, local rank c % L[h]
serves column c for it).

1. Ring reduce-scatter inside the host over the *sets* of blocks the local ranks serve
   (local rank l: every block of its columns, on every host), one message per hop:
   sets that are not a contiguous range of the input are first packed into scratch
   (``cpy`` per block, runs merged); the host's partial sums of a rank's set land in
   scratch.
2. Per column the rank serves: ring reduce-scatter across hosts (IR channel
   ``c // Lmin``) among the H ranks serving it; the partial sum of an owner's block
   starts at the next host and ends (``rrc``) in the owner's output.

Bytes on the wire per rank (uniform L x H, output blocks of S bytes): intra-host
(L-1) * H * S, inter-host (H-1) * S.
Supports: hosts with >= 2 hosts, any number of ranks per host (uneven shapes too),
ranks in any order; nchannels >= 1; needs 2 FIFO slots per connection (``MIN_SLOTS``).
Not nranks == 1 or a single host (InvalidArgument).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import Piece, TBs, host_shape, reason, ring_reduce_scatter, runs

I, O, S = Buf.INPUT, Buf.OUTPUT, Buf.SCRATCH
MIN_SLOTS = 2
PRIORITY = 160


def unsupported(nranks: int, hosts=None) -> str | None:
    """Why this algorithm cannot serve the shape (None: it can)."""
    return reason(lambda: host_shape(nranks, hosts, what="reducescatter hierarchical"))


def supports(nranks: int, hosts=None) -> bool:
    """At least 2 hosts."""
    return unsupported(nranks, hosts) is None


def build(nranks: int, *, nchannels: int = 1, root: int = 0, hosts=None) -> Program:
    """The hierarchical reduce-scatter for ``hosts`` (blocks of ``nchannels`` chunks; root is ignored)."""
    kb = nchannels
    if kb < 1:
        raise InvalidArgument(f"nchannels must be >= 1, got {kb}")
    shape = host_shape(nranks, hosts, what="reducescatter hierarchical")
    H = shape.H
    b = ProgramBuilder(f"reducescatter_hierarchical_{H}h_{nranks}r_{kb}c", "reducescatter", nranks, nranks * kb)
    tbs = TBs(b)
    for h, ranks in enumerate(shape.hosts):
        Lh = shape.L[h]
        sets = [shape.column_blocks(h, q) for q in range(Lh)]
        # scratch: packed copies of the non-contiguous sets, then one accumulator region per set
        src_at: list[tuple[Buf, int]] = []
        acc_at: list[int] = []
        off = 0
        for blocks in sets:
            if blocks == list(range(blocks[0], blocks[0] + len(blocks))):
                src_at.append((I, blocks[0] * kb))
            else:
                src_at.append((S, off * kb))
                off += len(blocks)
        for blocks in sets:
            acc_at.append(off)
            off += len(blocks)
        for l, r in enumerate(ranks):
            finals: list[StepRef | None] = []
            acc: dict[int, tuple[Buf, int]] = {}
            if Lh > 1:
                intra = tbs.get(r, ranks[(l + 1) % Lh], ranks[(l - 1) % Lh])
                for q, blocks in enumerate(sets):
                    if src_at[q][0] is S:
                        for blk, i, m in runs((blk, i) for i, blk in enumerate(blocks)):
                            intra.copy(I, blk * kb, S, src_at[q][1] + i * kb, m * kb)

                def pieces(q: int) -> list[Piece]:
                    return [Piece(src_at[q], (S, acc_at[q] * kb), len(sets[q]) * kb)]

                finals = ring_reduce_scatter(intra, l, Lh, pieces)
                acc = {blk: (S, (acc_at[l] + i) * kb) for i, blk in enumerate(sets[l])}
            for c in shape.cols(h, l):
                members = [shape.member(g, c) for g in range(H)]
                tb = tbs.get(r, members[(h + 1) % H], members[(h - 1) % H], shape.channel(c))

                def col_pieces(g: int, c: int = c) -> list[Piece]:
                    if not shape.owns(g, c):
                        return []
                    blk = shape.hosts[g][c]
                    return [Piece(acc.get(blk, (I, blk * kb)), (O, 0), kb)]

                ring_reduce_scatter(tb, h, H, col_pieces, deps=finals)
    return b.build()
