"""ACCL's hybrid allreduce (Alibaba): intra-host ring reduce-scatter, inter-host
recursive halving-doubling allreduce, intra-host ring allgather.

Needs ``hosts`` (at least 2 hosts). As :mod:`.allreduce_hierarchical` but the
allreduce across hosts of each column is Rabenseifner's halving-doubling among the H
ranks serving it (columns of P chunks, P = the largest power of two <= H; hosts beyond
P fold pairwise first): 2 log2 P inter-host steps instead of 2(H-1).

Bytes on the wire per rank (uniform L x H, buffer S): intra-host 2 (L-1)/L * S,
inter-host 2 (P-1)/(P L) * S (+ S/L before and after on folded hosts).
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
PRIORITY = 170


def unsupported(nranks: int, hosts=None) -> str | None:
    """Why this algorithm cannot serve the shape (None: it can)."""
    return reason(lambda: host_shape(nranks, hosts, what="allreduce accl", contiguous=True))


def supports(nranks: int, hosts=None) -> bool:
    """At least 2 hosts."""
    return unsupported(nranks, hosts) is None


def build(nranks: int, *, nchannels: int = 1, root: int = 0, hosts=None) -> Program:
    """The ACCL hybrid allreduce for ``hosts`` (root is ignored)."""
    if nchannels < 1:
        raise InvalidArgument(f"nchannels must be >= 1, got {nchannels}")
    shape = host_shape(nranks, hosts, what="allreduce accl", contiguous=True)
    return build_two_level(f"allreduce_accl_{shape.H}h_{nranks}r_{nchannels}c", shape, nchannels, "rhd")
