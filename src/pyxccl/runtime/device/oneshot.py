"""One-shot all-reduce of small device buffers, on the caller's stream (NCCL's one-shot all-reduce,
with stream memory operations for flags instead of a spinning kernel).

A small all-reduce is bound by hand-offs, not bytes: the ring's 2(n-1) steps each cost a flag
round trip and a few driver calls. Here every rank, for every peer, waits until the peer consumed
the last call's bytes, copies its whole input into its slot in the peer's memory (copy engines)
and raises the ready flag; then it waits for every peer's flag and reduces the n inputs in rank
order (every rank the same order, so every rank gets the same bits), and tells every peer its slot
is free. One hand-off, n-1 copies and n-1 reduce kernels, all on the caller's stream: no stream of
our own, no event but the call's end.

The flags count calls (the epoch, the same on every rank: every rank takes this path for the same
calls), so no closing handshake is needed, but a call cannot be captured in a CUDA graph (its
epochs would replay): under capture, calls take the plan's path. The connectors are the cuda_ipc
ones of channel :data:`CHANNEL`, apart from the programs'; their counters hold the epoch, which
is what ``release_waits()`` needs to let the waits pass if a peer is lost.
"""

from __future__ import annotations

import functools
from typing import Any

from ...memory import DeviceArray

CHANNEL = 1 << 16
"""the channel number of the one-shot connectors (the programs' channels are small numbers)"""


@functools.lru_cache(maxsize=64)
def needed(rank: int, nranks: int) -> frozenset:
    """The connectors of a one-shot call: a send and a receive towards every peer."""
    return frozenset((p, CHANNEL, d) for p in range(nranks) if p != rank for d in ("send", "recv"))


class OneShot:
    """The epoch of a communicator's one-shot calls (calls so far); :meth:`enqueue` runs one."""

    def __init__(self) -> None:
        self.epoch = 0

    def enqueue(self, rank: int, nranks: int, inp: DeviceArray, out: DeviceArray, count: int, itemsize: int,
                op: Any, kernels: Any, res: Any, conns: dict, stream: Any) -> None:
        """Enqueue one all-reduce of ``count`` elements on ``stream`` (after the communicator's last
        call). Every peer must run it with the same epoch (the same calls)."""
        dev = res.device
        e = self.epoch = self.epoch + 1
        nbytes = count * itemsize
        src = inp.address
        if op.name == "premul_sum":
            src = res.space("prescaled", nbytes)
            kernels.scale(src, inp.address, count, op.scalar, stream)
        peers = [p for p in range(nranks) if p != rank]
        for p in peers:
            sc = conns[(p, CHANNEL, "send")]
            sc.head = e  # release_waits() writes released := e + 1: any wait of this call passes
            if e > 1:  # the peer reduced the last call's bytes out of this slot
                dev.wait_value(sc.released_word, e - 1, stream)
            dev.copy(sc.slot(0), src, nbytes, stream)
            dev.write_value(sc.ready_word, e, stream)
        inputs = []
        for q in range(nranks):
            if q == rank:
                inputs.append(src)
                continue
            rc = conns[(q, CHANNEL, "recv")]
            rc.tail = e  # release_waits() writes ready := e
            dev.wait_value(rc.ready_word, e, stream)
            inputs.append(rc.slot(0))
        own = inputs.index(src)
        if own >= 2 and out.address < src + nbytes and src < out.address + nbytes:  # the chain overwrites it first
            keep = res.space("oneshot-own", nbytes)
            dev.copy(keep, src, nbytes, stream)
            inputs[own] = keep
        kernels.reduce(out.address, inputs[0], inputs[1], count, stream)
        for a in inputs[2:]:
            kernels.reduce(out.address, out.address, a, count, stream)
        for p in peers:
            dev.write_value(conns[(p, CHANNEL, "recv")].released_word, e, stream)
        if op.name == "avg":
            kernels.divide(out.address, count, nranks, stream)
