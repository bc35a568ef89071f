"""The put path (PYXCCL_CMA=put, a candidate of auto): a sender that also receives writes every
slice of a step into the destination its receiver offered at the call's start.

The tables are proven on the IR for 2-8 ranks against the properties that make a write safe
(the receiver's destination is touched by nothing else and offered for exactly the slot the
sender announces; the written bytes are final when written); the ranks check exact results
of all-gather and all-to-all in and out of place (ranks aliasing differently), one slice and
many, with a late peer (no offer in time: the sender falls back to being read), and that 2
ranks did write.
"""

from __future__ import annotations

import time

import harness
import numpy as np
import pytest

from pyxccl import algorithms
from pyxccl.ir.passes.direct import (
    _canon,
    early_offers,
    only_sends,
    put_from_copy,
    put_plan,
    span_plan,
)
from pyxccl.errors import InvalidArgument
from pyxccl.ir.program import Op
from pyxccl.transport.shm import cma

pytestmark = pytest.mark.skipif(not cma.available(), reason="process_vm_readv is not available")

#: small slots and a low threshold: many slices per call
SMALL = {"PYXCCL_SLOT_BYTES": "16K", "PYXCCL_CMA_MIN_BYTES": "1K"}

_CASES = (("allgather", "ring"), ("allgather", "recursive_doubling"), ("allgather", "bruck"), ("alltoall", "direct"),
          ("alltoall", "pairwise"), ("alltoall", "bruck"), ("broadcast", "chain"), ("broadcast", "binomial"),
          ("scatter", "direct"), ("allreduce", "ring"), ("reducescatter", "ring"))


def _touched(p, rank: int, mode: str) -> dict:
    """Per chunk of ``rank``'s memory (canonical): the (thread block, step) of every step that reads or writes it."""
    canon = _canon(p, rank, mode)
    out: dict = {}
    for tb in p.ranks[rank].tbs:
        for i, st in enumerate(tb.steps):
            for used, buf, off in ((st.op.writes_dst, st.dstbuf, st.dstoff), (st.op.reads_src, st.srcbuf, st.srcoff)):
                if used and buf is not None:
                    for j in range(st.cnt):
                        out.setdefault(canon(buf, off + j), set()).add((tb.id, i))
    return out


def _writers(p, rank: int, mode: str) -> dict:
    canon = _canon(p, rank, mode)
    out: dict = {}
    for tb in p.ranks[rank].tbs:
        for i, st in enumerate(tb.steps):
            if st.op.writes_dst and st.dstbuf is not None:
                same = st.op is Op.COPY and all(canon(st.srcbuf, st.srcoff + j) == canon(st.dstbuf, st.dstoff + j)
                                                for j in range(st.cnt))
                if not same:  # a copy onto itself (in place) is skipped
                    for j in range(st.cnt):
                        out.setdefault(canon(st.dstbuf, st.dstoff + j), set()).add((tb.id, i))
    return out


def test_put_tables_are_safe():
    """Every put step of every rank, for 2-8 ranks, both aliasings: its receiver offers exactly that
    receive at the call's start (the first receiving step of its thread block, a plain receive
    whose destination no other step touches); the bytes it writes are never written by another
    step (from a copy: that copy is the only writer and copies the same chunks); a root that only
    sends never puts."""
    seen_put = seen_copy = 0
    for n in range(2, 9):
        for coll, algo in _CASES:
            try:
                p = algorithms.program(coll, algo, n)
            except InvalidArgument:  # the algorithm does not support this rank count
                continue
            for mode in ("oop", "inplace"):
                for rank in range(n):
                    cc = _canon(p, rank, mode)
                    writers = _writers(p, rank, mode)
                    for tb, puts, froms, spans in zip(p.ranks[rank].tbs, put_plan(p, rank, mode),
                                                      put_from_copy(p, rank, mode), span_plan(p, rank, mode)):
                        assert not any(f and not u for f, u in zip(froms, puts))
                        for i, st in enumerate(tb.steps):
                            if not puts[i]:
                                continue
                            seen_put += 1
                            assert spans[i] and st.op is Op.SEND and not only_sends(p, rank)
                            assert not any(writers.get(cc(st.srcbuf, st.srcoff + j)) for j in range(st.cnt))
                            # the peer's receive this send meets
                            peer = p.ranks[tb.send]
                            pt = next(t for t in peer.tbs if t.recv == rank and t.channel == tb.channel)
                            k = [s for s in tb.steps if s.op.sends].index(st)
                            recvs = [j for j, s in enumerate(pt.steps) if s.op.receives]
                            rs = pt.steps[recvs[k]]
                            assert k == 0 and rs.op is Op.RECV  # the first receive: the slot the offer names
                            pidx = peer.tbs.index(pt)
                            assert early_offers(p, tb.send, mode)[pidx][recvs[k]]
                            pc, touched = _canon(p, tb.send, mode), _touched(p, tb.send, mode)
                            assert all(touched[pc(rs.dstbuf, rs.dstoff + j)] == {(pt.id, recvs[k])} for j in range(rs.cnt))
                            if froms[i]:
                                seen_copy += 1
                                prev = tb.steps[i - 1]
                                assert prev.op is Op.COPY and (prev.srcbuf, prev.srcoff, prev.cnt) == (st.srcbuf, st.srcoff, st.cnt)
                                assert all(writers.get(cc(prev.dstbuf, prev.dstoff + j), set()) <= {(tb.id, i - 1)}
                                           for j in range(prev.cnt))
                    # an early answer is given for a plain first receive only
                    for tb, early in zip(p.ranks[rank].tbs, early_offers(p, rank, mode)):
                        flagged = [i for i, f in enumerate(early) if f]
                        assert len(flagged) <= 1
                        for i in flagged:
                            assert tb.steps[i].op is Op.RECV
                            assert not any(s.op.receives for s in tb.steps[:i])
    assert seen_put and seen_copy


