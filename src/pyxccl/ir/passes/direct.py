"""The single-copy pass: which steps of a program may move their bytes straight between the
ranks' memories, decided from the IR alone, for any transport.

A sending step may, instead of copying its bytes into a slot, post where they lie (a
*descriptor*) for the receiver to read itself, straight into its destination or into the
slot before a reduction (NCCL's P2P read; CMA on the CPU, mapped peer memory on a GPU), or
write them into the receiver's offered destination itself (P2P write). That is safe only when
nothing overwrites those bytes before the peer read them, and (for writes and whole-call
descriptors) when nothing else of the receiver touches the destination early. This pass
answers, per (program, rank, aliasing of input and output), which steps *may*; a connector's
capabilities say whether it *can* (:mod:`pyxccl.transport.base`), the rank's plan intersects
the two (:mod:`pyxccl.runtime.plan`, which also keeps the tables), and whether a call *does*
is measured per call (:mod:`pyxccl.runtime.host.path_choice`). It also finds the local copies
that may copy every slice at once. :func:`tables` gives them all for one rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..program import Buf, Op, Program, ThreadBlock, inplace_alias


#: a descriptor's ``aux`` bit: it holds every slice of the step still to come, not one
SPAN_REST = 1
#: with SPAN_REST: the sender writes logical bytes [0, aux >> 8) into the receiver's offer itself
SPAN_SPLIT = 2
#: ops whose receiving side may read a descriptor straight into its destination
DIRECT_RECV = frozenset((Op.RECV, Op.RECV_COPY_SEND))


def direct_plan(program: Program, rank: int, mode: str | None, memo: dict | None = None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank`` (in order), per step: may the step send by descriptor?

    A sending step qualifies when it only forwards bytes that stay put (``s`` from its
    source, ``rcs`` and ``rrcs`` from the destination they wrote), the peer has the
    matching receiving thread block, and every other step of this rank that writes one of
    the chunks sent (in-place aliasing of input and output included: ``mode``) is ordered
    before it, through its thread block or ``deps``. Writes of other slice iterations touch
    other elements. ``mode`` None: nothing qualifies. Whether a qualifying step does go by
    descriptor is decided per call (:mod:`pyxccl.runtime.host.path_choice`): a plain receive reads it straight
    into its destination, a reduction reads it into the slot first.
    Cached per (program, rank, mode).
    """
    return _cached(program, rank, mode, "direct", _plan_direct, memo)


def _plan_direct(program: Program, rank: int, mode: str | None, memo: dict) -> list[tuple[bool, ...]]:
    tbs = program.ranks[rank].tbs
    none = [(False,) * len(tb.steps) for tb in tbs]
    if mode is None:
        return none
    canon = _canon(program, rank, mode)
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
    writers = _touching(program, rank, mode, reads=False)
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


