"""``pyxccl-perf``: the nccl-tests of pyxccl.

    pyxccl-perf -n 4 -c allreduce -b 8 -e 256M -f 2 -d float32 -o sum --iters 20 --warmup 5 --check
    pyxccl-run -n 4 pyxccl-perf -c all -b 8 -e 64M --check          # or under torchrun / mpirun
    pyxccl-run -n 2 pyxccl-perf -c all -b 8 -e 256M --device cuda --check   # buffers in GPU memory

Prints nccl-tests' columns (size, count, type, redop, root, then time / algbw /
busbw / #wrong out of place and in place) with nccl-tests' size convention and
busbw factors, and ends with the average bus bandwidth. Sizes go from ``-b`` to ``-e``
by ``-f`` (or ``-i``), and ``-e`` itself is always measured last (``-b 8 -e 16M -f 4``
ends 2M, 8M, 16M; nccl-tests would stop at 8M). ``-J out.json`` writes the rows as JSON,
``--plot out.png`` draws busbw against size, out of place and in place (matplotlib,
checked before anything runs). With ``-n`` and no launcher around it, it starts the
ranks itself (through pyxccl-run). A bad ``PYXCCL_*`` value or argument ends it with one
line ``pyxccl-perf: error: ...`` and exit status 2.

``--device cuda`` puts every buffer in device memory of ``cuda:<local rank % device count>``
(allocated through :mod:`pyxccl.cuda`: neither torch nor CuPy is needed); the clock stops once
the device finished (``synchronize``), and ``--check`` fills the inputs and reads the outputs
through copies to and from the host. ``PYXCCL_DEVICE_BACKEND=emulated`` serves ``cuda:0``
from host memory (no GPU), which is how the tests run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import check_config, fail, one_line_errors

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


def sizes(min_bytes: int, max_bytes: int, factor: int = 2, increment: int = 0) -> list[int]:
    """The message sizes of a sweep: ``min_bytes`` times ``factor`` (or plus ``increment`` when the
    factor is 1) while at most ``max_bytes``, then ``max_bytes`` itself when the steps passed over it
    (``-b 8 -e 16M -f 4``: ..., 2M, 8M, 16M), so the sweep always ends at the size asked for."""
    out, size = [], min_bytes
    while size <= max_bytes:
        out.append(size)
        size = size * factor if factor > 1 and size else size + max(1, increment)  # 0 B: then 1 B on
    if out and out[-1] < max_bytes:
        out.append(max_bytes)
    return out


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


class DeviceMemory:
    """``nbytes`` of plain device memory on ``dev`` holding ``dtype`` elements: the owner of the
    :class:`~pyxccl.memory.Buffer` views the calls are given (a call's result comes back as this
    object, or as a Buffer of a part of it)."""

    def __init__(self, dev, nbytes: int, dtype):
        self.dev, self.nbytes, self.dtype = dev, nbytes, dtype
        self.address = dev.alloc(max(1, nbytes))

    def buffer(self, start: int = 0, count: int | None = None):
        """Elements ``start .. start+count`` (all: None) as a Buffer on the device."""
        from pyxccl.memory import Buffer

        isz = self.dtype.itemsize
        count = self.nbytes // isz - start if count is None else count
        return Buffer.on_device(self, self.dev.name, self.address + start * isz, count * isz, self.dtype)

    def write(self, values: np.ndarray, start: int = 0) -> None:
        """Copy ``values`` from the host to elements ``start ..`` (synchronous)."""
        if values.size:
            self.dev.write(self.address + start * self.dtype.itemsize, values.tobytes())

    def free(self) -> None:
        self.dev.free_plain(self.address)


class Case:
    """Buffers and calls for one (collective, size) on this rank: numpy arrays, or device memory
    of ``device`` (a :mod:`pyxccl.cuda` device object) viewed as Buffers."""

    def __init__(self, comm, coll: str, nbytes: int, dtype, op, root: int, algorithm: str | None, device=None):
        import pyxccl

        self.comm, self.coll, self.root, self.algo, self.dev = comm, coll, root, algorithm, device
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
        self.input_host = self._pattern(self.rank, per_in)
        self.op_arg = op if op.name == "premul_sum" else op.name
        nwork = max(per_in, per_out)
        if device is None:
            self.input = self.input_host
            self.output = np.empty(per_out, self.dtype.np)
            self.work = np.empty(nwork, self.dtype.np)
            # the same array objects and op name on every call, as a training loop passes them, so
            # repeated small calls take pyxccl's repeat path (pyxccl.comm.repeat) like nccl-tests' loop
            self.work1, self.workn = self.work[:self.count], self.work[:self.count * self.n]
            self.out1 = self.output[:self.count]
            return
        item = self.dtype.itemsize
        self.mem: list[DeviceMemory] = []
        try:
            for count in (per_in, per_out, nwork):
                self.mem.append(DeviceMemory(device, count * item, self.dtype))
        except BaseException:
            self.close()
            raise
        m_in, m_out, m_work = self.mem
        m_in.write(self.input_host)
        self.input, self.output, self.work = m_in.buffer(), m_out.buffer(), m_work.buffer()
        self.work1, self.workn = m_work.buffer(0, self.count), m_work.buffer(0, self.count * self.n)
        self.out1 = m_out.buffer(0, self.count)

    def close(self) -> None:
        """Give the device memory back (once the device finished with it)."""
        if self.dev is not None and getattr(self, "mem", None):
            self.dev.synchronize()
            for m in self.mem:
                m.free()
            self.mem = []

    def sync(self) -> None:
        """Wait until the device finished the calls enqueued (host buffers: nothing to wait for)."""
        if self.dev is not None:
            self.dev.synchronize()

    def zero(self, output: bool = False) -> None:
        """Zero the work buffer (and the output), in order with the calls."""
        if self.dev is None:
            self.work.fill(0)
            if output:
                self.output.fill(0)
            return
        stream = self.dev.external_stream(0)  # the legacy default stream the calls are ordered on
        for m in (self.mem[2], self.mem[1]) if output else (self.mem[2],):
            self.dev.memset(m.address, m.nbytes, stream)

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
        """Before a checked call: clear the results, and put the input where an in-place call
        expects it."""
        self.zero(output=True)
        if not inplace:
            return
        r, cnt = self.rank, self.count
        start = r * cnt if self.coll in ("allgather", "gather") else 0
        if self.dev is None:
            self.work[start:start + self.input_host.size] = self.input_host
        else:
            self.sync()  # the memset above, before the host's copy
            self.mem[2].write(self.input_host, start)

    def to_host(self, got):
        """A call's result as a numpy array (a copy of device memory once the device finished)."""
        if self.dev is None or got is None:
            return got
        from pyxccl.memory import Buffer

        self.sync()
        if isinstance(got, DeviceMemory):
            address, nbytes = got.address, got.nbytes
        elif isinstance(got, Buffer):
            address, nbytes = got.address, got.nbytes
        else:
            raise TypeError(f"pyxccl-perf: a call on {self.dev.name} returned {type(got).__name__}")
        raw = self.dev.read(address, nbytes) if nbytes else b""
        return np.frombuffer(raw, self.dtype.np)

    def expected(self) -> np.ndarray | None:
        """What this rank's result must be (None: nothing to check on this rank)."""
        from pyxccl.runtime.kernels import postdivide
        from pyxccl.runtime.kernels.host import ufunc

        coll, r, n, cnt = self.coll, self.rank, self.n, self.count
        if coll in ("allreduce", "reduce", "reducescatter"):
            if coll == "reduce" and r != self.root:
                return None
            ins = [x.astype(np.float64) if self.dtype.is_low_precision else x for x in self.inputs]
            if self.op.name == "premul_sum":  # each input times the scalar first, then the sum
                ins = [x * x.dtype.type(self.op.scalar) for x in ins]
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
            return np.concatenate([self._pattern(q, cnt) for q in range(n)]) if cnt else np.empty(0, self.dtype.np)
        if coll == "alltoall":
            return (np.concatenate([self._pattern(q, cnt * n)[r * cnt:(r + 1) * cnt] for q in range(n)]) if cnt
                    else np.empty(0, self.dtype.np))
        if coll == "scatter":
            return self._pattern(self.root, cnt * n)[r * cnt:(r + 1) * cnt]
        raise ValueError(coll)

    def wrong(self, got) -> int:
        exp = self.expected()
        if exp is None:
            return 0
        got = np.asarray(self.to_host(got)).reshape(-1)[:exp.size]
        if self.dtype.is_float:
            tol = 0.0 if self.op.name in ("min", "max") or not COLLECTIVES[self.coll][2] else 0.02
            bad = ~np.isclose(got.astype(np.float64), exp.astype(np.float64), rtol=tol, atol=tol)
        else:
            bad = got != exp
        return int(bad.sum())


