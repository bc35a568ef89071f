"""Every allreduce and allgather algorithm of pyxccl, size by size, on one host and across two.

    python benchmarks/algorithms.py                       # shm 2 and 4 ranks, then 2 netns hosts x 2 ranks at 1 Gbit/s
    python benchmarks/algorithms.py --configs shm2,shm4   # only some: shm2, shm4, net (2 hosts x 2, AABB), netx (ABAB)
    python benchmarks/algorithms.py --sizes 8,1K,1M --colls allreduce --algos ring,tree
    python benchmarks/algorithms.py --rate 1gbit --budget 0.3 --out benchmarks/results

Configurations:

* ``shm2``, ``shm4``: 2 / 4 ranks on this host (shared memory).
* ``net``: two emulated hosts (network namespaces joined by a veth pair, private
  addresses 10.232.0.1/2 that exist only inside them), ranks 0,1 on host A and 2,3 on
  host B, the link limited to ``--rate`` (default 1 Gbit/s) in each direction by a
  ``tc tbf`` qdisc on both veth ends; ranks on one host use shm, across hosts sockets.
  ``netx``: the same with ranks dealt round-robin (0,2 on A; 1,3 on B). Needs root and
  iproute2; the namespaces are always removed.

Per configuration one process per rank runs every algorithm (the registered ones that
can serve the shape; host-aware ones are passed as the Program built for the
communicator's hosts) at every size: float32, out of place, nccl-tests' size
convention (the buffer for allreduce, the per-rank output for allgather), one exact
correctness check, warmup, then samples of back-to-back calls after a barrier; per
sample the slowest rank; the median sample is reported with busbw (nccl-tests'
factors). Results: a Markdown table of times and the winner per size, per
configuration, plus the raw JSON (``--out``, default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", "src"))
DEFAULT_SIZES = "8,64,512,4K,32K,256K,2M,16M,64M"
ADDR = ("10.232.0.1", "10.232.0.2")
LAYOUTS = {"net": "AABB", "netx": "ABAB"}
BUSBW = {"allreduce": lambda n: 2 * (n - 1) / n, "allgather": lambda n: (n - 1) / n,
         "reducescatter": lambda n: (n - 1) / n, "alltoall": lambda n: (n - 1) / n,
         "broadcast": lambda n: 1.0, "reduce": lambda n: 1.0}
#: nccl-tests' size: the whole buffer, or the biggest per-rank buffer of nranks blocks
BLOCKED = ("allgather", "reducescatter", "alltoall")


def count_of(coll: str, size: int, n: int) -> int:
    """Elements per block (float32)."""
    return max(1, size // 4 // (n if coll in BLOCKED else 1))


def case_bytes(coll: str, size: int, n: int) -> int:
    return count_of(coll, size, n) * 4 * (n if coll in BLOCKED else 1)


def make_case(comm, coll: str, size: int, prog, np):
    """(call, the array holding this rank's result, its expected value or None)."""
    n, me = comm.size, comm.rank
    c = count_of(coll, size, n)
    ar = np.arange(c)
    kw = {"algorithm": prog}
    if coll == "allreduce":
        x, y = ((ar + me) % 5).astype(np.float32), np.empty(c, np.float32)
        want = sum(((ar + r) % 5) for r in range(n)).astype(np.float32)
        return (lambda: comm.all_reduce(x, y, **kw)), y, want
    if coll == "allgather":
        x, y = np.full(c, me + 1, np.float32), np.empty(c * n, np.float32)
        return (lambda: comm.all_gather(x, y, **kw)), y, np.repeat(np.arange(1, n + 1, dtype=np.float32), c)
    if coll == "reducescatter":
        x, y = np.tile(((ar + me) % 5).astype(np.float32), n), np.empty(c, np.float32)
        want = sum(((ar + r) % 5) for r in range(n)).astype(np.float32)
        return (lambda: comm.reduce_scatter(x, y, **kw)), y, want
    if coll == "alltoall":
        x = np.repeat(np.arange(n, dtype=np.float32) + 100 * me, c)
        y = np.empty(c * n, np.float32)
        return (lambda: comm.all_to_all(x, y, **kw)), y, np.repeat(me + 100 * np.arange(n, dtype=np.float32), c)
    if coll == "broadcast":
        x, y = np.full(c, me + 1, np.float32), np.empty(c, np.float32)
        return (lambda: comm.broadcast(x, y, root=0, **kw)), y, np.full(c, 1, np.float32)
    if coll == "reduce":
        x, y = np.full(c, me + 1, np.float32), np.empty(c, np.float32)
        want = np.full(c, n * (n + 1) / 2, np.float32) if me == 0 else None
        return (lambda: comm.reduce(x, y, root=0, **kw)), y, want
    raise ValueError(coll)


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def fmt_size(n: int) -> str:
    for unit, m in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return f"{n}"


# ================================================================================ rank side
def rank_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, SRC)
    import numpy as np

    import pyxccl
    from pyxccl import algorithms

    if args.rank == 0:
        uid = pyxccl.get_unique_id()
        with open(args.uid_file + ".tmp", "w") as f:
            f.write(str(uid))
        os.rename(args.uid_file + ".tmp", args.uid_file)
    else:
        end = time.monotonic() + 60
        while not os.path.exists(args.uid_file):
            if time.monotonic() > end:
                raise TimeoutError("no unique id")
            time.sleep(0.02)
        with open(args.uid_file) as f:
            uid = pyxccl.UniqueId.from_string(f.read())
    comm = pyxccl.Communicator(args.nranks, uid, args.rank)
    n, me = comm.size, comm.rank
    hosts = tuple(tuple(h) for h in comm.hosts)
    lead = me == 0

    def allmax(vals):
        a = np.array(vals, dtype=np.float64)
        comm.all_reduce(a, op="max")
        return a.tolist()

    def allsum(v: float) -> float:
        a = np.array([v], dtype=np.float64)
        comm.all_reduce(a, op="sum")
        return float(a[0])

    out = {"rank": me, "nranks": n, "hosts": hosts, "transports": [comm.transport_of(p) for p in range(n)],
           "rows": []}
    colls = [c for c in args.colls.split(",") if c]
    wanted = [a for a in args.algos.split(",") if a]
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    for coll in colls:
        for name in algorithms.names(coll):
            if wanted and name not in wanted:
                continue
            algo = algorithms.get(coll, name)
            why = algo.unsupported(n, hosts)
            if why is not None:
                if lead:
                    out["rows"].append({"coll": coll, "algo": name, "skipped": why})
                continue
            prog = algorithms.program(coll, name, n, 1, 0, hosts) if algo.host_aware else name
            for size in sizes:
                call, y, want = make_case(comm, coll, size, prog, np)
                call()
                wrong = int(allsum(float(np.count_nonzero(y != want)) if want is not None else 0.0))
                comm.barrier()
                t0 = time.perf_counter()
                call()
                est = allmax([time.perf_counter() - t0])[0]
                nwarm = 1 if est > 0.25 else int(min(100, max(2, args.warmup_s / max(est, 1e-7))))
                comm.barrier()
                t0 = time.perf_counter()
                for _ in range(nwarm):
                    call()
                est = allmax([(time.perf_counter() - t0) / nwarm])[0]
                k = max(1, int(round(0.02 / max(est, 1e-9))))
                nsamp = int(min(args.max_samples, max(3 if est > 0.25 else 5, args.budget / (k * max(est, 1e-9)))))
                samples = []
                for _ in range(nsamp):
                    comm.barrier()
                    t0 = time.perf_counter()
                    for _ in range(k):
                        call()
                    samples.append((time.perf_counter() - t0) / k)
                samples = allmax(samples)
                med = statistics.median(samples)
                nbytes = case_bytes(coll, size, n)
                algbw = nbytes / med / 1e9
                row = {"coll": coll, "algo": name, "size": size, "bytes": nbytes, "time_us": med * 1e6,
                       "min_us": min(samples) * 1e6, "algbw": algbw, "busbw": algbw * BUSBW[coll](n),
                       "wrong": wrong, "samples": nsamp, "iters": k}
                if lead:
                    out["rows"].append(row)
                    print(json.dumps(row), flush=True)
    comm.destroy()
    if lead:
        with open(args.out_file + ".tmp", "w") as f:
            json.dump(out, f)
        os.rename(args.out_file + ".tmp", args.out_file)
    return 0


