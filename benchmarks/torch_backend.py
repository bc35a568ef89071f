"""What the torch.distributed backend costs on top of pyxccl: the same collective, with and without torch.

    python benchmarks/torch_backend.py -n 2                       # 1 MiB and 64 MiB, every collective
    python benchmarks/torch_backend.py -n 2 --sizes 1M --ops allreduce --rounds 20
    python benchmarks/torch_backend.py -n 2 --json out.json

The script starts ``-n`` rank processes itself (env:// rendezvous on a free port). Each
rank runs ``dist.init_process_group("pyxccl")`` and times, on the very communicator the
backend uses (``dist.group.WORLD.comm``), the plain pyxccl call against the torch call:

| op | pyxccl (no torch) | through torch.distributed |
|---|---|---|
| allreduce | ``comm.all_reduce(t)`` | ``dist.all_reduce(t)`` |
| allgather | ``comm.all_gather(x, y)`` | ``dist.all_gather_into_tensor(y, x)`` (``all_gather_single``, its name from torch 2.13) |
| reducescatter | ``comm.reduce_scatter(x, y)`` | ``dist.reduce_scatter_tensor(y, x)`` (``reduce_scatter_single``) |
| broadcast | ``comm.broadcast(t, root=0)`` | ``dist.broadcast(t, 0)`` |
| alltoall | ``comm.all_to_all(x, y)`` | ``dist.all_to_all_single(y, x)`` |

plus ``allreduce-async``: ``dist.all_reduce(t, async_op=True).wait()`` (the path DDP takes:
the call is queued on the communicator's stream) against the blocking ``comm.all_reduce(t)``,
and ``allreduce-async2``: the same torch call against pyxccl's own asynchronous call,
``comm.all_reduce(t, async_op=True).wait()``. Sizes are the bytes of the collective's
largest buffer (float32 tensors). The two sides alternate in rounds (``--rounds``), each
round a barrier then ``iters`` calls; the table gives the median per-call time over the
rounds and the overhead of torch's median over pyxccl's. Rank 0 prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
if os.path.isdir(os.path.join(SRC, "pyxccl")):
    sys.path.insert(0, os.path.abspath(SRC))

OPS = ["allreduce", "allreduce-async", "allreduce-async2", "allgather", "reducescatter", "broadcast", "alltoall"]


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def _calls(op: str, comm, n: int, nbytes: int):
    import torch
    import torch.distributed as dist

    count = nbytes // 4
    block = count // n
    if op.startswith("allreduce"):
        t = torch.ones(count)
        raw = lambda: comm.all_reduce(t)
        if op == "allreduce":
            via = lambda: dist.all_reduce(t)
        else:
            via = lambda: dist.all_reduce(t, async_op=True).wait()
        if op == "allreduce-async2":
            raw = lambda: comm.all_reduce(t, async_op=True).wait()
    elif op == "allgather":
        x, y = torch.ones(block), torch.empty(block * n)
        raw = lambda: comm.all_gather(x, y)
        via = lambda: dist.all_gather_into_tensor(y, x)
    elif op == "reducescatter":
        x, y = torch.ones(block * n), torch.empty(block)
        raw = lambda: comm.reduce_scatter(x, y)
        via = lambda: dist.reduce_scatter_tensor(y, x)
    elif op == "broadcast":
        t = torch.ones(count)
        raw = lambda: comm.broadcast(t, root=0)
        via = lambda: dist.broadcast(t, 0)
    elif op == "alltoall":
        x, y = torch.ones(block * n), torch.empty(block * n)
        raw = lambda: comm.all_to_all(x, y)
        via = lambda: dist.all_to_all_single(y, x)
    else:
        raise SystemExit(f"unknown op {op!r}; choose from {OPS}")
    return raw, via


def rank_main(args: argparse.Namespace) -> None:
    import warnings

    import torch.distributed as dist

    import pyxccl.torch  # noqa: F401 - registers the backend

    warnings.filterwarnings("ignore", category=FutureWarning)
    dist.init_process_group("pyxccl")
    comm = dist.group.WORLD.comm
    rank, n = comm.rank, comm.size
    rows = []
    for nbytes in [_size(s) for s in args.sizes]:
        iters = args.iters or max(3, min(200, (64 << 20) // max(nbytes, 1) // 4 + 3))
        for op in args.ops:
            raw, via = _calls(op, comm, n, nbytes)
            for _ in range(args.warmup):
                raw()
                via()
            times = {"pyxccl": [], "torch": []}
            for r in range(args.rounds):
                order = [("pyxccl", raw), ("torch", via)] if r % 2 == 0 else [("torch", via), ("pyxccl", raw)]
                for name, fn in order:
                    comm.barrier()
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        fn()
                    times[name].append((time.perf_counter() - t0) / iters)
            # every rank's medians; the slowest rank's is what a collective costs
            import numpy as np

            med = np.array([statistics.median(times["pyxccl"]), statistics.median(times["torch"])])
            comm.all_reduce(med, op="max")
            rows.append({"op": op, "bytes": nbytes, "iters": iters, "rounds": args.rounds,
                         "pyxccl_us": med[0] * 1e6, "torch_us": med[1] * 1e6,
                         "overhead_pct": (med[1] / med[0] - 1) * 100})
            if rank == 0:
                r = rows[-1]
                print(f"{op:16s} {nbytes:>10d} B  pyxccl {r['pyxccl_us']:10.1f} us  torch {r['torch_us']:10.1f} us"
                      f"  overhead {r['overhead_pct']:+6.1f} %", flush=True)
    if rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"nranks": n, "rows": rows, "host": socket.gethostname()}, f, indent=1)
    dist.destroy_process_group()


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(args.nranks):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args.nranks), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYXCCL_TORCH_BENCH_RANK="1")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv], env=env))
    return max(abs(p.wait()) for p in procs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", "--nranks", type=int, default=2)
    p.add_argument("--sizes", nargs="+", default=["1M", "64M"])
    p.add_argument("--ops", nargs="+", default=OPS)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--iters", type=int, default=0, help="calls per round (default: by size)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if os.environ.get("PYXCCL_TORCH_BENCH_RANK"):
        rank_main(args)
        return 0
    return launch(args, argv)


if __name__ == "__main__":
    sys.exit(main())
