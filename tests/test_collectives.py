"""Every collective against a numpy reference, on 1, 2, 3, 4, 5 and 8 ranks.

Each job runs many calls in one round trip to the pool; every rank rebuilds every
rank's input (harness.make_block), computes its own expected output and returns the
mismatches it saw. The matrix (see build_cases):

- small: counts 0, 1, 7 x every dtype x every valid op (reducing collectives) x roots
  0 and N-1 (rooted ones); in/out of place and sync/async rotate so that every four
  consecutive calls cover all four modes, and the two in-place spellings alternate;
- prime: 100003 elements per block, every dtype, sum (random dense floats, checked with
  a tolerance) plus one more op rotating through prod/min/max/avg/premul_sum;
- large: >= 16 MiB per call: float32 sum, int64 max, bfloat16 sum (N = 2, 3, 8);
- socket: a subset of the above with PYXCCL_TRANSPORT=socket on 2 and 3 ranks, and on
  ranks spread over two emulated hosts (PYXCCL_HOSTID: "AABB", and "ABABA" where a host's
  ranks are not contiguous), where the tuner may pick multi-host algorithms.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import pyxccl
from harness import (COLLECTIVES, DTYPE_NAMES, OP_NAMES, REDUCING, ROOTED, Case, mode_of, np_dtype,
                     op_valid, run_cases)

NRANKS = (1, 2, 3, 4, 5, 8)
PRIME = 100003
MiB = 1 << 20
LARGE_CASES = (("float32", "sum"), ("int64", "max"), ("bfloat16", "sum"))


def _roots(coll: str, nranks: int) -> list[int]:
    return sorted({0, nranks - 1}) if coll in ROOTED else [0]


def _ops(coll: str, dtype: str) -> list[str]:
    return [op for op in OP_NAMES if op_valid(op, dtype)] if coll in REDUCING else ["sum"]


def _blocks(coll: str, nranks: int) -> int:
    """How many blocks of ``count`` the biggest buffer of ``coll`` has."""
    return 1 if coll in ("all_reduce", "broadcast", "reduce") else nranks


def build_cases(coll: str, nranks: int, size: str, seed: int = 1) -> list[Case]:
    cases: list[Case] = []
    k = 0

    def add(dtype: str, count: int, op: str, root: int, dense: bool = False) -> None:
        nonlocal k
        inplace, async_op = mode_of(k)
        cases.append(Case(coll, dtype, count, op, root, inplace, async_op, seed, dense, form=(k >> 2) & 1))
        k += 1

    if size == "small":
        for root in _roots(coll, nranks):
            for count in (0, 1, 7):
                for dtype in DTYPE_NAMES:
                    for op in _ops(coll, dtype):
                        add(dtype, count, op, root)
    elif size == "prime":
        rotating = [op for op in OP_NAMES if op != "sum"]
        j = nranks  # start the rotation somewhere else on every rank count
        roots = _roots(coll, nranks)
        for i, dtype in enumerate(DTYPE_NAMES):
            root = roots[i % len(roots)]
            if coll in REDUCING:
                add(dtype, PRIME, "sum", root, dense=dtype in ("float32", "float64", "bfloat16", "float16"))
                while not op_valid(rotating[j % len(rotating)], dtype):
                    j += 1
                add(dtype, PRIME, rotating[j % len(rotating)], root)
                j += 1
            else:
                add(dtype, PRIME, "sum", root)
    elif size == "large":
        k = nranks  # rotate the modes differently per rank count
        nblocks = _blocks(coll, nranks)
        for i, (dtype, op) in enumerate(LARGE_CASES):
            if coll not in REDUCING and op != "sum":
                op = "sum"
            elements = 16 * MiB // np_dtype(dtype).itemsize
            add(dtype, -(-elements // nblocks), op, nranks - 1 if i == 0 else 0)
    elif size == "socket":
        for root in _roots(coll, nranks):
            for count in (0, 1, 7):
                for dtype in DTYPE_NAMES:
                    ops = _ops(coll, dtype) if dtype in ("float32", "int32", "bfloat16") else ["sum"]
                    for op in ops:
                        add(dtype, count, op, root)
        for dtype in ("float32", "int8", "float8_e5m2"):
            add(dtype, PRIME, "sum", nranks - 1)
        elements = 16 * MiB // 4
        add("float32", -(-elements // _blocks(coll, nranks)), "sum", 0)
    else:
        raise ValueError(size)
    return cases


# ---------------------------------------------------------------------------- jobs (run on every rank)

def job_matrix(comm, coll: str, size: str, seed: int = 1) -> list[str]:
    return run_cases(comm, build_cases(coll, comm.size, size, seed))


def job_barrier(comm, rounds: int = 4) -> list[str]:
    """Nobody leaves a barrier before the last rank entered it (one rank arrives 150 ms late)."""
    failures = []
    for i in range(rounds):
        if comm.rank == i % comm.size:
            time.sleep(0.15)
        enter = time.time()
        if i % 2:
            work = comm.barrier(async_op=True)
            if not isinstance(work, pyxccl.Work):
                failures.append(f"barrier(async_op=True) returned {type(work).__name__}")
            else:
                work.wait(60)
        else:
            comm.barrier()
        leave = time.time()
        latest = np.array([enter])
        comm.all_reduce(latest, op="max")
        if leave < latest[0]:
            failures.append(f"round {i}: left the barrier {latest[0] - leave:.4f} s before the last rank entered")
    return failures


def job_async_queue(comm, seed: int = 7) -> list[str]:
    """Every collective queued async at once (9 deep), then a blocking one behind them."""
    n = comm.size
    cases = []
    for i, coll in enumerate(COLLECTIVES):
        dtype = ("float32", "int64", "bfloat16", "uint8")[i % 4]
        op = ("sum", "max", "min", "avg")[i % 4] if coll in REDUCING else "sum"
        cases.append(Case(coll, dtype, 50001 if i % 2 else 7, op, root=(i * 3) % n, inplace=bool(i % 3 == 1),
                          async_op=True, seed=seed))
    cases.append(Case("all_reduce", "float64", 1000, "sum", async_op=True, seed=seed, inplace=True))
    cases.append(Case("all_reduce", "int32", 1000, "sum", async_op=False, seed=seed))  # blocking, behind the queue
    return run_cases(comm, cases, depth=len(cases))


def job_transports(comm) -> list[str]:
    return [comm.transport_of(p) for p in range(comm.size)]


# ---------------------------------------------------------------------------- tests

@pytest.mark.parametrize("nranks", NRANKS)
@pytest.mark.parametrize("coll", COLLECTIVES)
def test_small_counts_every_dtype_and_op(pool, coll, nranks):
    pool(nranks).check(job_matrix, coll=coll, size="small")


@pytest.mark.parametrize("nranks", NRANKS)
@pytest.mark.parametrize("coll", COLLECTIVES)
def test_prime_count_every_dtype(pool, coll, nranks):
    pool(nranks).check(job_matrix, coll=coll, size="prime")


@pytest.mark.parametrize("nranks", (2, 3, 8))
@pytest.mark.parametrize("coll", COLLECTIVES)
def test_16mib(pool, coll, nranks):
    pool(nranks).check(job_matrix, coll=coll, size="large", deadline=240)


@pytest.mark.parametrize("nranks", NRANKS)
def test_barrier(pool, nranks):
    pool(nranks).check(job_barrier)


@pytest.mark.parametrize("nranks", NRANKS)
def test_async_calls_queue_and_complete_in_order(pool, nranks):
    pool(nranks).check(job_async_queue)


@pytest.mark.parametrize("nranks", NRANKS)
def test_same_host_peers_use_shm(pool, nranks):
    kinds = pool(nranks).run(job_transports)
    for rank, row in enumerate(kinds):
        assert row == ["self" if p == rank else "shm" for p in range(nranks)], (rank, row)


# ---------------------------------------------------------------------------- the socket transport

@pytest.mark.parametrize("nranks", (2, 3))
def test_socket_pool_uses_sockets(pool, nranks):
    kinds = pool(nranks, "socket").run(job_transports)
    for rank, row in enumerate(kinds):
        assert row == ["self" if p == rank else "socket" for p in range(nranks)], (rank, row)


@pytest.mark.parametrize("nranks", (2, 3))
@pytest.mark.parametrize("coll", COLLECTIVES)
def test_socket_collectives(pool, coll, nranks):
    pool(nranks, "socket").check(job_matrix, coll=coll, size="socket", deadline=240)


@pytest.mark.parametrize("nranks", (2, 3))
def test_socket_barrier_and_async_queue(pool, nranks):
    p = pool(nranks, "socket")
    p.check(job_barrier)
    p.check(job_async_queue)


# ---------------------------------------------------------------------------- two emulated hosts (PYXCCL_HOSTID)

HOST_LAYOUTS = ("AABB", "ABABA")


@pytest.mark.parametrize("layout", HOST_LAYOUTS)
def test_emulated_hosts_use_shm_inside_and_sockets_across(pool, layout):
    kinds = pool(len(layout), f"hosts:{layout}").run(job_transports)
    for rank, row in enumerate(kinds):
        want = ["self" if p == rank else "shm" if layout[p] == layout[rank] else "socket" for p in range(len(layout))]
        assert row == want, (rank, row)


@pytest.mark.parametrize("layout", HOST_LAYOUTS)
@pytest.mark.parametrize("coll", COLLECTIVES)
def test_emulated_two_hosts(pool, coll, layout):
    pool(len(layout), f"hosts:{layout}").check(job_matrix, coll=coll, size="socket", deadline=240)


@pytest.mark.parametrize("layout", HOST_LAYOUTS)
def test_emulated_two_hosts_barrier_and_async_queue(pool, layout):
    p = pool(len(layout), f"hosts:{layout}")
    p.check(job_barrier)
    p.check(job_async_queue)