# ================================================================================ parent side
def _ip(*a: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *a], capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise RuntimeError(f"`ip {' '.join(a)}` failed: {r.stderr.strip()}")
    return r


class Namespaces:
    """Two network namespaces joined by a veth pair, each end shaped by tc tbf to ``rate``."""

    def __init__(self, rate: str) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = (f"pxb{tag}a", f"pxb{tag}b")
        self.veth = (f"pxbv{tag}a", f"pxbv{tag}b")
        self.rate = rate

    def __enter__(self) -> "Namespaces":
        try:
            for ns in self.ns:
                _ip("netns", "add", ns)
            _ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
            for ns, v, a in zip(self.ns, self.veth, ADDR):
                _ip("link", "set", v, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{a}/24", "dev", v)
                _ip("-n", ns, "link", "set", v, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                if self.rate:
                    r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", v, "root", "tbf",
                                        "rate", self.rate, "burst", "256kb", "latency", "100ms"],
                                       capture_output=True, text=True, timeout=30)
                    if r.returncode:
                        raise RuntimeError(f"tc tbf on {v}: {r.stderr.strip()}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in self.ns:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.veth[0], check=False)


def run_config(name: str, args: argparse.Namespace, tmp: str) -> dict:
    """Run one configuration; returns rank 0's JSON."""
    layout = LAYOUTS.get(name)
    nranks = 4 if layout else int(name.removeprefix("shm"))
    uid_file = os.path.join(tmp, f"{name}.uid")
    out_file = os.path.join(tmp, f"{name}.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYXCCL_")}
    env["PYXCCL_TIMEOUT"] = "300"
    base = [sys.executable, os.path.abspath(__file__), "--rank-of", str(nranks), "--uid-file", uid_file,
            "--out-file", out_file, "--sizes", args.sizes, "--colls", args.colls, "--algos", args.algos,
            "--budget", str(args.budget), "--warmup-s", str(args.warmup_s), "--max-samples", str(args.max_samples)]
    ctx = Namespaces(args.rate) if layout else None
    procs = []
    try:
        if ctx:
            ctx.__enter__()
            env["PYXCCL_SOCKET_IFNAME"] = "pxbv"
        for r in range(nranks):
            cmd = base + ["--rank", str(r)]
            if ctx:
                cmd = ["ip", "netns", "exec", ctx.ns[0 if layout[r] == "A" else 1]] + cmd
            log = open(os.path.join(tmp, f"{name}.rank{r}.log"), "w")
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        end = time.monotonic() + args.timeout
        for p, _ in procs:
            p.wait(max(1.0, end - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log.close()
        if ctx:
            ctx.__exit__()
    if not os.path.exists(out_file):
        tail = open(os.path.join(tmp, f"{name}.rank0.log")).read()[-3000:]
        raise RuntimeError(f"{name}: no result; rank 0 log tail:\n{tail}")
    with open(out_file) as f:
        res = json.load(f)
    res["config"] = name
    res["rate"] = args.rate if layout else None
    res["layout"] = layout
    return res


def report(results: list[dict]) -> str:
    lines = []
    for res in results:
        name, n = res["config"], res["nranks"]
        where = (f"2 emulated hosts x 2 ranks ({res['layout']}: hosts {res['hosts']}), link {res['rate']}"
                 if res.get("layout") else f"{n} ranks, one host (shm)")
        lines += [f"## {name}: {where}", ""]
        skipped = [r for r in res["rows"] if "skipped" in r]
        rows = [r for r in res["rows"] if "skipped" not in r]
        for coll in sorted({r["coll"] for r in rows}, key=list(BUSBW).index):
            rs = [r for r in rows if r["coll"] == coll]
            algos = list(dict.fromkeys(r["algo"] for r in rs))
            sizes = sorted({r["size"] for r in rs})
            t = {(r["algo"], r["size"]): r for r in rs}
            lines += [f"### {coll}: time per call (µs; slowest rank, median sample); best per size in bold", ""]
            lines.append("| size | " + " | ".join(algos) + " | winner | busbw of winner (GB/s) |")
            lines.append("|---" * (len(algos) + 3) + "|")
            for s in sizes:
                cells = [t.get((a, s)) for a in algos]
                ok = [c for c in cells if c and not c["wrong"]]
                best = min(ok, key=lambda c: c["time_us"]) if ok else None
                row = [fmt_size(s)]
                for c in cells:
                    if c is None:
                        row.append("-")
                    else:
                        txt = f"{c['time_us']:.0f}" + (" WRONG" if c["wrong"] else "")
                        row.append(f"**{txt}**" if c is best else txt)
                row += [best["algo"] if best else "-", f"{best['busbw']:.3f}" if best else "-"]
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
        if skipped:
            lines += ["Not run (cannot serve this shape): " + "; ".join(
                f"{r['coll']} {r['algo']} ({r['skipped']})" for r in skipped), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="shm2,shm4,net", help="shm2, shm4, shmN, net (AABB), netx (ABAB)")
    ap.add_argument("--sizes", default=DEFAULT_SIZES)
    ap.add_argument("--colls", default="allreduce,allgather",
                    help="collectives: allreduce, allgather (the default), reducescatter, broadcast, reduce, alltoall")
    ap.add_argument("--algos", default="", help="only these algorithm names (default: all)")
    ap.add_argument("--rate", default="1gbit", help="tc tbf rate of the inter-host link ('' = unlimited)")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds of samples per (algorithm, size)")
    ap.add_argument("--warmup-s", type=float, default=0.05)
    ap.add_argument("--max-samples", type=int, default=15)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    # rank side
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rank-of", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--uid-file", help=argparse.SUPPRESS)
    ap.add_argument("--out-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank is not None:
        args.nranks = args.rank_of
        return rank_main(args)
    results = []
    with tempfile.TemporaryDirectory(prefix="pyxccl-algobench-") as tmp:
        for name in [c for c in args.configs.split(",") if c]:
            t0 = time.time()
            print(f"[{name}] running ...", flush=True)
            try:
                results.append(run_config(name, args, tmp))
            except Exception as e:  # noqa: BLE001 - report and go on with the next configuration
                print(f"[{name}] failed: {e}", flush=True)
                continue
            print(f"[{name}] done in {time.time() - t0:.0f} s", flush=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    head = [f"# pyxccl algorithms benchmark {stamp}", "",
            f"`{' '.join(['python', 'benchmarks/algorithms.py'] + (argv if argv is not None else sys.argv[1:]))}`", "",
            f"Machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{platform.platform()}", ""]
    text = "\n".join(head) + report(results)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"algorithms-{stamp}")
    with open(base + ".md", "w") as f:
        f.write(text + "\n")
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwritten: {base}.md, {base}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
