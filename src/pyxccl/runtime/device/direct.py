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
of v-collectives (each rank its own layout) and memory that cannot be reached (VMM memory not
registered) go through the slots. Registered buffers (:meth:`pyxccl.Communicator.register`)
are named by window and offset, mapped once at registration.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from ...errors import PyxcclError
from ...ir.program import Buf, Op, Program, inplace_alias
from .. import plan as plans
from ..plan import DIRECT, Geometry, StepMode

@dataclass
class SingleCopy:
    """How one call goes by single copy: ``swap(data, send_to, recv_from) -> {peer: data}`` swaps
    the descriptions with the peers; ``windows``: the communicator's registered buffers;
    ``unregistered``: the caller's other buffers may be read too (through IPC handles)."""

    swap: Callable[[bytes, list, list], dict]
    windows: Any = None
    unregistered: bool = True


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


def describe(device: Any, addrs: dict, sizes: dict, hint: str, mode: "str | None", windows: Any = None,
             unregistered: bool = True, internal: frozenset = frozenset()) -> tuple[bytes, bool]:
    """What this rank tells the ranks it sends to: where its buffers are; and whether they can be
    read at all (every buffer reachable and an aliasing single copy allows).

    A buffer inside a registered window (``windows``, :mod:`pyxccl.transport.cuda_ipc.windows`)
    is named by (window, offset); any other is exported as an IPC handle, which the caller's
    buffers (not ``internal``: pyxccl's scratch) only allow when ``unregistered``."""
    handles: dict[str, list] = {}
    ok = mode is not None
    for buf, address in addrs.items():
        if not ok:
            break
        nbytes = sizes.get(buf, 0)
        win = windows.lookup(address, nbytes) if windows is not None and buf not in internal else None
        if win is not None:
            handles[buf.name] = ["win", win[0], win[1], nbytes]
            continue
        exported = device.export_ipc(address) if unregistered or buf in internal else None
        if exported is None:
            ok = False
            break
        handles[buf.name] = ["ipc", exported[0].hex(), exported[1]]
    info = {"pid": os.getpid(), "ok": ok, "hint": hint, "mode": mode, "handles": handles if ok else {}}
    return json.dumps(info).encode(), ok


class PeerBuffers:
    """A sender's buffers as this rank reaches them (its registered windows, or opened through the
    device's IPC)."""

    def __init__(self, device: Any, data: bytes, peer: int = -1, windows: Any = None):
        info = json.loads(data)
        self.ok: bool = info["ok"]
        self.hint: str = info["hint"]
        self.mode: "str | None" = info["mode"]
        self.addrs: dict[Buf, int] = {}
        for name, entry in info["handles"].items():
            if entry[0] == "win":
                _, index, offset, nbytes = entry
                at = windows.peer_address(index, peer, offset, nbytes) if windows is not None else None
                if at is None:
                    raise PyxcclError(f"rank {peer} names its {name.lower()} buffer by window {index}, which is not "
                                      f"registered here (register() must be called by every rank, in one order)")
                self.addrs[Buf[name]] = at
            else:
                self.addrs[Buf[name]] = device.open_ipc(bytes.fromhex(entry[1])) + int(entry[2])


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
