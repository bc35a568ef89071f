"""Every algorithm of the catalogue runs correctly as real processes (shm pools of 2, 3, 4 and 8
ranks) against a numpy reference: odd, prime and zero counts, in place and out of place,
several dtypes and ops, roots 0, n-1 and n/2.

Host-aware algorithms run too: their Programs are built for host layouts given here (the
pool's ranks all share one host, but a program is correct for any placement, so this
checks the executor runs them); tests/test_algorithms_hier.py runs them on two emulated
hosts with the communicator's real layout.
"""

from __future__ import annotations

import numpy as np
import pytest

from _algo_jobs import job_catalogue, job_default_selection

NRANKS = (2, 3, 4, 8)
COLLS = ("allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall")
LAYOUTS = {
    2: [((0,), (1,))],
    3: [((0, 1), (2,)), ((0,), (1,), (2,))],
    4: [((0, 1), (2, 3)), ((0, 2), (1, 3))],
    8: [((0, 1, 2, 3), (4, 5, 6, 7)), ((0, 1, 2), (3, 4, 5, 6, 7)), ((0, 4), (1, 5), (2, 6), (3, 7))],
}


@pytest.mark.parametrize("coll", COLLS)
@pytest.mark.parametrize("nranks", NRANKS)
def test_every_algorithm(pool, nranks, coll):
    pool(nranks).check(job_catalogue, coll=coll, host_layouts=LAYOUTS[nranks], deadline=240)


@pytest.mark.parametrize("nranks", (3, 8))
def test_tuner_selection_runs(pool, nranks):
    pool(nranks).check(job_default_selection)


def test_executor_short_user_chunk_into_scratch():
    """A short user chunk (count % k != 0) copied into a full-length scratch chunk and back (one rank, count 1)."""
    import pyxccl
    from pyxccl.ir.builder import ProgramBuilder
    from pyxccl.ir.program import Buf
    from pyxccl.ir.verify import verify

    b = ProgramBuilder("short_into_scratch", "allreduce", 1, 2)  # k = 2 chunks; count 1: chunk 1 is empty
    tb = b.threadblock(0)
    tb.copy(Buf.INPUT, 0, Buf.OUTPUT, 0)
    tb.copy(Buf.INPUT, 1, Buf.SCRATCH, 0)  # short user chunk -> full scratch chunk
    tb.copy(Buf.SCRATCH, 0, Buf.OUTPUT, 1)
    p = b.build()
    verify(p, inplace=False)
    comm = pyxccl.Communicator(1, pyxccl.get_unique_id(), 0)
    try:
        x, y = np.ones(1, np.float32), np.zeros(1, np.float32)
        comm.all_reduce(x, y, algorithm=p)
        assert y[0] == 1
    finally:
        comm.destroy()