def _time(case: Case, inplace: bool, iters: int, warmup: int) -> float:
    if inplace:  # repeated in-place reductions of zeros stay zero (no overflow, no denormals)
        case.zero()
    for _ in range(warmup):
        case.run(inplace)
    case.sync()
    case.comm.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        case.run(inplace)
    case.sync()  # device buffers: the calls return once enqueued; the clock stops when they are done
    return (time.perf_counter() - t0) / max(1, iters)


def _sum_over_ranks(comm, values: list[float]) -> list[float]:
    buf = np.array(values, dtype=np.float64)
    comm.all_reduce(buf)
    return buf.tolist()


class DeviceUnusable(RuntimeError):
    """``--device cuda`` where no CUDA device can serve the buffers."""


def cuda_device_count() -> int:
    """How many ``cuda:N`` this process can use (the emulated backend: one); DeviceUnusable when
    none (no cuda-python, no driver, no GPU). Makes no context."""
    from pyxccl import config
    from pyxccl.cuda import CudaError, driver

    if config.get().device_backend == "emulated":
        return 1
    try:
        count = driver.init()
    except CudaError as exc:
        raise DeviceUnusable(str(exc)) from None
    if count < 1:
        raise DeviceUnusable("the CUDA driver sees no device")
    return count


def pick_device(kind: str):
    """The device object of ``--device`` (None for cpu): ``cuda:<local rank % device count>``."""
    if kind == "cpu":
        return None
    from pyxccl.bootstrap.env import from_environment
    from pyxccl.cuda import CudaError, get_device

    count = cuda_device_count()
    try:
        local = from_environment().local_rank or 0
    except Exception:  # noqa: BLE001 - a launcher's variables are checked again by init()
        local = 0
    try:
        return get_device(f"cuda:{local % count}")
    except CudaError as exc:
        raise DeviceUnusable(str(exc)) from None


