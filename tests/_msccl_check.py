"""One MSCCL program run on a communicator (host arrays, or a device mirror), checked against numpy."""

from __future__ import annotations

import numpy as np


def runs_right(comm, prog) -> bool:
    """Run ``prog`` (an allreduce, allgather or alltoall of ``comm.size`` ranks) once on ``comm``, in place
    when the program only runs in place, with a count that is not a multiple of its chunking; whether
    this rank got numpy's answer."""
    n, coll = prog.nranks, prog.collective
    inplace = not prog.outofplace
    count = 3 * prog.nchunksperloop + 5  # not a multiple of the chunking: padding is exercised too
    r = comm.rank
    if coll == "allreduce":
        x = (np.arange(count) % 11 + r).astype(np.float32)
        out = comm.all_reduce(x, None if inplace else np.empty_like(x), algorithm=prog)
        expect = sum((np.arange(count) % 11 + q).astype(np.float32) for q in range(n))
    elif coll == "allgather":
        per = count
        out = np.zeros(per * n, np.int32)
        mine = np.arange(per, dtype=np.int32) + 1000 * r
        if inplace:
            out[r * per:(r + 1) * per] = mine
            comm.all_gather(None, out, algorithm=prog)
        else:
            comm.all_gather(mine, out, algorithm=prog)
        expect = np.concatenate([np.arange(per, dtype=np.int32) + 1000 * q for q in range(n)])
    else:
        per = count
        x = np.concatenate([np.full(per, 100 * r + q, np.int64) for q in range(n)])
        out = comm.all_to_all(x, None if inplace else np.empty_like(x), algorithm=prog)
        expect = np.concatenate([np.full(per, 100 * q + r, np.int64) for q in range(n)])
    return bool(np.array_equal(np.asarray(out), expect))

