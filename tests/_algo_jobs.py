"""Jobs for the algorithm process tests (tests/test_algorithms_run.py, tests/test_algorithms_hier.py).

``run_algorithm_cases(comm, coll, algorithm, cases, hosts=None)`` runs each case (a
tuple ``(dtype, count, op, root, inplace)``) as one call of ``coll`` with
``algorithm=`` the registered name, or, when ``hosts`` is given, the algorithm's
Program built for that host layout (so host-aware algorithms run even where the
communicator itself sees one host), and checks every rank's result against a numpy
reference built from harness.make_block. Returns the failures (strings).
"""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np

from harness import compare, make_block, op_arg, reduce_ref, sentinel, unchanged

#: harness names of the collectives (comm method names) by IR collective name
METHOD = {"allreduce": "all_reduce", "broadcast": "broadcast", "reduce": "reduce", "allgather": "all_gather",
          "reducescatter": "reduce_scatter", "alltoall": "all_to_all", "gather": "gather", "scatter": "scatter"}


def _algorithm(comm: Any, coll: str, algorithm: str, root: int, hosts: Any, nchannels: int = 1) -> Any:
    if hosts is None and nchannels == 1:
        return algorithm or None  # "" / None: the tuner picks
    from pyxccl import algorithms
    if hosts is not None:
        hosts = tuple(tuple(h) for h in (comm.hosts if hosts == "comm" else hosts))
    return algorithms.program(coll, algorithm, comm.size, nchannels, root, hosts)


def one_call(comm: Any, coll: str, algo: Any, dtype: str, n: int, op: str, root: int, inplace: bool,
             seed: int, label: str) -> list[str]:
    N, me = comm.size, comm.rank

    def gen(r: int, b: int) -> np.ndarray:
        return make_block(seed, r, b, dtype, n, op)

    def red(block: int):
        return reduce_ref((gen(r, block) for r in range(N)), N, dtype, op)

    kw = {"algorithm": algo}
    opa = op_arg(op)
    f: list[str] = []
    blk = slice(me * n, (me + 1) * n)
    if coll == "allreduce":
        x = gen(me, 0)
        if inplace:
            out = x.copy()
            comm.all_reduce(out, op=opa, **kw)
        else:
            inp, out = x.copy(), sentinel(dtype, n)
            comm.all_reduce(inp, out, op=opa, **kw)
            f += unchanged(inp, x, label)
        f += compare(out, *red(0), label)
    elif coll == "broadcast":
        x = gen(me, 0)
        if inplace:
            out = x.copy()
            comm.broadcast(out, root=root, **kw)
        else:
            inp, out = x.copy(), sentinel(dtype, n)
            comm.broadcast(inp, out, root=root, **kw)
            f += unchanged(inp, x, label)
        f += compare(out, gen(root, 0), "bits", label)
    elif coll == "reduce":
        x = gen(me, 0)
        if inplace:
            out = x.copy()
            comm.reduce(out, op=opa, root=root, **kw)
        else:
            inp, out = x.copy(), sentinel(dtype, n)
            comm.reduce(inp, out, op=opa, root=root, **kw)
            f += unchanged(inp, x, label)
        if me == root:
            f += compare(out, *red(0), label)
        elif inplace:
            f += unchanged(out, x, label + " (non-root buffer)")
    elif coll == "allgather":
        x = gen(me, 0)
        out = sentinel(dtype, N * n)
        if inplace:
            out[blk] = x
            comm.all_gather(None, out, **kw)
        else:
            inp = x.copy()
            comm.all_gather(inp, out, **kw)
            f += unchanged(inp, x, label)
        f += compare(out, np.concatenate([gen(r, 0) for r in range(N)]), "bits", label)
    elif coll == "reducescatter":
        X = np.concatenate([gen(me, b) for b in range(N)])
        if inplace:
            buf = X.copy()
            comm.reduce_scatter(buf, None, op=opa, **kw)
            out = buf[blk]
        else:
            inp, out = X.copy(), sentinel(dtype, n)
            comm.reduce_scatter(inp, out, op=opa, **kw)
            f += unchanged(inp, X, label)
        f += compare(out, *red(me), label)
    elif coll == "alltoall":
        X = np.concatenate([gen(me, q) for q in range(N)])
        if inplace:
            out = X.copy()
            comm.all_to_all(out, **kw)
        else:
            inp, out = X.copy(), sentinel(dtype, N * n)
            comm.all_to_all(inp, out, **kw)
            f += unchanged(inp, X, label)
        f += compare(out, np.concatenate([gen(q, me) for q in range(N)]), "bits", label)
    elif coll == "gather":
        x = gen(me, 0)
        if me == root:
            out = sentinel(dtype, N * n)
            if inplace:
                out[blk] = x
                comm.gather(None, out, root=root, **kw)
            else:
                comm.gather(x.copy(), out, root=root, **kw)
            f += compare(out, np.concatenate([gen(r, 0) for r in range(N)]), "bits", label)
        else:
            comm.gather(x.copy(), root=root, **kw)
    elif coll == "scatter":
        out = sentinel(dtype, n)
        if me == root:
            X = np.concatenate([gen(root, b) for b in range(N)])
            if inplace:
                buf = X.copy()
                comm.scatter(buf, None, root=root, **kw)
                out = buf[blk]
            else:
                comm.scatter(X.copy(), out, root=root, **kw)
        else:
            comm.scatter(None, out, root=root, **kw)
        f += compare(out, gen(root, me), "bits", label)
    else:
        raise ValueError(coll)
    return f


