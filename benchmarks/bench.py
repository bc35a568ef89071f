"""A multi-process benchmark of pyxccl's collectives on this host (nccl-tests columns, out-of-place).

    python benchmarks/bench.py -n 2 -b 8 -e 64M -c allreduce,allgather,reducescatter,broadcast,alltoall

Starts ``-n`` local processes, checks each result once against numpy, then times
``--iters`` calls per size after ``--warmup`` and prints, per collective, size,
count, time (µs, median over ranks' max), algbw and busbw (GB/s, nccl-tests
formulas). The full nccl-tests-style tool (``pyxccl-perf``) comes with the tools issue.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

BUSBW = {"allreduce": lambda n: 2 * (n - 1) / n, "allgather": lambda n: (n - 1) / n,
         "reducescatter": lambda n: (n - 1) / n, "alltoall": lambda n: (n - 1) / n, "broadcast": lambda n: 1.0}


def _parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def _call(comm, coll: str, nbytes: int, n: int):
    """Buffers sized like nccl-tests (size = the largest per-rank buffer) and the call to time."""
    count = max(1, nbytes // 4)
    if coll == "allreduce":
        x, y = np.ones(count, np.float32), np.empty(count, np.float32)
        return count, (lambda: comm.all_reduce(x, y)), lambda: bool((y == n).all())
    if coll == "broadcast":
        x, y = np.full(count, 3, np.float32), np.empty(count, np.float32)
        return count, (lambda: comm.broadcast(x, y, root=0)), lambda: bool((y == 3).all())
    per = max(1, count // n)
    if coll == "allgather":
        x, y = np.full(per, comm.rank, np.float32), np.empty(per * n, np.float32)
        return per, (lambda: comm.all_gather(x, y)), lambda: bool((y == np.repeat(np.arange(n), per)).all())
    if coll == "reducescatter":
        x, y = np.ones(per * n, np.float32), np.empty(per, np.float32)
        return per, (lambda: comm.reduce_scatter(x, y)), lambda: bool((y == n).all())
    if coll == "alltoall":
        x = np.repeat(np.arange(n, dtype=np.float32) + 10 * comm.rank, per)
        y = np.empty_like(x)
        return per, (lambda: comm.all_to_all(x, y)), lambda: bool((y == np.repeat(10 * np.arange(n) + comm.rank, per)).all())
    raise SystemExit(f"unknown collective {coll}")


def _worker(n: int, uid: bytes, rank: int, args: argparse.Namespace, q) -> None:
    import pyxccl

    comm = pyxccl.Communicator(n, pyxccl.UniqueId.from_bytes(uid), rank)
    rows = []
    for coll in args.collectives:
        size = args.min_bytes
        while size <= args.max_bytes:
            count, fn, check = _call(comm, coll, size, n)
            fn()
            wrong = 0 if check() else 1
            for _ in range(args.warmup):
                fn()
            times = []
            for _ in range(args.iters):
                comm.barrier()
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            rows.append((coll, size, count, times, wrong))
            size *= args.factor
    q.put((rank, rows))
    comm.destroy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--nranks", type=int, default=2)
    p.add_argument("-b", "--min-bytes", type=_parse_size, default=_parse_size("8"))
    p.add_argument("-e", "--max-bytes", type=_parse_size, default=_parse_size("16M"))
    p.add_argument("-f", "--factor", type=int, default=4)
    p.add_argument("-c", "--collectives", default="allreduce,allgather,reducescatter,broadcast,alltoall")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    args.collectives = args.collectives.split(",")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import pyxccl

    uid = pyxccl.get_unique_id()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args.nranks, uid.to_bytes(), r, args, q)) for r in range(args.nranks)]
    for proc in procs:
        proc.start()
    results = dict(q.get(timeout=1800) for _ in procs)
    for proc in procs:
        proc.join(60)
    n = args.nranks
    print(f"# pyxccl {pyxccl.__version__} benchmark: {n} ranks on one host, float32, out-of-place, "
          f"{args.iters} iterations, time = median over iterations of the slowest rank")
    print(f"# {'collective':>13} {'size(B)':>12} {'count':>12} {'time(us)':>10} {'algbw':>8} {'busbw':>8} {'#wrong':>6}")
    wrong_total = 0
    for i, (coll, size, count, _, _) in enumerate(results[0]):
        per_iter = [max(results[r][i][3][k] for r in range(n)) for k in range(args.iters)]
        t = statistics.median(per_iter)
        wrong = sum(results[r][i][4] for r in range(n))
        wrong_total += wrong
        algbw = size / t / 1e9
        print(f"  {coll:>13} {size:12d} {count:12d} {t * 1e6:10.1f} {algbw:8.3f} {algbw * BUSBW[coll](n):8.3f} {wrong:6d}")
    print(f"# wrong results: {wrong_total}")
    sys.exit(1 if wrong_total else 0)


if __name__ == "__main__":
    main()
