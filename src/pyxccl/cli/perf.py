"""``pyxccl-perf``: the nccl-tests of pyxccl.

    pyxccl-perf -n 4 -c allreduce -b 8 -e 256M -f 2 -d float32 -o sum --iters 20 --warmup 5 --check
    pyxccl-run -n 4 pyxccl-perf -c all -b 8 -e 64M --check          # or under torchrun / mpirun

Prints nccl-tests' columns (size, count, type, redop, root, then time / algbw /
busbw / #wrong out of place and in place) with nccl-tests' size convention and
busbw factors, and ends with the average bus bandwidth. ``-J out.json`` writes the
rows as JSON, ``--plot out.png`` draws busbw against size (matplotlib). With ``-n``
and no launcher around it, it starts the ranks itself (through pyxccl-run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

#: collective -> (nccl-tests name, rooted, reducing, total = count * n, busbw factor)
COLLECTIVES = {
    "allreduce": ("all_reduce", False, True, False, lambda n: 2 * (n - 1) / n),
    "broadcast": ("broadcast", True, False, False, lambda n: 1.0),
    "reduce": ("reduce", True, True, False, lambda n: 1.0),
    "allgather": ("all_gather", False, False, True, lambda n: (n - 1) / n),
    "reducescatter": ("reduce_scatter", False, True, True, lambda n: (n - 1) / n),
    "alltoall": ("alltoall", False, False, True, lambda n: (n - 1) / n),
    "gather": ("gather", True, False, True, lambda n: (n - 1) / n),
    "scatter": ("scatter", True, False, True, lambda n: (n - 1) / n),
}
ALIASES = {v[0].replace("_", ""): k for k, v in COLLECTIVES.items()} | {v[0]: k for k, v in COLLECTIVES.items()}


def parse_size(text: str) -> int:
    """``8``, ``64K``, ``256M``, ``1G`` → bytes."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


@dataclass
class Row:
    """One line of the table (times in µs, bandwidths in GB/s)."""

    collective: str
    size: int
    count: int
    type: str
    redop: str
    root: int
    oop_time: float
    oop_algbw: float
    oop_busbw: float
    oop_wrong: int
    ip_time: float
    ip_algbw: float
    ip_busbw: float
    ip_wrong: int


