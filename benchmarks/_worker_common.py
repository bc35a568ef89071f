"""The measurement method every ``benchmarks/_worker_*.py`` shares (numpy and the stdlib only).

It must import in the MPI virtual environments too, which have numpy and mpi4py but
neither pyxccl nor torch, so it depends on nothing else.

Method, the same for every library (see ``benchmarks/compare.py``):

* float32 buffers; "size" follows nccl-tests: the largest per-rank buffer, which is the
  buffer for allreduce / broadcast, the per-rank *output* for allgather, the per-rank
  *input* for reducescatter and the per-rank send buffer for alltoall. Chunked ops round
  the element count to a multiple of N (at least N), so "8 B" at N=4 is really 16 B; rows
  carry the real byte count in ``bytes``.
* per (op, size): one correctness check with rank-dependent small-integer data (exact
  float32 compare; ``wrong`` = wrong elements summed over ranks), one timed call, warmup
  (``warmup_s``, 0.1 s, at least 2 calls; 1 call when a call takes over 0.25 s), then S samples; a
  sample = barrier, then K back-to-back calls, elapsed / K. K makes a sample last at least
  ``sample_ms`` (K = 1 for big sizes); S makes the (op, size) cost about ``budget`` seconds,
  within [min_samples, max_samples] (at least 3 when a call takes over 0.25 s).
* per sample the max over ranks; the row's time is the median sample (min and max kept).
* busbw = size / time * factor: 2(N-1)/N allreduce, (N-1)/N allgather / reducescatter /
  alltoall, 1 broadcast (nccl-tests' factors); GB = 1e9 B.

A backend supplies ``rank``, ``n``, ``barrier()``, ``allreduce_f64(values, op)`` with op
"max" or "sum", ``inplace_ops`` (ops whose call reads its input from the receive buffer,
e.g. torch's in-place all_reduce) and ``make_call(op, send, recv)`` → a zero-argument
callable that runs the op once and returns the array holding this rank's result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

OPS = ["allreduce", "allgather", "reducescatter", "broadcast", "alltoall"]
CHUNKED = ("allgather", "reducescatter", "alltoall")
BUSBW = {"allreduce": lambda n: 2.0 * (n - 1) / n, "allgather": lambda n: (n - 1) / n,
         "reducescatter": lambda n: (n - 1) / n, "broadcast": lambda n: 1.0, "alltoall": lambda n: (n - 1) / n}
ROOT = 0
RESULT_TAG = "COMPARE-RESULT "
ROW_TAG = "COMPARE-ROW "
INFO_TAG = "COMPARE-INFO "


def parse_size(text: str) -> int:
    """``8``, ``1K``, ``64K``, ``16M``, ``1G`` (binary multiples) → bytes."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def elem_count(op: str, size: int, n: int) -> int:
    """Elements of the op's 'size' buffer (float32), rounded to a multiple of n for chunked ops."""
    e = max(1, size // 4)
    if op in CHUNKED:
        e = max(n, (e // n) * n)
    return e


def add_args(p: argparse.ArgumentParser) -> None:
    """The measurement options every worker takes (compare.py passes them through)."""
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--sizes", default="8,1K,64K,1M,16M,64M,256M")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed samples per (op, size)")
    p.add_argument("--sample-ms", type=float, default=20.0, help="shortest sample (K back-to-back calls)")
    p.add_argument("--warmup-s", type=float, default=0.1, help="seconds of warmup calls (at least 2 calls)")
    p.add_argument("--min-samples", type=int, default=5)
    p.add_argument("--max-samples", type=int, default=50)
    p.add_argument("--label", default="", help="free text copied into the result")


# ------------------------------------------------------------------ data and checks

def _pattern(count: int, mod: int) -> np.ndarray:
    """float32 ``i % mod`` (exact: small integers), built without int64 temporaries."""
    a = np.arange(count, dtype=np.int32)
    np.remainder(a, mod, out=a)
    return a.astype(np.float32)


class Case:
    """Buffers of one (op, size) on one rank, with the input pattern and the expected result."""

    def __init__(self, op: str, e: int, n: int, rank: int):
        self.op, self.e, self.n, self.rank = op, e, n, rank
        c = e // n
        if op == "allreduce":
            self.send, self.recv = np.empty(e, np.float32), np.empty(e, np.float32)
        elif op == "allgather":
            self.send, self.recv = np.empty(c, np.float32), np.empty(e, np.float32)
        elif op == "reducescatter":
            self.send, self.recv = np.empty(e, np.float32), np.empty(c, np.float32)
        elif op in ("broadcast", "alltoall"):
            self.send, self.recv = np.empty(e, np.float32), np.empty(e, np.float32)
        else:
            raise ValueError(f"unknown op {op!r}; use one of {', '.join(OPS)}")

    def fill(self) -> None:
        """Rank-dependent input in ``send``; ``recv`` poisoned with -1."""
        op, e, n, r = self.op, self.e, self.n, self.rank
        c = e // n
        if op in ("allreduce", "reducescatter"):
            np.add(_pattern(e, 13), r + 1, out=self.send)
        elif op == "allgather":
            np.add(_pattern(c, 997), r * 1000, out=self.send)
        elif op == "broadcast":
            if r == ROOT:
                np.add(_pattern(e, 997), 5, out=self.send)
            else:
                self.send.fill(-2)
        elif op == "alltoall":
            p = _pattern(c, 7)
            for j in range(n):
                self.send[j * c:(j + 1) * c] = p + (r * 100 + j)
        self.recv.fill(-1)

    def expected(self) -> np.ndarray:
        op, e, n, r = self.op, self.e, self.n, self.rank
        c = e // n
        tri = n * (n + 1) / 2
        if op == "allreduce":
            x = _pattern(e, 13)
            x *= n
            x += tri
            return x
        if op == "reducescatter":
            x = _pattern(e, 13)[r * c:(r + 1) * c]
            x *= n
            x += tri
            return x
        if op == "allgather":
            p = _pattern(c, 997)
            return np.concatenate([p + q * 1000 for q in range(n)])
        if op == "broadcast":
            x = _pattern(e, 997)
            x += 5
            return x
        p = _pattern(c, 7)
        return np.concatenate([p + (q * 100 + r) for q in range(n)])

    def nwrong(self, result) -> int:
        got = np.asarray(result).reshape(-1)
        exp = self.expected()
        if got.size != exp.size:
            return int(exp.size)
        return int(np.count_nonzero(got != exp))


# ------------------------------------------------------------------ the timing loop

def measure(backend, args: argparse.Namespace, lib: str, info: dict) -> int:
    """Run every (op, size) of ``args`` on this rank; rank 0 prints ROW lines and one RESULT line."""
    n, rank = backend.n, backend.rank
    lead = rank == 0
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    rows, total_wrong, started = [], 0, time.perf_counter()

    def allmax(vals):
        return backend.allreduce_f64(vals, "max")

    if lead:
        print(INFO_TAG + json.dumps(info), flush=True)

    for op in ops:
        for size in sizes:
            e = elem_count(op, size, n)
            case = Case(op, e, n, rank)
            call = backend.make_call(op, case.send, case.recv)
            # correctness, once
            case.fill()
            if op in backend.inplace_ops:
                case.recv[:case.send.size] = case.send
            wrong = int(backend.allreduce_f64([float(case.nwrong(call()))], "sum")[0])
            total_wrong += wrong
            if op in backend.inplace_ops:
                case.recv.fill(0)  # keep repeated in-place sums at zero (no overflow, no denormals)
            # estimate, warmup
            backend.barrier()
            t0 = time.perf_counter()
            call()
            t1 = allmax([time.perf_counter() - t0])[0]
            nwarm = 1 if t1 > 0.25 else int(min(200, max(2, args.warmup_s / max(t1, 1e-7))))
            backend.barrier()
            t0 = time.perf_counter()
            for _ in range(nwarm):
                call()
            est = allmax([(time.perf_counter() - t0) / nwarm])[0]
            k = max(1, int(round(args.sample_ms / 1e3 / max(est, 1e-9))))
            lo = 3 if est > 0.25 else args.min_samples
            nsamp = int(min(args.max_samples, max(lo, args.budget / (k * max(est, 1e-9)))))
            samples = []
            for _ in range(nsamp):
                backend.barrier()
                t0 = time.perf_counter()
                for _ in range(k):
                    call()
                samples.append((time.perf_counter() - t0) / k)
            samples = allmax(samples)
            med = statistics.median(samples)
            nbytes = e * 4
            algbw = nbytes / med / 1e9
            row = {"op": op, "size": size, "bytes": nbytes, "count": e // n if op in CHUNKED else e,
                   "time_us": med * 1e6, "min_us": min(samples) * 1e6, "max_us": max(samples) * 1e6,
                   "algbw": algbw, "busbw": algbw * BUSBW[op](n), "wrong": wrong, "samples": nsamp, "iters": k}
            rows.append(row)
            if lead:
                print(ROW_TAG + json.dumps(row), flush=True)
            del call, case
    result = {"lib": lib, "nranks": n, "rows": rows, "wrong": total_wrong,
              "wall_s": time.perf_counter() - started, "info": info, "label": args.label}
    if lead:
        print(RESULT_TAG + json.dumps(result), flush=True)
    return 1 if total_wrong else 0


def spawn_ranks(n: int, argv_of, env_of) -> int:
    """Start ``n`` rank processes (``argv_of(rank)``, ``env_of(rank)`` → extra environment), wait for all.

    When one rank fails, the others are stopped (they would otherwise wait on it until
    their library's timeout). Returns the first non-zero exit status, or 0.
    """
    procs = []
    for r in range(n):
        env = dict(os.environ)
        env.update(env_of(r))
        procs.append(subprocess.Popen(argv_of(r), env=env, stdout=None if r == 0 else subprocess.DEVNULL))
    rc = 0
    by_pid = {p.pid: p for p in procs}
    try:
        while any(p.returncode is None for p in procs):
            pid, status = os.wait()  # blocks: no polling wakeups while the ranks measure
            p = by_pid.get(pid)
            if p is None:
                continue
            p.returncode = code = os.waitstatus_to_exitcode(status)
            if code and not rc:
                rc = code
                print(f"rank {procs.index(p)} exited with status {code}; stopping the others",
                      file=sys.stderr, flush=True)
                for q in procs:
                    if q.returncode is None:
                        q.send_signal(signal.SIGTERM)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
    return rc


def fail(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
    sys.exit(2)