def test_put_where_expected():
    """2 ranks: the all-gather's own block is written from the copy just made, the all-to-all's
    (out of place) from its source; more ranks or a broadcast root: nothing is written per slice."""
    ag = algorithms.program("allgather", "ring", 2)
    assert [(st.op.value, f) for st, f in zip(ag.ranks[0].tbs[0].steps, put_from_copy(ag, 0, "oop")[0])] == \
        [("cpy", False), ("s", True), ("r", False)]
    a2a = algorithms.program("alltoall", "pairwise", 2)
    assert any(any(t) for t in put_plan(a2a, 0, "oop")) and not any(any(t) for t in put_from_copy(a2a, 0, "oop"))
    assert not any(any(t) for t in put_plan(a2a, 0, "inplace"))
    assert not any(any(t) for t in put_plan(algorithms.program("allgather", "ring", 3), 0, "oop"))
    bc = algorithms.program("broadcast", "chain", 2)
    assert not any(any(t) for t in put_plan(bc, 0, "oop"))
    assert any(any(t) for t in early_offers(bc, 1, "oop"))  # the receiver still answers the root early




def job_put(comm, counts=(1, 3001, 70001), late: bool = False) -> list[str]:
    """All-gather and all-to-all, odd ranks in place and even ones not (then all out of place),
    every count; ``late``: rank 1 starts each call 50 ms after the others. On 2 ranks, out of
    place and on time, rank 0 must have written into its peer."""
    r, n = comm.rank, comm.size
    fails: list[str] = []
    writes = lambda: sum(getattr(c, "writes", 0) for c in comm._conns.values())
    comm.all_gather(np.ones(4096, np.float32), np.zeros(4096 * n, np.float32))  # settles the single-copy handshake
    for count in counts:
        base = np.arange(count, dtype=np.float32)
        blocks = [base * (q + 1) - q for q in range(n)]
        for mixed in (True, False):
            inplace = mixed and r % 2 == 1
            how = f"{count}, {'in place' if inplace else 'out of place'}{' (mixed)' if mixed else ''}"
            before = writes()
            if late and r == 1:
                time.sleep(0.05)
            out = harness.all_gather_aliased(comm, blocks[r], inplace)
            fails += harness.expect_equal(f"allgather {how}", out, np.concatenate(blocks))
            if late and r == 1:
                time.sleep(0.05)
            send = np.concatenate([base + 10 * q + r for q in range(n)])
            want = np.concatenate([base + 10 * r + q for q in range(n)])
            got = harness.all_to_all_aliased(comm, send, inplace)
            fails += harness.expect_equal(f"alltoall {how}", got, want)
            if n == 2 and r == 0 and not mixed and not late and count > 4096 and writes() == before:
                fails.append(f"count {count}: rank 0 wrote nothing into its peer on the put path")
    return fails


def job_put_is_tried(comm, count: int = 70001) -> list[str]:
    """PYXCCL_CMA=auto: a 2-rank all-gather has the put path among its candidates; within its
    first calls each of single copy, the slots and the put has been measured (a try of
    ``TRY_CALLS`` calls each), with exact results (timed by the rank that decides:
    :mod:`pyxccl.runtime.host.path_board`)."""
    from pyxccl.runtime.host.path_choice import PUT, TRY_CALLS

    r, n = comm.rank, comm.size
    fails: list[str] = []
    x = np.arange(count, dtype=np.float32)
    for i in range(3 * TRY_CALLS + 1):
        out = np.zeros(n * count, np.float32)
        comm.all_gather(x + r + i, out)
        fails += harness.expect_equal(f"allgather #{i}", out, np.concatenate([x + q + i for q in range(n)]))
    if comm._paths.leads and not any(rec.cost[PUT] is not None for rec in comm._paths._records.values()):
        fails.append("the put path was never tried on a 2-rank all-gather")
    return fails


@pytest.mark.parametrize("nranks", [2, 3, 4])
def test_put_path(env_pools, nranks):
    pool = env_pools(nranks, PYXCCL_CMA="put", **SMALL)
    pool.check(job_put)
    pool.check(job_put, counts=(70001,), late=True)


def test_auto_tries_the_put_path(env_pools):
    env_pools(2, **SMALL).check(job_put_is_tried)


def test_put_path_default_slots(env_pools):
    """Default slots (1 MiB): a 12 MiB all-gather and all-to-all, 12 slices each."""
    env_pools(2, PYXCCL_CMA="put").check(job_put, counts=(3_000_001,))