class Case:
    """Buffers and calls for one (collective, size) on this rank."""

    def __init__(self, comm, coll: str, nbytes: int, dtype, op, root: int, algorithm: str | None):
        import pyxccl

        self.comm, self.coll, self.root, self.algo = comm, coll, root, algorithm
        self.n, self.rank = comm.size, comm.rank
        self.dtype = pyxccl.dtypes.dtype_of(dtype)
        self.op = op
        total = COLLECTIVES[coll][3]
        item = self.dtype.itemsize
        self.count = nbytes // item // (self.n if total else 1)
        self.nbytes = self.count * item * (self.n if total else 1)
        per_in = self.count * (self.n if coll in ("reducescatter", "alltoall", "scatter") else 1)
        per_out = self.count * (self.n if coll in ("allgather", "alltoall", "gather") else 1)
        self.inputs = [self._pattern(r, per_in) for r in range(self.n)] if coll in ("allreduce", "reduce", "reducescatter") else None
        self.input = self._pattern(self.rank, per_in)
        self.output = np.empty(per_out, self.dtype.np)
        self.work = np.empty(max(per_in, per_out), self.dtype.np)
        # the same array objects and op name on every call, as a training loop passes them, so
        # repeated small calls take pyxccl's repeat path (pyxccl.comm.repeat) like nccl-tests' loop
        self.work1, self.workn = self.work[:self.count], self.work[:self.count * self.n]
        self.out1 = self.output[:self.count]
        self.op_arg = op if op.name == "premul_sum" else op.name

    def _pattern(self, rank: int, count: int) -> np.ndarray:
        vals = (np.arange(count, dtype=np.int64) % 5 + rank + 1) % 7 + 1
        if self.op.name == "prod":
            vals = 1 + (vals % 2) * (self.n <= 8)
        return vals.astype(self.dtype.np)

    def run(self, inplace: bool) -> np.ndarray:
        """One call; returns the array holding this rank's result."""
        c, kw = self.comm, {"algorithm": self.algo} if self.algo else {}
        coll, r = self.coll, self.rank
        if coll == "allreduce":
            if inplace:
                return c.all_reduce(self.work1, None, self.op_arg, **kw)
            return c.all_reduce(self.input, self.output, self.op_arg, **kw)
        if coll == "broadcast":
            return c.broadcast(self.work1 if inplace else self.input, None if inplace else self.output,
                               root=self.root, **kw)
        if coll == "reduce":
            if inplace:
                return c.reduce(self.work1, None, self.op_arg, root=self.root, **kw)
            return c.reduce(self.input, self.output, self.op_arg, root=self.root, **kw)
        if coll == "allgather":
            if inplace:
                return c.all_gather(None, self.workn, **kw)
            return c.all_gather(self.input, self.output, **kw)
        if coll == "reducescatter":
            if inplace:
                return c.reduce_scatter(self.workn, None, self.op_arg, **kw)
            return c.reduce_scatter(self.input, self.output, self.op_arg, **kw)
        if coll == "alltoall":
            return c.all_to_all(self.workn, None, **kw) if inplace else c.all_to_all(self.input, self.output, **kw)
        if coll == "gather":
            if inplace:
                return c.gather(None if r == self.root else self.input, self.workn if r == self.root else None,
                                root=self.root, **kw)
            return c.gather(self.input, self.output if r == self.root else None, root=self.root, **kw)
        if coll == "scatter":
            if inplace and r == self.root:
                return c.scatter(self.workn, None, root=self.root, **kw)
            return c.scatter(self.input if r == self.root else None, self.out1, root=self.root, **kw)
        raise ValueError(coll)

    def prepare(self, inplace: bool) -> None:
        """Put the input where an in-place call expects it."""
        if not inplace:
            return
        r, cnt = self.rank, self.count
        if self.coll in ("allgather", "gather"):
            self.work[r * cnt:(r + 1) * cnt] = self.input
        else:
            self.work[:self.input.size] = self.input

    def expected(self) -> np.ndarray | None:
        """What this rank's result must be (None: nothing to check on this rank)."""
        from pyxccl.runtime.kernels import postdivide
        from pyxccl.runtime.kernels.host import ufunc

        coll, r, n, cnt = self.coll, self.rank, self.n, self.count
        if coll in ("allreduce", "reduce", "reducescatter"):
            if coll == "reduce" and r != self.root:
                return None
            ins = [x.astype(np.float64) if self.dtype.is_low_precision else x for x in self.inputs]
            acc = ins[0].copy()
            for x in ins[1:]:
                ufunc(self.op)(acc, x, out=acc)
            acc = acc.astype(self.dtype.np)
            if self.op.name == "avg":
                postdivide(acc, n)
            return acc[r * cnt:(r + 1) * cnt] if coll == "reducescatter" else acc
        if coll == "broadcast":
            return self._pattern(self.root, cnt)
        if coll in ("allgather", "gather"):
            if coll == "gather" and r != self.root:
                return None
            return np.concatenate([self._pattern(q, cnt) for q in range(n)]) if cnt else self.output[:0]
        if coll == "alltoall":
            return np.concatenate([self._pattern(q, cnt * n)[r * cnt:(r + 1) * cnt] for q in range(n)]) if cnt else self.output[:0]
        if coll == "scatter":
            return self._pattern(self.root, cnt * n)[r * cnt:(r + 1) * cnt]
        raise ValueError(coll)

    def wrong(self, got) -> int:
        exp = self.expected()
        if exp is None:
            return 0
        got = np.asarray(got).reshape(-1)[:exp.size]
        if self.dtype.is_float:
            tol = 0.0 if self.op.name in ("min", "max") or not COLLECTIVES[self.coll][2] else 0.02
            bad = ~np.isclose(got.astype(np.float64), exp.astype(np.float64), rtol=tol, atol=tol)
        else:
            bad = got != exp
        return int(bad.sum())


