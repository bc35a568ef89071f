"""Repeated small blocking calls (src/pyxccl/repeat.py): reused plans must give the same results.

The second identical call (same numpy arrays, op) skips the checks and planning; these
tests change the arrays' contents, views and dtypes between calls and compare every
result with numpy, so a stale plan shows up as a wrong value or a missed error.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyxccl
from pyxccl import repeat


def _expected(n: int, base: np.ndarray, op: str) -> np.ndarray:
    vals = [base * (r + 1) for r in range(n)]
    if op == "sum":
        return sum(vals)
    if op == "max":
        return np.maximum.reduce(vals)
    if op == "avg":
        return sum(vals) / n
    raise AssertionError(op)


def job_repeats(comm) -> list[str]:
    n, me = comm.size, comm.rank
    failures = []
    comm._repeats.clear()
    for dtype in (np.float32, np.int64):
        for op in ("sum", "max") + (("avg",) if dtype == np.float32 else ()):
            x = np.empty(1000, dtype)
            out = np.empty(1000, dtype)
            for it in range(5):  # in place, then out of place, on the same arrays each time
                base = (np.arange(1000) % 7 + it).astype(dtype)
                x[:] = base * (me + 1)
                comm.all_reduce(x, op=op)
                if not np.allclose(x, _expected(n, base, op)):
                    failures.append(f"in place {dtype.__name__} {op} iteration {it}: wrong result")
                x[:] = base * (me + 1)
                comm.all_reduce(x, out, op=op)
                if not np.allclose(out, _expected(n, base, op)) or not np.array_equal(x, base * (me + 1)):
                    failures.append(f"out of place {dtype.__name__} {op} iteration {it}: wrong result")
    if not comm._repeats._entries:
        failures.append("no call was remembered")
    # the same object with another shape or dtype must not reuse the old plan
    y = np.ones(64, np.float32)
    comm.all_reduce(y)
    comm.all_reduce(y)
    y.shape = (8, 8)
    y[:] = 1
    comm.all_reduce(y)
    if not np.all(y == n):
        failures.append(f"after a reshape: {y.ravel()[0]} != {n}")
    z = np.ones(64, np.float32)
    comm.all_reduce(z)
    z.dtype = np.int32  # same memory, another type: 64 int32 values
    z[:] = 3
    comm.all_reduce(z)
    if not np.all(z == 3 * n):
        failures.append(f"after a dtype change: {z[0]} != {3 * n}")
    # more arrays than entries: the oldest are evicted, results stay right
    arrays = [np.full(4, i, np.float64) for i in range(repeat.MAX_ENTRIES + 4)]
    for _ in range(2):
        for i, a in enumerate(arrays):
            a[:] = i
            comm.all_reduce(a)
            if not np.all(a == i * n):
                failures.append(f"array {i}: {a[0]} != {i * n}")
    if len(comm._repeats._entries) > repeat.MAX_ENTRIES:
        failures.append(f"{len(comm._repeats._entries)} entries kept (max {repeat.MAX_ENTRIES})")
    # a large call is not remembered; a bad op on a remembered array still raises
    big = np.ones(repeat.SMALL_BYTES // 4 + 1, np.float32)
    comm.all_reduce(big)
    if any(e.input is big for e in comm._repeats._entries.values()):
        failures.append("a call above SMALL_BYTES was remembered")
    try:
        comm.all_reduce(arrays[0], op="bogus")
        failures.append("op='bogus' was accepted on a remembered array")
    except pyxccl.InvalidArgument:
        pass
    return failures


@pytest.mark.parametrize("nranks", (1, 2, 3, 5))
def test_repeated_calls_reuse_plans_correctly(pool, nranks):
    pool(nranks).check(job_repeats)


def test_repeated_calls_over_sockets(pool):
    pool(2, "socket").check(job_repeats)
