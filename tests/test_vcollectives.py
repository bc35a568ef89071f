"""v-collectives (per-rank counts and displacements) on the same programs as their plain forms.

Counts include zeros and differ per rank; displacements leave gaps that must stay untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyxccl


def _counts(n: int, seed: int) -> list[int]:
    return [(q * 37 + seed) % 11 for q in range(n)]


def job_vcollectives(comm, seed: int, big: int = 0) -> list[str]:
    r, n = comm.rank, comm.size
    bad: list[str] = []
    counts = [c + big for c in _counts(n, seed)]
    displs = [sum(counts[:i]) + 3 * i for i in range(n)]  # gaps of 3 between blocks
    out = np.full(displs[-1] + counts[-1] + 2, -1, np.int32)
    comm.all_gatherv(np.full(counts[r], r, np.int32), out, counts, displs)
    expect = np.full_like(out, -1)
    for q in range(n):
        expect[displs[q]:displs[q] + counts[q]] = q
    if not np.array_equal(out, expect):
        bad.append(f"all_gatherv: got {out[:20]} expected {expect[:20]}")
    inplace = expect.copy()
    inplace[inplace >= 0] = -5
    inplace[displs[r]:displs[r] + counts[r]] = r
    comm.all_gatherv(None, inplace, counts, displs)
    if not np.array_equal(inplace[expect >= 0], expect[expect >= 0]):
        bad.append("all_gatherv in place: wrong blocks")

    cum = np.cumsum([0] + counts)
    src = (np.arange(cum[-1]) % 7 + r).astype(np.float64)
    ref = sum((np.arange(cum[-1]) % 7 + q).astype(np.float64) for q in range(n))[cum[r]:cum[r + 1]]
    got = comm.reduce_scatterv(src, np.empty(counts[r]), counts, op="sum")
    if not np.array_equal(got, ref):
        bad.append(f"reduce_scatterv: got {got[:8]} expected {ref[:8]}")
    got2 = comm.reduce_scatterv(src.copy(), None, counts, op="max")
    ref2 = (np.arange(cum[-1]) % 7 + n - 1).astype(np.float64)[cum[r]:cum[r + 1]]
    if not np.array_equal(np.asarray(got2), ref2):
        bad.append("reduce_scatterv in place (max): wrong")

    sc = [(r + q + seed) % 5 + big for q in range(n)]
    rc = [(q + r + seed) % 5 + big for q in range(n)]
    x = np.concatenate([np.full(sc[q], 100 * r + q, np.int64) for q in range(n)])
    y = np.zeros(sum(rc), np.int64)
    comm.all_to_allv(x, y, sc, rc, async_op=True).wait(60)
    exp = np.concatenate([np.full(rc[q], 100 * q + r, np.int64) for q in range(n)])
    if not np.array_equal(y, exp):
        bad.append(f"all_to_allv: got {y[:12]} expected {exp[:12]}")

    root = n - 1
    gc = [q + 1 + big for q in range(n)]
    g = np.zeros(sum(gc), np.float32) if r == root else None
    comm.gatherv(np.full(gc[r], r, np.float32), g, gc if r == root else None, root=root)
    if r == root and not np.array_equal(g, np.concatenate([np.full(gc[q], q, np.float32) for q in range(n)])):
        bad.append("gatherv: wrong")
    so = np.zeros(gc[r], np.float32)
    src = np.concatenate([np.full(gc[q], 10 + q, np.float32) for q in range(n)]) if r == 0 else None
    comm.scatterv(src, so, gc if r == 0 else None, root=0)
    if not (so == 10 + r).all():
        bad.append(f"scatterv: got {so}")
    return bad


def job_bad_counts(comm) -> list[str]:
    n = comm.size
    bad = []
    try:
        comm.all_gatherv(np.zeros(3, np.int32), np.zeros(100, np.int32), [1] * (n + 1))
        bad.append("all_gatherv with n+1 counts did not raise")
    except pyxccl.InvalidArgument as exc:
        if "counts" not in str(exc):
            bad.append(f"message does not name counts: {exc}")
    try:
        comm.all_gatherv(np.zeros(3, np.int32), np.zeros(2, np.int32), [3] * n)
        bad.append("all_gatherv into a too small output did not raise")
    except pyxccl.InvalidArgument as exc:
        if "output" not in str(exc):
            bad.append(f"message does not name output: {exc}")
    x = np.ones(4, np.float32)
    comm.all_reduce(x)
    if not (x == n).all():
        bad.append("a collective after the bad calls failed")
    return bad


@pytest.mark.parametrize("nranks", [1, 2, 3, 5, 8])
def test_vcollectives(pool, nranks):
    pool(nranks).check(job_vcollectives, seed=nranks)


def test_vcollectives_large_blocks_are_pipelined(pool):
    pool(3).check(job_vcollectives, seed=1, big=300_000)


def test_vcollectives_over_sockets(pool):
    pool(3, "socket").check(job_vcollectives, seed=2)


def test_bad_counts_are_rejected_on_the_calling_rank(pool):
    pool(2).check(job_bad_counts)
