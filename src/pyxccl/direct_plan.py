"""Single copy, statically: which steps of a program may send by descriptor.

Where a connector takes descriptors (the shm transport with PYXCCL_CMA), a sending step
may post where its bytes lie instead of copying them into the slot, and the receiver
reads them itself (straight into its destination, or into the slot before a reduction).
That is safe only when nothing overwrites those bytes before the peer read them. This
module decides it from the IR alone, per (program, rank, aliasing mode), and caches the
answer like the executor's other per-program tables; whether a call uses it is measured
per call (:mod:`pyxccl.paths`).
"""

from __future__ import annotations

from .ir.program import Buf, Op, Program, ThreadBlock, inplace_alias

_CACHE_SIZE = 256


#: ops whose receiving side may read a descriptor straight into its destination
DIRECT_RECV = frozenset((Op.RECV, Op.RECV_COPY_SEND))
_DIRECT: dict[tuple[int, int, str | None], tuple[Program, list[tuple[bool, ...]]]] = {}


def direct_plan(program: Program, rank: int, mode: str | None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank`` (in order), per step: may the step send by descriptor?

    A sending step qualifies when it only forwards bytes that stay put (``s`` from its
    source, ``rcs`` and ``rrcs`` from the destination they wrote), the peer has the
    matching receiving thread block, and every other step of this rank that writes one of
    the chunks sent (in-place aliasing of input and output included: ``mode``) is ordered
    before it, through its thread block or ``deps``. Writes of other slice iterations touch
    other elements. ``mode`` None: nothing qualifies. Whether a qualifying step does go by
    descriptor is decided per call (:mod:`pyxccl.paths`): a plain receive reads it straight
    into its destination, a reduction reads it into the slot first.
    Cached per (program, rank, mode).
    """
    key = (id(program), rank, mode)
    hit = _DIRECT.get(key)
    if hit is not None and hit[0] is program:
        return hit[1]
    plan = _plan_direct(program, rank, mode)
    if len(_DIRECT) >= _CACHE_SIZE:
        _DIRECT.clear()
    _DIRECT[key] = (program, plan)
    return plan


def _plan_direct(program: Program, rank: int, mode: str | None) -> list[tuple[bool, ...]]:
    tbs = program.ranks[rank].tbs
    none = [(False,) * len(tb.steps) for tb in tbs]
    if mode is None:
        return none
    alias = inplace_alias(program.collective, program.nranks, program.chunks_per_block, rank) \
        if mode == "inplace" else None

    def canon(buf: Buf, c: int) -> tuple[Buf, int]:
        if alias is not None and buf is alias[0]:
            return alias[1], alias[2] + c
        return buf, c

    byid = {tb.id: tb for tb in tbs}
    base: dict[int, int] = {}
    n = 0
    for tb in tbs:
        base[tb.id] = n
        n += len(tb.steps)
    # anc[i]: bit set of the steps ordered before step i (same slice iteration)
    anc: list[int | None] = [None] * n
    for tb in tbs:
        for s0 in range(len(tb.steps)):
            stack, onstack = [(tb.id, s0)], {(tb.id, s0)}
            while stack:
                t, i = stack[-1]
                idx = base[t] + i
                if anc[idx] is not None:
                    stack.pop()
                    onstack.discard((t, i))
                    continue
                preds = ([(t, i - 1)] if i else []) + [d for d in byid[t].steps[i].deps
                                                       if d[0] in byid and 0 <= d[1] < len(byid[d[0]].steps)]
                missing = [d for d in preds if anc[base[d[0]] + d[1]] is None]
                if missing:
                    if any(d in onstack for d in missing):
                        return none  # a dependency cycle: the program cannot run anyway
                    stack.extend(missing)
                    onstack.update(missing)
                    continue
                a = 0
                for pt, pi in preds:
                    j = base[pt] + pi
                    a |= anc[j] | (1 << j)  # type: ignore[operator]
                anc[idx] = a
                stack.pop()
                onstack.discard((t, i))
    writers: dict[tuple[Buf, int], list[int]] = {}
    for tb in tbs:
        for i, st in enumerate(tb.steps):
            if st.op.writes_dst and st.dstbuf is not None:
                for j in range(st.cnt):
                    writers.setdefault(canon(st.dstbuf, st.dstoff + j), []).append(base[tb.id] + i)
    plan = []
    for tb in tbs:
        flags = [False] * len(tb.steps)
        peer_ops = _peer_receives(program, rank, tb)
        sends = [i for i, st in enumerate(tb.steps) if st.op.sends]
        if peer_ops is not None and len(peer_ops) == len(sends):
            for i in sends:
                st = tb.steps[i]
                if st.op is Op.SEND:
                    buf, off = st.srcbuf, st.srcoff
                elif st.op in (Op.RECV_COPY_SEND, Op.RECV_REDUCE_COPY_SEND):
                    buf, off = st.dstbuf, st.dstoff
                else:  # rrs sends a sum it keeps nowhere
                    continue
                idx = base[tb.id] + i
                before = anc[idx] or 0
                flags[i] = buf is not None and all(
                    w == idx or (before >> w) & 1
                    for j in range(st.cnt) for w in writers.get(canon(buf, off + j), ()))
        plan.append(tuple(flags))
    return plan


def _peer_receives(program: Program, rank: int, tb: ThreadBlock) -> list[Op] | None:
    """The ops of the receiving steps of the thread block that receives what ``tb`` sends."""
    if tb.send < 0:
        return None
    for ptb in program.ranks[tb.send].tbs:
        if ptb.recv == rank and ptb.channel == tb.channel:
            return [st.op for st in ptb.steps if st.op.receives]
    return None


_ANY: dict[tuple[int, int, str], tuple[Program, list[tuple[bool, bool, int]]]] = {}


def direct_any(program: Program, rank: int, mode: str) -> list[tuple[bool, bool, int]]:
    """Per thread block of ``rank``: (may it send a descriptor, may it receive one, its largest slot ``cnt``)
    in a call of aliasing ``mode`` (the peer's call assumed alike; a descriptor that comes anyway
    is still read, through the slot): calls that cannot use descriptors skip every other check."""
    hit = _ANY.get((id(program), rank, mode))
    if hit is not None and hit[0] is program:
        return hit[1]
    out = []
    for i, tb in enumerate(program.ranks[rank].tbs):
        may_send = any(direct_plan(program, rank, mode)[i])
        may_recv = False
        if tb.recv >= 0:
            for j, ptb in enumerate(program.ranks[tb.recv].tbs):
                if ptb.send == rank and ptb.channel == tb.channel:
                    may_recv = any(direct_plan(program, tb.recv, mode)[j])
        cnt = max((st.cnt for st in tb.steps if st.op.sends or st.op.receives), default=0)
        out.append((may_send, may_recv, cnt))
    if len(_ANY) >= _CACHE_SIZE:
        _ANY.clear()
    _ANY[(id(program), rank, mode)] = (program, out)
    return out