def _time(case: Case, inplace: bool, iters: int, warmup: int) -> float:
    if inplace:  # repeated in-place reductions of zeros stay zero (no overflow, no denormals)
        case.work.fill(0)
    for _ in range(warmup):
        case.run(inplace)
    case.comm.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        case.run(inplace)
    return (time.perf_counter() - t0) / max(1, iters)


def _sum_over_ranks(comm, values: list[float]) -> list[float]:
    buf = np.array(values, dtype=np.float64)
    comm.all_reduce(buf)
    return buf.tolist()


def run_perf(comm, args: argparse.Namespace, out=sys.stdout) -> list[Row]:
    """Run the sweep on every rank; rank 0 prints the table and returns the rows."""
    import pyxccl

    op = pyxccl.premul_sum(args.premul) if args.op == "premul_sum" else pyxccl.dtypes.op_of(args.op)
    n, rows, started = comm.size, [], time.monotonic()
    lead = comm.rank == 0
    if lead:
        print(f"# pyxccl-perf {pyxccl.__version__}: {n} ranks, type {args.datatype}, op {op}, iters {args.iters}, "
              f"warmup {args.warmup}, check {int(args.check)}", file=out)
        print("#" + " " * 58 + "out-of-place                       in-place", file=out)
        print(f"#{'size':>12}{'count':>14}{'type':>10}{'redop':>8}{'root':>6}"
              f"{'time':>9}{'algbw':>8}{'busbw':>8}{'#wrong':>7}{'time':>9}{'algbw':>8}{'busbw':>8}{'#wrong':>7}", file=out)
        print(f"#{'(B)':>12}{'(elements)':>14}{'':>24}{'(us)':>9}{'(GB/s)':>8}{'(GB/s)':>8}{'':>7}"
              f"{'(us)':>9}{'(GB/s)':>8}{'(GB/s)':>8}", file=out)
    for coll in args.collectives:
        name, rooted, reducing, _, factor = COLLECTIVES[coll]
        if lead and len(args.collectives) > 1:
            print(f"# Collective test: {name}", file=out)
        size = args.min_bytes
        while size <= args.max_bytes:
            case = Case(comm, coll, size, args.datatype, op, args.root, args.algo)
            res = []
            for inplace in (False, True):
                wrong = 0
                if args.check:
                    case.prepare(inplace)
                    wrong = case.wrong(case.run(inplace))
                t = _time(case, inplace, args.iters, args.warmup)
                res.append((t, wrong))
            (t_oop, w_oop), (t_ip, w_ip) = res
            t_oop, t_ip, w_oop, w_ip = _sum_over_ranks(comm, [t_oop, t_ip, w_oop, w_ip])
            t_oop, t_ip = t_oop / n, t_ip / n  # average over ranks, like nccl-tests -a 1
            def bw(t: float) -> float:
                return case.nbytes / t / 1e9 if t > 0 else 0.0
            row = Row(name, case.nbytes, case.count, case.dtype.nccl_name, op.nccl_name if reducing else "none",
                      args.root if rooted else -1, t_oop * 1e6, bw(t_oop), bw(t_oop) * factor(n), int(w_oop),
                      t_ip * 1e6, bw(t_ip), bw(t_ip) * factor(n), int(w_ip))
            rows.append(row)
            if lead:
                chk = (lambda w: f"{w:7d}") if args.check else (lambda w: f"{'N/A':>7}")
                print(f" {row.size:12d}{row.count:14d}{row.type:>10}{row.redop:>8}{row.root:6d}"
                      f"{row.oop_time:9.1f}{row.oop_algbw:8.3f}{row.oop_busbw:8.3f}{chk(row.oop_wrong)}"
                      f"{row.ip_time:9.1f}{row.ip_algbw:8.3f}{row.ip_busbw:8.3f}{chk(row.ip_wrong)}", file=out, flush=True)
                if time.monotonic() - started > 10:
                    print(f"pyxccl-perf: {coll} {size} B done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
            size = size * args.factor if args.factor > 1 else size + max(1, args.increment)
    if lead:
        busbws = [b for r in rows for b in (r.oop_busbw, r.ip_busbw)]
        wrong = sum(r.oop_wrong + r.ip_wrong for r in rows)
        print(f"# Out of bounds values : {wrong} {'OK' if not wrong else 'WRONG'}", file=out)
        print(f"# Avg bus bandwidth    : {sum(busbws) / max(1, len(busbws)):.3f}", file=out)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([asdict(r) for r in rows], f, indent=1)
        if args.plot:
            plot(rows, args.plot)
    return rows


def plot(rows: list[Row], path: str) -> None:
    """Draw busbw (out of place) against size, one line per collective (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("pyxccl-perf: --plot needs matplotlib (pip install 'pyxccl[plot]')", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for coll in dict.fromkeys(r.collective for r in rows):
        pts = [(r.size, r.oop_busbw) for r in rows if r.collective == coll]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=coll)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title("pyxccl-perf, out of place")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyxccl-perf", description=__doc__.splitlines()[0])
    p.add_argument("-n", "--nranks", type=int, help="start this many local ranks (when not under a launcher)")
    p.add_argument("-c", "--collective", default="allreduce", help="a collective, a comma list, or 'all'")
    p.add_argument("-b", "--minbytes", dest="min_bytes", type=parse_size, default=parse_size("32M"))
    p.add_argument("-e", "--maxbytes", dest="max_bytes", type=parse_size, default=parse_size("32M"))
    p.add_argument("-f", "--stepfactor", dest="factor", type=int, default=2)
    p.add_argument("-i", "--stepbytes", dest="increment", type=parse_size, default=0)
    p.add_argument("-d", "--datatype", default="float32")
    p.add_argument("-o", "--op", default="sum", help="sum, prod, min, max, avg, premul_sum")
    p.add_argument("--premul", type=float, default=0.5, help="scalar of premul_sum")
    p.add_argument("-r", "--root", type=int, default=0)
    p.add_argument("--iters", "--iterations", dest="iters", type=int, default=20)
    p.add_argument("-w", "--warmup", "--warmup_iters", dest="warmup", type=int, default=5)
    p.add_argument("--check", action="store_true", help="check every result (#wrong columns)")
    p.add_argument("--algo", help="benchmark one algorithm (a registered name)")
    p.add_argument("-J", "--json", help="write the rows as JSON")
    p.add_argument("--plot", help="write a PNG of busbw against size (matplotlib)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``pyxccl-perf``."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.collective == "all":
        args.collectives = list(COLLECTIVES)
    else:
        args.collectives = []
        for c in args.collective.split(","):
            key = ALIASES.get(c.strip().lower().replace("-", "_"), ALIASES.get(c.strip().lower().replace("_", "")))
            if key is None:
                raise SystemExit(f"pyxccl-perf: unknown collective {c!r}; use one of {', '.join(COLLECTIVES)} or all")
            args.collectives.append(key)
    under_launcher = any(v in os.environ for v in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"))
    if args.nranks and not under_launcher:
        from .run import launch

        rest = [a for i, a in enumerate(argv) if not _is_n_flag(argv, i)]
        code = launch(args.nranks, [sys.executable, "-u", "-m", "pyxccl.cli.perf", *rest], prefix=False)
        sys.exit(code)
    import pyxccl

    comm = pyxccl.init()
    try:
        rows = run_perf(comm, args)
    finally:
        comm.destroy()
    if comm.rank == 0 and any(r.oop_wrong or r.ip_wrong for r in rows):
        sys.exit(1)


def _is_n_flag(argv: list[str], i: int) -> bool:
    a = argv[i]
    if a in ("-n", "--nranks"):
        return True
    if i > 0 and argv[i - 1] in ("-n", "--nranks"):
        return True
    return a.startswith("--nranks=") or (a.startswith("-n") and a[2:].isdigit())


if __name__ == "__main__":
    main()