def _unusable_message(exc: BaseException) -> str:
    return (f"pyxccl-perf: --device cuda: CUDA is not usable here: {exc}\n"
            "  (needs an NVIDIA driver, a GPU and cuda-python: pip install 'pyxccl[cuda]'; "
            "PYXCCL_DEVICE_BACKEND=emulated serves cuda:0 from host memory, without a GPU)")


def _device_report(comm, dev, out) -> None:
    """nccl-tests' "Using devices" lines: every rank's pid, host and device (rank 0 prints)."""
    import socket

    host = socket.gethostname()
    mine = np.zeros(3 + 64, dtype=np.int64)
    mine[0], mine[1], mine[2] = os.getpid(), dev.index, int(bool(getattr(dev, "emulated", False)))
    raw = host.encode()[:64]
    mine[3:3 + len(raw)] = np.frombuffer(raw, np.uint8)
    every = np.zeros(comm.size * mine.size, dtype=np.int64)
    comm.all_gather(mine, every)
    if comm.rank != 0:
        return
    print("#\n# Using devices", file=out)
    for r, row in enumerate(every.reshape(comm.size, -1)):
        name = bytes(row[3:].astype(np.uint8)).rstrip(b"\0").decode(errors="replace")
        what = "emulated (host memory)" if row[2] else ""
        print(f"#  Rank {r:2d} Pid {int(row[0]):6d} on {name:>10} device {int(row[1]):2d} {what}".rstrip(), file=out)


