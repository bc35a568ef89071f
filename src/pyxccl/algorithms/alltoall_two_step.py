"""Two-step all-to-all (MSCCL's alltoall two_step): aggregate inside the host first, so
hosts exchange few large messages.

Needs ``hosts`` with the same number L of ranks on each of H >= 2 hosts. Each block
is ``k = nchannels`` chunks. Rank (h, l) is the aggregator, on host h, of everything
bound for the ranks with local rank l on the other hosts.

1. Inside the host: rank (h, l) sends each host peer (h, l') the H blocks bound for
   local rank l' on every host (one message per block, sent and received alternately:
   ``s``, ``r``, ...): the one for (h, l') itself lands in its output, the others in
   its scratch region for that destination host. Its own such blocks are copied
   (``cpy``) into place.
2. Across hosts: rank (h, l) sends rank (h', l), for every other host h', the L blocks
   it aggregated for it in one message (``s``) and receives the L blocks host h' sent
   it (``r``, into scratch), then unpacks them into its output (``cpy``, after its own
   input has been sent: the in-place output is the input).

Inter-host traffic: H-1 messages of L blocks per rank instead of (H-1) L single blocks.

Bytes on the wire per rank (blocks of S bytes): intra-host (L-1) * H * S, inter-host
(H-1) * L * S.
Supports: hosts with >= 2 hosts and the same number of ranks on each (any order of
ranks); nchannels >= 1. Not nranks == 1, a single host or uneven hosts (InvalidArgument).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.builder import ProgramBuilder, StepRef
from ..ir.program import Buf, Program
from ._common import TBs, host_shape, reason, runs

I, O, S = Buf.INPUT, Buf.OUTPUT, Buf.SCRATCH
PRIORITY = 160


def unsupported(nranks: int, hosts=None) -> str | None:
    """Why this algorithm cannot serve the shape (None: it can)."""
    return reason(lambda: host_shape(nranks, hosts, uniform=True, what="alltoall two_step"))


def supports(nranks: int, hosts=None) -> bool:
    """At least 2 hosts with the same number of ranks each."""
    return unsupported(nranks, hosts) is None


def build(nranks: int, *, nchannels: int = 1, root: int = 0, hosts=None) -> Program:
    """The two-step all-to-all for ``hosts`` (blocks of ``nchannels`` chunks; root is ignored)."""
    kb = nchannels
    if kb < 1:
        raise InvalidArgument(f"nchannels must be >= 1, got {kb}")
    shape = host_shape(nranks, hosts, uniform=True, what="alltoall two_step")
    H, L, hs = shape.H, shape.Lmax, shape.hosts
    b = ProgramBuilder(f"alltoall_two_step_{H}h_{nranks}r_{kb}c", "alltoall", nranks, nranks * kb)
    tbs = TBs(b)
    others = lambda h: [(h + i) % H for i in range(1, H)]  # noqa: E731

    def agg(g: int, h: int, l: int) -> int:
        """Scratch block of slot l of the aggregation region for destination host g, on host h."""
        return (others(h).index(g)) * L + l

    def inbox(g: int, h: int) -> int:
        """Scratch block where host h's rank receives the L blocks from host g."""
        return (H - 1) * L + others(h).index(g) * L

    for h in range(H):
        for l, r in enumerate(hs[h]):
            local = tbs.local(r)
            sent: list[StepRef | None] = [local.copy(I, r * kb, O, r * kb, kb)]
            for g in others(h):
                sent.append(local.copy(I, hs[g][l] * kb, S, agg(g, h, l) * kb, kb))
            ready: list[StepRef | None] = list(sent)
            for i in range(1, L):
                lp = (l + i) % L
                q = hs[h][lp]
                tb = tbs.get(r, q, q)
                # q sends me, for each host g (q's order: g = h first, then others(h)), its block for (g, l)
                for g in [h] + others(h):
                    sent.append(tb.send(I, hs[g][lp] * kb, kb))
                    if g == h:
                        ready.append(tb.recv(O, q * kb, kb))
                    else:
                        ready.append(tb.recv(S, agg(g, h, lp) * kb, kb))
            for g in others(h):
                q = hs[g][l]
                tb = tbs.get(r, q, q)
                tb.send(S, agg(g, h, 0) * kb, L * kb, deps=ready)
                got = tb.recv(S, inbox(g, h) * kb, L * kb)
                deps: list[StepRef | None] = [got] + sent
                for blk, dst, m in runs((inbox(g, h) + lp, hs[g][lp]) for lp in range(L)):
                    tb.copy(S, blk * kb, O, dst * kb, m * kb, deps=deps)
                    deps = []
    return b.build()
