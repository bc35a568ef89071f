"""Hierarchical allgather (MiCS): an allgather across hosts among the ranks with the same
local rank, then an allgather inside each host.

Needs ``hosts`` (at least 2 hosts). Each block is ``k = nchannels`` chunks; messages
carry whole blocks. Column c is the blocks of the ranks with local rank c
(:class:`~._common.Shape`, blocked: on a host with fewer ranks, local rank c % L[h]
relays column c).

1. ``cpy`` the input into the output block (a self-copy in place).
2. Per column the rank serves: ring allgather across hosts (one thread block on IR
   channel ``c // Lmin``): the owners' blocks go around the ring of the H ranks serving
   the column, one block per message (``s`` own, ``rcs`` middle hops, ``r`` the last).
3. Ring allgather inside the host: every rank passes on the set of blocks its columns
   hold, one message per hop. A set that is not a contiguous range of the output (e.g.
   hosts of consecutive ranks, where local rank l's column is l, L+l, ...) is packed in
   scratch: step 2 receives into it and a final ``cpy`` per block (runs merged) unpacks
   it; contiguous sets (e.g. ranks dealt round-robin to hosts) use the output directly.

Only the blocks of the other hosts' same-local-rank ranks cross hosts: (H-1) blocks per
rank, instead of up to (n-1) through a flat ring's host boundaries.

Bytes on the wire per rank (uniform L x H, blocks of S bytes): inter-host (H-1) * S,
intra-host (L-1) * H * S.
Supports: hosts with >= 2 hosts, any number of ranks per host (uneven shapes too),
ranks in any order; nchannels >= 1; needs 2 FIFO slots per connection (``MIN_SLOTS``).
Not nranks == 1 or a single host (InvalidArgument).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import Piece, TBs, host_shape, reason, ring_allgather, runs

I, O, S = Buf.INPUT, Buf.OUTPUT, Buf.SCRATCH
MIN_SLOTS = 2
PRIORITY = 160


def unsupported(nranks: int, hosts=None) -> str | None:
    """Why this algorithm cannot serve the shape (None: it can)."""
    return reason(lambda: host_shape(nranks, hosts, what="allgather hierarchical"))


def supports(nranks: int, hosts=None) -> bool:
    """At least 2 hosts."""
    return unsupported(nranks, hosts) is None


def build(nranks: int, *, nchannels: int = 1, root: int = 0, hosts=None) -> Program:
    """The hierarchical allgather for ``hosts`` (blocks of ``nchannels`` chunks; root is ignored)."""
    kb = nchannels
    if kb < 1:
        raise InvalidArgument(f"nchannels must be >= 1, got {kb}")
    shape = host_shape(nranks, hosts, what="allgather hierarchical")
    H = shape.H
    b = ProgramBuilder(f"allgather_hierarchical_{H}h_{nranks}r_{kb}c", "allgather", nranks, nranks * kb)
    tbs = TBs(b)
    for h, ranks in enumerate(shape.hosts):
        Lh = shape.L[h]
        sets = [shape.column_blocks(h, q) for q in range(Lh)]
        packed, where, off = [], {}, 0  # where[block] = scratch block index (packed sets only)
        for q, blocks in enumerate(sets):
            contiguous = blocks == list(range(blocks[0], blocks[0] + len(blocks)))
            packed.append(not contiguous)
            if not contiguous:
                for i, blk in enumerate(blocks):
                    where[(q, blk)] = off + i
                off += len(blocks)

        def loc(q: int, blk: int) -> tuple[Buf, int]:
            return (S, where[(q, blk)] * kb) if packed[q] else (O, blk * kb)

        for l, r in enumerate(ranks):
            local = tbs.local(r)
            own = local.copy(I, 0, O, r * kb, kb)
            ends: list[StepRef | None] = [own]
            if packed[l]:
                ends.append(local.copy(I, 0, *loc(l, r), kb))
            for c in shape.cols(h, l):
                members = [shape.member(g, c) for g in range(H)]
                tb = tbs.get(r, members[(h + 1) % H], members[(h - 1) % H], shape.channel(c))

                def pieces(g: int, c: int = c) -> list[Piece]:
                    if not shape.owns(g, c):
                        return []
                    blk = shape.hosts[g][c]
                    return [Piece((I, 0), loc(l, blk), kb)]

                ends += ring_allgather(tb, h, H, pieces, deps=[own])
            if Lh > 1:
                intra = tbs.get(r, ranks[(l + 1) % Lh], ranks[(l - 1) % Lh])

                def set_pieces(q: int) -> list[Piece]:
                    first = loc(q, sets[q][0])
                    return [Piece(first, first, len(sets[q]) * kb)]

                ends = ring_allgather(intra, l, Lh, set_pieces, deps=ends)
            unpack = [(where[(q, blk)], blk) for q in range(Lh) if packed[q] for blk in sets[q] if blk != r]
            for s_idx, blk, m in runs(unpack):
                local.copy(S, s_idx * kb, O, blk * kb, m * kb, deps=ends)
                ends = []
    return b.build()
