"""MiCS 2-hop gradient synchronisation (Amazon): reduce-scatter inside groups of hosts,
allreduce across the groups, allgather back inside the groups.

Needs ``hosts`` (at least 2 hosts). The H hosts are cut into H/g groups of g
consecutive hosts, g = :func:`group_size` (the largest divisor of H with g*g <= H: 2
groups of 2 hosts for H = 4, 3 of 3 for H = 9, single-host groups when H is prime).
Then, as :mod:`.allreduce_hierarchical` with "host" read as "group":

1. ring reduce-scatter among the ranks of a group (hosts of the group in order): the
   first hop, over the group's fast links and g-1 of its inter-host links;
2. per column, ring allreduce across the groups among the ranks serving it: the
   second hop, 1/(g L) of the buffer per rank crosses the slow links between groups;
3. ring allgather inside the group.

With g == 1 (H prime, e.g. 2 or 3 hosts) this is exactly the hierarchical allreduce.

Bytes on the wire per rank (uniform, G = g L ranks per group, Q = H/g groups, buffer
S): inside the group 2 (G-1)/G * S, across groups 2 (Q-1)/(Q G) * S.
Supports: hosts with >= 2 hosts, any number of ranks per host (uneven shapes too);
nchannels >= 1; needs 2 FIFO slots per connection (``MIN_SLOTS``). Not nranks == 1 or a single host (InvalidArgument).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..ir.program import Program
from ._common import Shape, host_shape, reason
from ._hier import build_two_level

#: FIFO slots per connection: the rings hold one message per link while every step receives and sends
MIN_SLOTS = 2
PRIORITY = 180


def group_size(nhosts: int) -> int:
    """Hosts per group: the largest divisor g of nhosts with g * g <= nhosts."""
    return max(g for g in range(1, nhosts + 1) if nhosts % g == 0 and g * g <= nhosts)


def groups(shape: Shape) -> Shape:
    """The shape whose "hosts" are the groups of hosts."""
    g = group_size(shape.H)
    return Shape(tuple(tuple(r for h in range(i, i + g) for r in shape.hosts[h]) for i in range(0, shape.H, g)), True)


def unsupported(nranks: int, hosts=None) -> str | None:
    """Why this algorithm cannot serve the shape (None: it can)."""
    return reason(lambda: host_shape(nranks, hosts, what="allreduce mics_2hop", contiguous=True))


def supports(nranks: int, hosts=None) -> bool:
    """At least 2 hosts."""
    return unsupported(nranks, hosts) is None


def build(nranks: int, *, nchannels: int = 1, root: int = 0, hosts=None) -> Program:
    """The MiCS 2-hop allreduce for ``hosts`` (root is ignored)."""
    if nchannels < 1:
        raise InvalidArgument(f"nchannels must be >= 1, got {nchannels}")
    shape = host_shape(nranks, hosts, what="allreduce mics_2hop", contiguous=True)
    grouped = groups(shape)
    return build_two_level(f"allreduce_mics_2hop_{shape.H}h{grouped.H}g_{nranks}r_{nchannels}c",
                           grouped, nchannels, "ring")
