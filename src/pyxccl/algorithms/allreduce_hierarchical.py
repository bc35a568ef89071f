"""Hierarchical allreduce (MSCCL): intra-host reduce-scatter, inter-host reduce-scatter,
inter-host allgather, intra-host allgather.

Needs ``hosts`` (the ranks of each host, at least 2 hosts). Per channel the buffer is
cut into Lmax x H chunks: Lmax columns (Lmax = the most ranks on a host) of H chunks.

1. intra-host ring reduce-scatter of the columns: local rank l ends with column l
   reduced over its host (on uneven hosts a rank serves columns l, l+L, ...);
2. + 3. per column, NCCL's fused ring allreduce across hosts among the H ranks serving
   it (its reduce-scatter then allgather half), one chunk per host;
4. intra-host ring allgather of the columns.

Only 2 (H-1)/(H Lmax) of the buffer crosses hosts per rank, in 2(H-1) steps, instead
of the flat ring's 2(n-1)/n in 2(n-1) steps: the win on slow inter-host links.
See :mod:`._hier` for the shared builder.

Bytes on the wire per rank (uniform L x H, buffer S): intra-host 2 (L-1)/L * S,
inter-host 2 (H-1)/(H L) * S.
Supports: hosts with >= 2 hosts, any number of ranks per host (uneven shapes too),
ranks in any order; nchannels >= 1; needs 2 FIFO slots per connection (``MIN_SLOTS``). Not nranks == 1 or a single host (InvalidArgument).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.program import Program
from ._common import host_shape, reason
from ._hier import build_two_level

#: FIFO slots per connection: the rings hold one message per link while every step receives and sends
MIN_SLOTS = 2
PRIORITY = 160


def unsupported(nranks: int, hosts=None) -> str | None:
    """Why this algorithm cannot serve the shape (None: it can)."""
    return reason(lambda: host_shape(nranks, hosts, what="allreduce hierarchical", contiguous=True))


def supports(nranks: int, hosts=None) -> bool:
    """At least 2 hosts."""
    return unsupported(nranks, hosts) is None


def build(nranks: int, *, nchannels: int = 1, root: int = 0, hosts=None) -> Program:
    """The hierarchical allreduce for ``hosts`` (root is ignored)."""
    if nchannels < 1:
        raise InvalidArgument(f"nchannels must be >= 1, got {nchannels}")
    shape = host_shape(nranks, hosts, what="allreduce hierarchical", contiguous=True)
    return build_two_level(f"allreduce_hierarchical_{shape.H}h_{nranks}r_{nchannels}c", shape, nchannels, "ring")