def run_algorithm_cases(comm: Any, coll: str, algorithm: str, cases: list, hosts: Any = None,
                        seed: int = 3, nchannels: int = 1) -> list[str]:
    failures: list[str] = []
    for dtype, count, op, root, inplace in cases:
        label = (f"{coll}/{algorithm}[{comm.size} ranks, rank {comm.rank}] {dtype} count={count} op={op} "
                 f"root={root} {'in-place' if inplace else 'out-of-place'}" + (f" hosts={hosts}" if hosts else "")
                 + (f" nchannels={nchannels}" if nchannels > 1 else ""))
        try:
            algo = _algorithm(comm, coll, algorithm, root, hosts, nchannels)
            failures += one_call(comm, coll, algo, dtype, count, op, root, inplace, seed, label)
        except Exception as exc:  # noqa: BLE001 - reported; the ranks may no longer agree: stop
            failures.append(f"{label}: raised {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}")
            break
    return failures


def timed_allreduce(comm: Any, algorithm: str, count: int, iters: int = 5) -> float:
    import time
    x = np.ones(count, np.float32)
    comm.all_reduce(x, algorithm=algorithm)
    comm.barrier()
    t = time.perf_counter()
    for _ in range(iters):
        comm.all_reduce(x, algorithm=algorithm)
    return (time.perf_counter() - t) / iters


REDUCING = ("allreduce", "reduce", "reducescatter")
ROOTED = ("broadcast", "reduce")


def catalogue_cases(coll: str, n: int) -> list:
    """A few calls per algorithm: odd and prime counts (never a multiple of the chunking), 0, every mode."""
    roots = [0, n - 1, n // 2]
    ops = ["sum", "max", "prod", "min"] if coll in REDUCING else ["sum"] * 4
    return [
        ("float32", 7, ops[0], roots[0], False),
        ("bfloat16", 1, ops[2], roots[1], True),
        ("int64", 1003, ops[1], roots[2], True),
        ("float64", 30011, ops[0], roots[1], False),
        ("int8", 0, ops[3], roots[0], True),
        ("uint8", 4099, ops[3], roots[2], False),
    ]


def multichannel_cases(coll: str, n: int) -> list:
    """Calls for 3-channel programs; counts that are not multiples of the chunking leave short chunks."""
    return catalogue_cases(coll, n)[:4]


def job_catalogue(comm: Any, coll: str, host_layouts: list, seed: int = 11) -> list[str]:
    """Every registered algorithm of ``coll`` (host-aware ones once per layout in ``host_layouts``),
    on one channel, and a few calls on 3 channels (programs passed as ``algorithm=``)."""
    from pyxccl import algorithms
    failures: list[str] = []
    cases = catalogue_cases(coll, comm.size)
    for name in algorithms.names(coll):
        algo = algorithms.get(coll, name)
        if algo.host_aware:
            for i, hosts in enumerate(host_layouts):
                if algo.supports(comm.size, hosts):
                    failures += run_algorithm_cases(comm, coll, name, cases, hosts, seed)
                    if i == 0:
                        failures += run_algorithm_cases(comm, coll, name, multichannel_cases(coll, comm.size), hosts,
                                                        seed, nchannels=3)
        else:
            failures += run_algorithm_cases(comm, coll, name, cases, None, seed)
            failures += run_algorithm_cases(comm, coll, name, multichannel_cases(coll, comm.size), None, seed,
                                            nchannels=3)
    return failures


def job_catalogue_streamed(comm: Any, coll: str) -> list[str]:
    """:func:`job_catalogue`, counting the copies that went through the streaming loop: every rank
    must have streamed some (``coll`` one whose ranks all copy their own block at once; the
    environment sets ``PYXCCL_STREAM_MIN_BYTES`` low)."""
    from pyxccl.runtime.kernels import nt_copy as stream_copy
    real, streamed = stream_copy.copy_bytes, []

    def counting(dst: int, src: int, n: int) -> None:
        streamed.append(n)
        real(dst, src, n)

    stream_copy.copy_bytes = counting
    try:
        failures = job_catalogue(comm, coll, host_layouts=[])
    finally:
        stream_copy.copy_bytes = real
    if not streamed:
        failures.append(f"{coll}: no copy was streamed")
    return failures


def job_default_selection(comm: Any) -> list[str]:
    """Calls without algorithm= go through the tuner (whatever it picks must be right)."""
    failures: list[str] = []
    for coll in METHOD:
        for count in (3, 5000, 300007):
            failures += run_algorithm_cases(comm, coll, "", [("float32", count, "sum", comm.size - 1, False)])
    return failures