def feeds_reduction(program: Program, rank: int, memo: dict | None = None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank``, per step: does the step send bytes the peer reduces (its
    receiving step is ``rrs``, ``rrc`` or ``rrcs``)? The mixed path (:data:`pyxccl.runtime.host.path_choice.MIXED`)
    sends those through the slots: the reduction reads them once either way. Cached per (program, rank)."""
    return _cached(program, rank, None, "feeds", _plan_feeds, memo)


def _plan_feeds(program: Program, rank: int, mode: str | None, memo: dict) -> list[tuple[bool, ...]]:
    plan = []
    for tb in program.ranks[rank].tbs:
        flags = [False] * len(tb.steps)
        peer_ops = _peer_receives(program, rank, tb)
        if peer_ops is not None:
            for i, peer_op in zip((i for i, st in enumerate(tb.steps) if st.op.sends), peer_ops):
                flags[i] = peer_op not in DIRECT_RECV
        plan.append(tuple(flags))
    return plan


def _peer_receives(program: Program, rank: int, tb: ThreadBlock) -> list[Op] | None:
    """The ops of the receiving steps of the thread block that receives what ``tb`` sends."""
    found = _peer_receiving_steps(program, rank, tb)
    return None if found is None else [program.ranks[tb.send].tbs[found[0]].steps[i].op for i in found[1]]


def _peer_receiving_steps(program: Program, rank: int, tb: ThreadBlock) -> tuple[int, list[int]] | None:
    """(index of the peer's thread block that receives what ``tb`` sends, its receiving steps in order)."""
    if tb.send < 0:
        return None
    for t, ptb in enumerate(program.ranks[tb.send].tbs):
        if ptb.recv == rank and ptb.channel == tb.channel:
            return t, [i for i, st in enumerate(ptb.steps) if st.op.receives]
    return None


def _canon(program: Program, rank: int, mode: str | None) -> Callable[[Buf, int], tuple[Buf, int]]:
    """Chunk (buffer, index) -> the memory it names on ``rank`` in a call of aliasing ``mode``."""
    if mode != "inplace":
        return lambda buf, c: (buf, c)
    small, big, off = inplace_alias(program.collective, program.nranks, program.chunks_per_block, rank)
    return lambda buf, c: (big, off + c) if buf is small else (buf, c)


def _touching(program: Program, rank: int, mode: str | None, reads: bool) -> dict[tuple[Buf, int], list[int]]:
    """Per chunk of ``rank``'s memory (canonical), the steps that write it (and read it: ``reads``),
    numbered through the thread blocks in order."""
    canon = _canon(program, rank, mode)
    out: dict[tuple[Buf, int], list[int]] = {}
    n = 0
    for tb in program.ranks[rank].tbs:
        for st in tb.steps:
            if st.op is Op.COPY and st.srcbuf is not None and \
                    all(canon(st.srcbuf, st.srcoff + j) == canon(st.dstbuf, st.dstoff + j) for j in range(st.cnt)):
                n += 1  # copies a chunk onto itself (in place): the executor skips it
                continue
            for used, buf, off in ((st.op.writes_dst, st.dstbuf, st.dstoff), (reads and st.op.reads_src, st.srcbuf, st.srcoff)):
                if used and buf is not None:
                    for j in range(st.cnt):
                        out.setdefault(canon(buf, off + j), []).append(n)
            n += 1
    return out


def span_plan(program: Program, rank: int, mode: str | None, memo: dict | None = None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank``, per step: may the step post, on the single-copy path, one
    descriptor for every slice still to come (the peer reads them all at once and both skip
    the step afterwards)?

    Only a plain send (``s``) that :func:`direct_plan` allows, whose source no step of this rank
    ever writes (so every later slice is already final), towards a plain receive (``r``) that
    :func:`span_ok` allows on the peer in a call aliased like this one. A peer whose call is
    aliased otherwise still reads it correctly, through a private buffer. Fewer, larger reads:
    one ``process_vm_readv`` per call instead of one per slice, and no per-slice work.
    Cached per (program, rank, mode).
    """
    return _cached(program, rank, mode, "span", _plan_span, memo)


def span_ok(program: Program, rank: int, mode: str | None, memo: dict | None = None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank``, per step: may a plain receive write every slice still to come
    at once (no other step of the rank reads or writes its destination)? Otherwise a descriptor
    spanning them is read into a private buffer and copied slice by slice at the step's turn."""
    return _cached(program, rank, mode, "span_ok", _plan_span_ok, memo)


def _cached(program: Program, rank: int, mode: str | None, table: str,
            make: Callable[..., list[tuple[bool, ...]]], memo: dict | None) -> list[tuple[bool, ...]]:
    """``make(program, rank, mode, memo)``, computed once per ``memo`` (one analysis of ``program``:
    the tables of one rank depend on its peers'). Nothing is kept between analyses: the runtime
    keeps what it derives (:mod:`pyxccl.runtime.plan`)."""
    if memo is None:
        memo = {}
    key = (rank, mode, table)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = make(program, rank, mode, memo)
    return hit


def _plan_span(program: Program, rank: int, mode: str | None, memo: dict) -> list[tuple[bool, ...]]:
    canon = _canon(program, rank, mode)
    writers = _touching(program, rank, mode, reads=False) if mode is not None else {}
    plan = []
    for tb, flags in zip(program.ranks[rank].tbs, direct_plan(program, rank, mode, memo)):
        span = [False] * len(flags)
        found = _peer_receiving_steps(program, rank, tb) if any(flags) else None
        if found is not None:
            peer_ok = span_ok(program, tb.send, mode, memo)[found[0]]
            sends = [i for i, st in enumerate(tb.steps) if st.op.sends]
            for i, pi in zip(sends, found[1]):
                st = tb.steps[i]
                span[i] = flags[i] and st.op is Op.SEND and peer_ok[pi] and \
                    not any(writers.get(canon(st.srcbuf, st.srcoff + j)) for j in range(st.cnt))
        plan.append(tuple(span))
    return plan


def _plan_span_ok(program: Program, rank: int, mode: str | None, memo: dict) -> list[tuple[bool, ...]]:
    alone = _alone(program, rank, mode)
    return _step_table(program, rank, lambda st, me: mode is not None and st.op is Op.RECV and
                       alone(st.dstbuf, st.dstoff, st.cnt, me))


def _alone(program: Program, rank: int, mode: str | None) -> Callable[[Buf, int, int, int], bool]:
    """``alone(buf, off, cnt, me)``: chunks ``off``.. ``off + cnt`` of ``buf`` are read or written by
    no step of ``rank`` but step ``me`` (numbered through the thread blocks)."""
    canon = _canon(program, rank, mode)
    touching = _touching(program, rank, mode, reads=True) if mode is not None else {}
    return lambda buf, off, cnt, me: all(touching.get(canon(buf, off + j), [me]) == [me] for j in range(cnt))


def _step_table(program: Program, rank: int, flag: Callable) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank``, per step: ``flag(step, n)``, n numbering the steps through the thread blocks."""
    plan, n = [], 0
    for tb in program.ranks[rank].tbs:
        plan.append(tuple(flag(st, n + i) for i, st in enumerate(tb.steps)))
        n += len(tb.steps)
    return plan


def copy_at_once(program: Program, rank: int, mode: str | None, memo: dict | None = None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank``, per step: may a local copy (``cpy``) copy every slice still to
    come at its first turn, on any path?

    Only where no step of this rank ever writes its source (every later slice is final already)
    and no other step reads or writes its destination (nothing sees the later slices early), in a
    call aliased as ``mode`` says (None: never). One large copy instead of one per slice: between
    slices of 16 MiB copies each step's Python work ran with cold caches (tens of microseconds).
    Other thread blocks' dependencies on the step still count its slices at their turns. Cached
    per (program, rank, mode)."""
    return _cached(program, rank, mode, "copy_once", _plan_copy_once, memo)


def _plan_copy_once(program: Program, rank: int, mode: str | None, memo: dict) -> list[tuple[bool, ...]]:
    canon = _canon(program, rank, mode)
    writers = _touching(program, rank, mode, reads=False) if mode is not None else {}
    alone = _alone(program, rank, mode)
    return _step_table(program, rank, lambda st, me: mode is not None and st.op is Op.COPY and st.srcbuf is not None
                       and not any(writers.get(canon(st.srcbuf, st.srcoff + j)) for j in range(st.cnt))
                       and alone(st.dstbuf, st.dstoff, st.cnt, me))


def early_offers(program: Program, rank: int, mode: str | None, memo: dict | None = None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank``, per step: does the receiver offer this step's destination at
    the start of the call (:meth:`pyxccl.transport.base.RecvConnector.offer_destination`)?

    The first receiving step of a thread block, when it is a plain receive and its sender's step
    may send every slice at once in a call aliased either way (:func:`span_plan`): that sender
    may write into the destination instead of posting it to be read (:func:`put_plan`), or (a
    root that only sends) write part of it. Answered at the start, the answer is there before
    the sender needs it even where both ranks send before they receive (a symmetric exchange).
    The answer is an offer where this call may take every slice at once (:func:`span_ok`), else
    a refusal (a peer aliased otherwise then does not wait for one). Cached per (program, rank, mode).
    """
    return _cached(program, rank, mode, "early", _plan_early, memo)


def _plan_early(program: Program, rank: int, mode: str | None, memo: dict) -> list[tuple[bool, ...]]:
    plan = []
    for tb in program.ranks[rank].tbs:
        flags = [False] * len(tb.steps)
        first = next((i for i, st in enumerate(tb.steps) if st.op.receives), -1)
        if mode is not None and first >= 0 and tb.steps[first].op is Op.RECV:
            for pt, ptb in enumerate(program.ranks[tb.recv].tbs):
                if ptb.send == rank and ptb.channel == tb.channel:
                    sends = [i for i, st in enumerate(ptb.steps) if st.op.sends]
                    flags[first] = bool(sends) and any(span_plan(program, tb.recv, m, memo)[pt][sends[0]]
                                                       for m in ("oop", "inplace"))
        plan.append(tuple(flags))
    return plan


def put_plan(program: Program, rank: int, mode: str | None, memo: dict | None = None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank``, per step: may the step, on the put path
    (:data:`pyxccl.runtime.host.path_choice.PUT`), write every slice into the receiver's destination itself, each
    right after this rank's earlier steps of that slice ran (a slice it just copied locally is
    still in the cache), instead of posting them to be read?

    A step that may send the rest of the call at once (:func:`span_plan`) towards a receive
    offered at the call's start (:func:`early_offers`), on a rank that also receives: a root
    that only sends splits the work with its receiver instead (both copy at once). Cached per
    (program, rank, mode).
    """
    return _cached(program, rank, mode, "put", _plan_put, memo)


def _plan_put(program: Program, rank: int, mode: str | None, memo: dict) -> list[tuple[bool, ...]]:
    tbs = program.ranks[rank].tbs
    if only_sends(program, rank):
        return [(False,) * len(tb.steps) for tb in tbs]
    plan = []
    for tb, span in zip(tbs, span_plan(program, rank, mode, memo)):
        flags = [False] * len(span)
        found = _peer_receiving_steps(program, rank, tb) if any(span) else None
        if found is not None:
            early = early_offers(program, tb.send, mode, memo)[found[0]]
            for i, pi in zip((i for i, st in enumerate(tb.steps) if st.op.sends), found[1]):
                flags[i] = span[i] and early[pi]
        plan.append(tuple(flags))
    return plan


def put_from_copy(program: Program, rank: int, mode: str | None, memo: dict | None = None) -> list[tuple[bool, ...]]:
    """Per thread block of ``rank``, per step of :func:`put_plan`: does the step write from the
    destination of the copy just before it in the thread block instead of from its source?

    Where that copy copies the same chunks the step sends (an all-gather's own block into the
    output) and no other step writes its destination, both hold the same bytes; the copy just
    wrote them, so they are still in this core's cache, where the source may not be (measured:
    ``benchmarks/floors.py``, ``exchange-put``). Cached per (program, rank, mode)."""
    return _cached(program, rank, mode, "put_from", _plan_put_from, memo)


def _plan_put_from(program: Program, rank: int, mode: str | None, memo: dict) -> list[tuple[bool, ...]]:
    canon = _canon(program, rank, mode)
    writers = _touching(program, rank, mode, reads=False)
    plan = []
    n = 0
    for tb, puts in zip(program.ranks[rank].tbs, put_plan(program, rank, mode, memo)):
        flags = [False] * len(puts)
        for i, st in enumerate(tb.steps):
            prev = tb.steps[i - 1] if i else None
            flags[i] = puts[i] and prev is not None and prev.op is Op.COPY and prev.srcbuf is st.srcbuf and \
                prev.srcoff == st.srcoff and prev.cnt == st.cnt and \
                all(writers.get(canon(prev.dstbuf, prev.dstoff + j), []) in ([], [n + i - 1]) for j in range(prev.cnt))
        n += len(tb.steps)
        plan.append(tuple(flags))
    return plan


def direct_any(program: Program, rank: int, mode: str | None, memo: dict | None = None) -> list[tuple[bool, bool, int]]:
    """Per thread block of ``rank``: (may it send a descriptor, may it receive one, its largest slot ``cnt``)
    in a call of aliasing ``mode`` (the peer's call assumed alike; a descriptor that comes anyway
    is still read, through the slot): calls that cannot use descriptors skip every other check."""
    if memo is None:
        memo = {}
    out = []
    for i, tb in enumerate(program.ranks[rank].tbs):
        may_send = any(direct_plan(program, rank, mode, memo)[i])
        may_recv = False
        if tb.recv >= 0:
            for j, ptb in enumerate(program.ranks[tb.recv].tbs):
                if ptb.send == rank and ptb.channel == tb.channel:
                    may_recv = any(direct_plan(program, tb.recv, mode, memo)[j])
        cnt = max((st.cnt for st in tb.steps if st.op.sends or st.op.receives), default=0)
        out.append((may_send, may_recv, cnt))
    return out


def only_sends(program: Program, rank: int) -> bool:
    """Whether ``rank`` receives nothing in ``program`` (a broadcast's or scatter's root): only such
    a sender splits its descriptors with the receiver; one that also receives is busy enough."""
    return not any(st.op.receives for tb in program.ranks[rank].tbs for st in tb.steps)


@dataclass(frozen=True)
class Tables:
    """Every table of this pass for one rank of a program in a call aliased as ``mode``: per thread
    block, per step (``any``: per thread block)."""

    program: Program
    rank: int
    mode: str | None
    direct: list[tuple[bool, ...]]
    span: list[tuple[bool, ...]]
    span_ok: list[tuple[bool, ...]]
    feeds: list[tuple[bool, ...]]
    put: list[tuple[bool, ...]]
    put_from: list[tuple[bool, ...]]
    early: list[tuple[bool, ...]]
    copy_once: list[tuple[bool, ...]]
    any: list[tuple[bool, bool, int]]
    only_sends: bool

    def only_sends_peer(self, peer: int) -> bool:
        """Whether ``peer`` only sends in this program."""
        return only_sends(self.program, peer)


def tables(program: Program, rank: int, mode: str | None) -> Tables:
    """All of this pass's tables for ``rank`` in a call aliased as ``mode``, from one analysis."""
    memo: dict = {}
    return Tables(program, rank, mode, direct_plan(program, rank, mode, memo), span_plan(program, rank, mode, memo),
                  span_ok(program, rank, mode, memo), feeds_reduction(program, rank, memo),
                  put_plan(program, rank, mode, memo), put_from_copy(program, rank, mode, memo),
                  early_offers(program, rank, mode, memo), copy_at_once(program, rank, mode, memo),
                  direct_any(program, rank, mode, memo), only_sends(program, rank))
