"""GPU bus bandwidth of pyxccl's collectives beside the copy limit, ranks sharing one GPU or not.

Run under the launcher, e.g. ``pyxccl-run -n 2 python benchmarks/gpu_busbw.py`` (every rank on
``cuda:LOCAL_RANK % device_count``). Per collective and size (1 MiB .. 1 GiB of payload per
rank's buffer, nccl-tests' sizing): median of ``--repeats`` timings of ``--iters`` back-to-back
calls on torch's current stream, busbw with nccl-tests' factors, and in the same run the copy
limit: one device-to-device copy of the same bytes (``torch.Tensor.copy_``), its payload rate.
Rank 0 prints one table (nccl-tests' columns plus the ratio to the copy limit). ``--register``:
the buffers come from ``pyxccl.cuda.empty`` and are registered (single copy at every size above
``PYXCCL_CUDA_REGISTERED_MIN_BYTES``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import pyxccl

FACTORS = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
           "reduce_scatter": lambda n: (n - 1) / n, "broadcast": lambda n: 1.0, "all_to_all": lambda n: (n - 1) / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min", type=int, default=1 << 20)
    ap.add_argument("--max", type=int, default=1 << 30)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--colls", default=",".join(FACTORS))
    ap.add_argument("--register", action="store_true", help="buffers of pyxccl.cuda.empty, registered")
    args = ap.parse_args()
    comm = pyxccl.init()
    n, r = comm.size, comm.rank
    dev = torch.device(f"cuda:{r % torch.cuda.device_count()}")
    torch.cuda.set_device(dev)
    rows = []
    size = args.min
    while size <= args.max:
        count = size // 4
        count -= count % n
        regs, mems = [], []
        if args.register:
            import pyxccl.cuda
            mems = [pyxccl.cuda.empty(count, "float32", f"cuda:{dev.index}") for _ in range(2)]
            regs = [comm.register(m) for m in mems]
            x, y = (torch.as_tensor(m, device=dev) for m in mems)
            x.fill_(1)
        else:
            x = torch.ones(count, device=dev)
            y = torch.empty_like(x)

        def copy_limit() -> None:
            y.copy_(x)

        calls = {
            "all_reduce": lambda: comm.all_reduce(x, y),
            "all_gather": lambda: comm.all_gather(x[:count // n], y),
            "reduce_scatter": lambda: comm.reduce_scatter(x, y[:count // n]),
            "broadcast": lambda: comm.broadcast(x, y, root=0),
            "all_to_all": lambda: comm.all_to_all(x, y),
        }
        todo = [("copy", copy_limit)] + [(c, calls[c]) for c in args.colls.split(",")]
        for name, fn in todo:
            fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(args.repeats):
                comm.barrier()
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    fn()
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) / args.iters)
            t = statistics.median(times)
            algbw = size / t / 1e9
            bus = algbw * (FACTORS[name](n) if name in FACTORS else 1.0)
            rows.append((name, size, t, algbw, bus))
        for reg in regs:
            reg.deregister()
        del x, y
        for m in mems:
            m.free()
        size *= 4
    if r == 0:
        limits = {s: a for name, s, _, a, _ in rows if name == "copy"}
        print(f"# {n} ranks, {torch.cuda.get_device_name(dev)}{', registered buffers' if args.register else ''}; "
              f"copy = one device-to-device copy_ (payload rate)")
        print(f"{'collective':>15} {'size(B)':>12} {'time(us)':>10} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12} "
              f"{'bus/copy':>9}")
        for name, s, t, a, b in rows:
            print(f"{name:>15} {s:>12} {t * 1e6:>10.1f} {a:>12.1f} {b:>12.1f} {b / limits[s]:>9.2f}")
    comm.destroy()


if __name__ == "__main__":
    main()
