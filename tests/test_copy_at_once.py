"""Local copies that do every slice at their first turn (``direct_plan.copy_at_once``).

The table is checked on the IR for every algorithm of the catalogue on 2-8 ranks, both
aliasings, against the safety property written out again here over the chunks each step
reads and writes (not with the module's own helpers): a flagged copy's source is written by
no step of the rank, and its destination is read or written by no other step. Then every
algorithm of the collectives that have such copies runs with 16 KiB slots (many slices per
call) against numpy, on the slot path and by single copy, and once more with every such copy
streamed past the cache (:mod:`pyxccl.runtime.kernels.nt_copy`).
"""

from __future__ import annotations

import pytest
from _algo_jobs import job_catalogue, job_catalogue_streamed

from pyxccl import algorithms
from pyxccl.runtime.kernels import nt_copy as stream_copy
from pyxccl.ir.passes.direct import copy_at_once
from pyxccl.ir.program import Op, inplace_alias

COLLS = ("allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall")


def _memory(program, rank: int, mode: str):
    """Chunk (buffer, index) -> the memory it names on ``rank``: in place, the collective's
    smaller buffer is a block of the larger one."""
    if mode != "inplace":
        return lambda buf, c: (buf, c)
    small, big, off = inplace_alias(program.collective, program.nranks, program.chunks_per_block, rank)
    return lambda buf, c: (big, off + c) if buf is small else (buf, c)


def _uses(program, rank: int, mode: str):
    """Per step (numbered through the thread blocks): the memory it reads and the memory it writes.
    A copy of a chunk onto itself does nothing (the executor skips it)."""
    mem = _memory(program, rank, mode)
    out = []
    for tb in program.ranks[rank].tbs:
        for st in tb.steps:
            reads = {mem(st.srcbuf, st.srcoff + j) for j in range(st.cnt)} if st.op.reads_src and st.srcbuf else set()
            writes = {mem(st.dstbuf, st.dstoff + j) for j in range(st.cnt)} if st.op.writes_dst and st.dstbuf else set()
            if st.op is Op.COPY and reads == writes:
                reads = writes = set()
            out.append((st, reads, writes))
    return out


def _cases():
    for coll in COLLS:
        for name in algorithms.names(coll):
            algo = algorithms.get(coll, name)
            for n in range(2, 9):
                if algo.host_aware or algo.unsupported(n, None) is not None:
                    continue
                yield coll, name, n


def test_flagged_copies_touch_nothing_else():
    flagged = set()
    for coll, name, n in _cases():
        program = algorithms.program(coll, name, n, 1, 0, None)
        for mode in ("oop", "inplace"):
            if not (program.inplace if mode == "inplace" else program.outofplace):
                continue
            for rank in range(n):
                uses = _uses(program, rank, mode)
                flags = [f for tb in copy_at_once(program, rank, mode) for f in tb]
                assert len(flags) == len(uses)
                for i, flag in enumerate(flags):
                    if not flag:
                        continue
                    st, reads, writes = uses[i]
                    assert st.op is Op.COPY, (coll, name, n, rank, mode, i)
                    for k, (_, r2, w2) in enumerate(uses):
                        assert not (reads & w2), f"{coll}/{name} n={n} rank {rank} {mode}: step {k} writes copy {i}'s source"
                        if k != i:
                            assert not (writes & (r2 | w2)), \
                                f"{coll}/{name} n={n} rank {rank} {mode}: step {k} touches copy {i}'s destination"
                    flagged.add((coll, name))
    # where it must apply: the own block of an all-to-all and of the ring all-gather, a broadcast root's copy
    assert {("alltoall", "direct"), ("alltoall", "pairwise"), ("allgather", "ring")} <= flagged, flagged
    assert any(c == "broadcast" for c, _ in flagged), flagged


def test_no_copy_at_once_when_aliasing_is_unknown():
    program = algorithms.program("alltoall", "direct", 2, 1, 0, None)
    assert not any(f for tb in copy_at_once(program, 0, None) for f in tb)
    assert any(f for tb in copy_at_once(program, 0, "oop") for f in tb)


MANY_SLICES = {"PYXCCL_SLOT_BYTES": "16K", "PYXCCL_CMA_MIN_BYTES": "1K"}


@pytest.mark.parametrize("path", ("0", "1"))
@pytest.mark.parametrize("coll", ("allgather", "alltoall", "broadcast"))
@pytest.mark.parametrize("nranks", (2, 3, 5))
def test_every_algorithm_with_many_slices(env_pools, nranks, coll, path):
    pool = env_pools(nranks, PYXCCL_CMA=path, **MANY_SLICES)
    pool.check(job_catalogue, coll=coll, host_layouts=[], deadline=240)


@pytest.mark.skipif(not stream_copy.available(), reason="llvmlite is not installed (pyxccl[fast])")
@pytest.mark.parametrize("coll", ("allgather", "alltoall"))  # every rank copies its own block
@pytest.mark.parametrize("nranks", (2, 3))
def test_every_algorithm_with_streamed_copies(env_pools, nranks, coll):
    pool = env_pools(nranks, PYXCCL_CMA="1", PYXCCL_STREAM_MIN_BYTES="1K", **MANY_SLICES)
    pool.check(job_catalogue_streamed, coll=coll, deadline=240)