def run_perf(comm, args: argparse.Namespace, out=sys.stdout) -> list[Row]:
    """Run the sweep on every rank; rank 0 prints the table and returns the rows."""
    import pyxccl

    op = pyxccl.premul_sum(args.premul) if args.op == "premul_sum" else pyxccl.dtypes.op_of(args.op)
    n, rows, started = comm.size, [], time.monotonic()
    lead = comm.rank == 0
    kind = getattr(args, "device", "cpu")
    dev = pick_device(kind)
    if lead:
        print(f"# pyxccl-perf {pyxccl.__version__}: {n} ranks, type {args.datatype}, op {op}, iters {args.iters}, "
              f"warmup {args.warmup}, check {int(args.check)}, device {kind}", file=out)
    if dev is not None:
        _device_report(comm, dev, out)
    if lead:
        print("#" + " " * 58 + "out-of-place                       in-place", file=out)
        print(f"#{'size':>12}{'count':>14}{'type':>10}{'redop':>8}{'root':>6}"
              f"{'time':>9}{'algbw':>8}{'busbw':>8}{'#wrong':>7}{'time':>9}{'algbw':>8}{'busbw':>8}{'#wrong':>7}", file=out)
        print(f"#{'(B)':>12}{'(elements)':>14}{'':>24}{'(us)':>9}{'(GB/s)':>8}{'(GB/s)':>8}{'':>7}"
              f"{'(us)':>9}{'(GB/s)':>8}{'(GB/s)':>8}", file=out)
    for coll in args.collectives:
        name, rooted, reducing, _, factor = COLLECTIVES[coll]
        if lead and len(args.collectives) > 1:
            print(f"# Collective test: {name}", file=out)
        for size in sizes(args.min_bytes, args.max_bytes, args.factor, args.increment):
            case = Case(comm, coll, size, args.datatype, op, args.root, args.algo, dev)
            res = []
            try:
                for inplace in (False, True):
                    wrong = 0
                    if args.check:
                        case.prepare(inplace)
                        wrong = case.wrong(case.run(inplace))
                    t = _time(case, inplace, args.iters, args.warmup)
                    res.append((t, wrong))
            finally:
                case.close()
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
    if lead:
        busbws = [b for r in rows for b in (r.oop_busbw, r.ip_busbw)]
        wrong = sum(r.oop_wrong + r.ip_wrong for r in rows)
        print(f"# Out of bounds values : {wrong} {'OK' if not wrong else 'WRONG'}", file=out)
        print(f"# Avg bus bandwidth    : {sum(busbws) / max(1, len(busbws)):.3f}", file=out)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([asdict(r) for r in rows], f, indent=1)
        if args.plot:
            from .perf_plot import plot

            plot(rows, args.plot)
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyxccl-perf", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  pyxccl-perf -n 4 -c allreduce -b 8 -e 256M -f 2 --check\n"
               "  pyxccl-run -n 2 pyxccl-perf -c all -b 8 -e 64M --device cuda --check\n"
               "  PYXCCL_DEVICE_BACKEND=emulated pyxccl-run -n 2 pyxccl-perf -c all -b 8 -e 64K --device cuda --check\n"
               "    (the emulated device: cuda:0 served from host memory, no GPU)\n\n"
               "columns as nccl-tests prints them: size (B), count, type, redop, root, then time (us),\n"
               "algbw and busbw (GB/s) and #wrong, out of place and in place; the average bus bandwidth last.")
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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the buffers are: host memory (cpu, default) or GPU memory of "
                        "cuda:<local rank %% device count> (cuda: needs cuda-python and a driver, or "
                        "PYXCCL_DEVICE_BACKEND=emulated); the time includes waiting for the device")
    p.add_argument("-J", "--json", help="write the rows as JSON")
    p.add_argument("--plot", help="write a PNG of busbw against size, out of place and in place (matplotlib)")
    return p


@one_line_errors("pyxccl-perf")
def main(argv: list[str] | None = None) -> None:
    """Entry point of ``pyxccl-perf``."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    _check_args(args)
    if args.collective == "all":
        args.collectives = list(COLLECTIVES)
    else:
        args.collectives = []
        for c in args.collective.split(","):
            key = ALIASES.get(c.strip().lower().replace("-", "_"), ALIASES.get(c.strip().lower().replace("_", "")))
            if key is None:
                fail("pyxccl-perf", f"unknown collective {c!r}; use one of {', '.join(COLLECTIVES)} or all")
            args.collectives.append(key)
    if args.device == "cuda":  # fail before starting ranks or a communicator
        try:
            cuda_device_count()
        except DeviceUnusable as exc:
            print(_unusable_message(exc), file=sys.stderr)
            sys.exit(2)
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
    except DeviceUnusable as exc:
        print(_unusable_message(exc), file=sys.stderr)
        sys.exit(2)
    finally:
        comm.destroy()
    if comm.rank == 0 and any(r.oop_wrong or r.ip_wrong for r in rows):
        sys.exit(1)


def _check_args(args: argparse.Namespace) -> None:
    """What can be wrong before anything runs: the configuration, the type and op, the sizes, --plot."""
    from pyxccl.dtypes import dtype_of, op_of

    check_config("pyxccl-perf", algo=True)
    dtype_of(args.datatype)
    if args.op != "premul_sum":
        op_of(args.op)
    if args.min_bytes < 0 or args.max_bytes < args.min_bytes:
        fail("pyxccl-perf", f"sizes: -b {args.min_bytes} -e {args.max_bytes}: need 0 <= -b <= -e")
    if args.factor < 1:
        fail("pyxccl-perf", f"-f {args.factor}: the step factor must be >= 1 (1: step by -i bytes)")
    if args.plot:
        from .perf_plot import require_matplotlib

        require_matplotlib()


def _is_n_flag(argv: list[str], i: int) -> bool:
    a = argv[i]
    if a in ("-n", "--nranks"):
        return True
    if i > 0 and argv[i - 1] in ("-n", "--nranks"):
        return True
    return a.startswith("--nranks=") or (a.startswith("-n") and a[2:].isdigit())


if __name__ == "__main__":
    main()
