"""The two-level allreduce shared by allreduce_hierarchical, allreduce_accl and allreduce_mics_2hop.

Per channel the buffer is cut into Lmax columns of U chunks (Lmax = the most ranks on
one host; U = H for a ring across hosts, the largest power of two <= H for
halving-doubling). On host h, local rank l serves a contiguous run of columns
(:class:`~._common.Shape` with contiguous=True: on uneven hosts a rank of a smaller host
serves several).

1. intra-host ring reduce-scatter (ring over the host's ranks; a rank's columns are
   contiguous, so one message per hop): the rank serving column c on host h holds column
   c reduced over host h;
2. per column, an allreduce across hosts among the H ranks serving it: NCCL's fused ring
   (``inter="ring"``) or recursive halving-doubling (``inter="rhd"``); column c on IR
   channel ``c % ceil(Lmax / Lmin)`` (a rank serving several columns gets them on
   different channels);
3. intra-host ring allgather of the columns.

With one rank per host steps 1 and 3 vanish; hosts may list their ranks in any order.
"""

from __future__ import annotations

from ..ir.builder import ProgramBuilder
from ..ir.program import Buf, Program
from ._common import Piece, Shape, TBs, rhd_allreduce, rhd_chunks, ring_allgather, ring_allreduce, ring_reduce_scatter

I, O = Buf.INPUT, Buf.OUTPUT


def build_two_level(name: str, shape: Shape, nchannels: int, inter: str) -> Program:
    """The program for ``shape`` (see the module docstring); ``inter`` is "ring" or "rhd"."""
    H = shape.H
    U = H if inter == "ring" else rhd_chunks(H)
    K = shape.Lmax * U
    nir = shape.inter_channels
    b = ProgramBuilder(name, "allreduce", shape.nranks, K * nchannels)
    tbs = TBs(b)
    for ch in range(nchannels):
        base, irc = ch * K, ch * nir
        for h, ranks in enumerate(shape.hosts):
            Lh = shape.L[h]
            for l, r in enumerate(ranks):
                intra = None
                if Lh > 1:
                    intra = tbs.get(r, ranks[(l + 1) % Lh], ranks[(l - 1) % Lh], irc)

                def col_pieces(q: int, src: Buf, h: int = h) -> list[Piece]:
                    cs = shape.cols(h, q)  # contiguous: one message
                    return [Piece((src, base + cs[0] * U), (O, base + cs[0] * U), len(cs) * U)]

                finals = ring_reduce_scatter(intra, l, Lh, lambda q: col_pieces(q, I)) if intra else []
                src = O if intra else I
                ends = []
                for c in shape.cols(h, l):
                    deps = finals
                    members = [shape.member(g, c) for g in range(H)]
                    chan = irc + shape.channel(c)
                    off = base + c * U
                    if inter == "ring":
                        tb = tbs.get(r, members[(h + 1) % H], members[(h - 1) % H], chan)
                        ends += ring_allreduce(tb, h, H, lambda q, off=off: [Piece((src, off + q), (O, off + q), 1)],
                                               deps=deps)
                    else:
                        ends += rhd_allreduce(lambda peer, r=r, chan=chan: tbs.get(r, peer, peer, chan),
                                              members, h, off, src, O, deps=deps)
                if intra:
                    ring_allgather(intra, l, Lh, lambda q: col_pieces(q, O), deps=ends)
    return b.build()
