"""Relabel a program's ranks: run an algorithm built for ring positions on a given rank order.

Flat algorithms place rank ``r`` next to ``r+1``. When ranks of one host are not
contiguous (round-robin launchers), the communicator builds the program for ring
*positions* and relabels position ``p`` as rank ``order[p]``, so every ring enters and
leaves a host once (NCCL orders its rings the same way). Peers are renamed, and in the
buffers whose blocks belong to ranks (allgather's output, reducescatter's input, both
alltoall buffers, gather's output, scatter's input) block ``b`` becomes block
``order[b]``. The result is verified before use.
"""

from __future__ import annotations

from dataclasses import replace

from .program import Buf, Program, RankProgram, Step, ThreadBlock

#: buffers whose blocks are indexed by rank, per collective
_RANK_BLOCKS = {
    "allgather": {Buf.OUTPUT}, "gather": {Buf.OUTPUT}, "reducescatter": {Buf.INPUT}, "scatter": {Buf.INPUT},
    "alltoall": {Buf.INPUT, Buf.OUTPUT},
}


def relabel(program: Program, order: list[int]) -> Program | None:
    """``program`` with position ``p`` played by rank ``order[p]``; None when a step's chunk range
    crosses a block boundary (it could not be renamed block by block)."""
    n = program.nranks
    if sorted(order) == list(range(n)) and order == list(range(n)):
        return program
    k = program.chunks_per_block
    blocked = _RANK_BLOCKS.get(program.collective, set())

    def chunk(buf: Buf | None, off: int, cnt: int) -> int | None:
        if buf not in blocked or off < 0:
            return off
        block, cls = divmod(off, k)
        if cls + cnt > k:
            return None
        return order[block] * k + cls

    def peer(q: int) -> int:
        return order[q] if q >= 0 else q

    ranks: list[RankProgram | None] = [None] * n
    for p, rp in enumerate(program.ranks):
        tbs = []
        for tb in rp.tbs:
            steps = []
            for st in tb.steps:
                src, dst = chunk(st.srcbuf, st.srcoff, st.cnt), chunk(st.dstbuf, st.dstoff, st.cnt)
                if src is None or dst is None:
                    return None
                steps.append(Step(st.op, st.srcbuf, src, st.dstbuf, dst, st.cnt, st.deps))
            tbs.append(ThreadBlock(tb.id, peer(tb.send), peer(tb.recv), tb.channel, steps))
        ranks[order[p]] = RankProgram(order[p], rp.i_chunks, rp.o_chunks, rp.s_chunks, tbs)
    root = order[program.root] if program.root is not None else None
    return replace(program, name=f"{program.name}_relabeled", ranks=ranks, root=root)  # type: ignore[arg-type]
