"""Single copy on a device: a receiver reads a sender's bytes straight from the sender's buffers.

Through the slots every byte is copied twice (into the receiver's slot, then out of it); on one
GPU both copies share the memory's bandwidth, so large calls go at half speed. The single-copy
pass (:mod:`pyxccl.ir.passes.direct`) already knows which sends may instead leave their bytes
where they are until the receiver read them (``s`` from its source, ``rcs`` and ``rrcs`` from
the destination they wrote, nothing of the sender overwriting them before the end of the
call). On a device that becomes: the sender only writes its ready word; the receiver copies (or
reduces) from the sender's memory, mapped into its process, and writes its released word; the
closing handshake of the call keeps the sender's buffers unchanged until every read is done.

Per call, every rank tells the ranks it sends to where its buffers are (:func:`describe`: an IPC
handle and offset per buffer, its aliasing) and learns theirs (:class:`PeerBuffers`); the
receiver computes the sender's plan (the same function of the same facts) to know, for each slot
of a connection, whether it comes by single copy and from where (:func:`send_sequence`). Calls
of v-collectives (each rank its own layout) and memory that cannot be exported (VMM) go
through the slots.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ...ir.program import Buf, Op, Program, inplace_alias
from .. import plan as plans
from ..plan import DIRECT, Geometry, StepMode

#: the caps a plan is built with when single copy is on (any size is worth it on a device)
ON = (1, 1)


def caps(program: Program, rank: int, on: bool) -> tuple[tuple[int, int], ...]:
    return ((ON if on else (0, 0)),) * len(program.ranks[rank].tbs)


def aliasing(program: Program, rank: int, geo: Geometry, arrays: dict, itemsize: int) -> tuple[str, "str | None"]:
    """(hint, mode) of a call's input and output, as the host executor computes them from arrays:
    "oop" when they are disjoint, "inplace" when they overlap as the collective's in-place form
    defines, None (no single copy) otherwise."""
    (ai, ni), (ao, no) = arrays[Buf.INPUT], arrays[Buf.OUTPUT]
    overlap = ai < ao + no * itemsize and ao < ai + ni * itemsize and ni and no
    if not overlap:
        return "oop", "oop"
    small, big, off = inplace_alias(program.collective, program.nranks, program.chunks_per_block, rank)
    delta = (geo.location(big, off)[1] - geo.location(small, 0)[1]) * itemsize
    addr = {Buf.INPUT: ai, Buf.OUTPUT: ao}
    return "inplace", ("inplace" if addr[small] - addr[big] == delta else None)


def describe(device: Any, addrs: dict, hint: str, mode: "str | None") -> tuple[bytes, bool]:
    """What this rank tells the ranks it sends to: where its buffers are; and whether they can be
    read at all (every buffer exportable and an aliasing single copy allows)."""
    handles = {}
    ok = mode is not None
    for buf, address in addrs.items():
        exported = device.export_ipc(address) if ok else None
        if exported is None:
            ok = False
            break
        handles[buf.name] = (exported[0].hex(), exported[1])
    info = {"pid": os.getpid(), "ok": ok, "hint": hint, "mode": mode, "handles": handles if ok else {}}
    return json.dumps(info).encode(), ok


class PeerBuffers:
    """A sender's buffers as this rank reaches them (opened through the device's IPC)."""

    def __init__(self, device: Any, data: bytes):
        info = json.loads(data)
        self.ok: bool = info["ok"]
        self.hint: str = info["hint"]
        self.mode: "str | None" = info["mode"]
        self.addrs: dict[Buf, int] = {}
        for name, (handle, offset) in info["handles"].items():
            self.addrs[Buf[name]] = device.open_ipc(bytes.fromhex(handle)) + int(offset)


def send_sequence(program: Program, peer: int, me: int, channel: int, count: int, itemsize: int, slot_bytes: int,
                  peer_bufs: PeerBuffers) -> list[tuple[bool, Any]]:
    """The sends of ``peer``'s thread block towards this rank on ``channel``, in order (one slice
    iteration): (by single copy?, the chunk locations the receiver reads from when it is)."""
    plan = plans.rank_plan(program, peer, count, itemsize, slot_bytes, caps(program, peer, peer_bufs.ok),
                           peer_bufs.hint, peer_bufs.mode)
    for tp in plan.tbs:
        if tp.tb.send == me and tp.tb.channel == channel:
            seq = []
            for sp in tp.steps:
                op = sp.step.op
                if not op.sends:
                    continue
                direct = peer_bufs.ok and sp.modes[DIRECT] != StepMode.SLOTS
                seq.append((direct, sp.srcs if op is Op.SEND else sp.dsts))
            return seq
    return []
