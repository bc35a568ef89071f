"""Small-message latency of pyxccl's all-reduce on CUDA tensors (ranks sharing one GPU or not).

``pyxccl-run -n 2 python benchmarks/gpu_latency.py``: per size (8 B .. 64 KiB), the median over
``--repeats`` of (a) back-to-back calls, the device drained at the end (throughput per call), and
(b) one call then a device synchronize (the round trip a blocking user sees). Compare runs with
``PYXCCL_CUDA_GRAPHS=0/1`` (repeated calls replayed as CUDA graphs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import pyxccl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    comm = pyxccl.init()
    dev = torch.device(f"cuda:{comm.rank % torch.cuda.device_count()}")
    torch.cuda.set_device(dev)
    rows = []
    for nbytes in (8, 1024, 65536):
        x = torch.ones(nbytes // 4, device=dev)
        for _ in range(20):
            comm.all_reduce(x)
        torch.cuda.synchronize()
        back, round_trip = [], []
        for _ in range(args.repeats):
            comm.barrier()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                comm.all_reduce(x)
            torch.cuda.synchronize()
            back.append((time.perf_counter() - t0) / args.iters)
            comm.barrier()
            t0 = time.perf_counter()
            for _ in range(args.iters // 4):
                comm.all_reduce(x)
                torch.cuda.synchronize()
            round_trip.append((time.perf_counter() - t0) / (args.iters // 4))
        rows.append((nbytes, statistics.median(back), statistics.median(round_trip)))
    if comm.rank == 0:
        print(f"# all_reduce latency, {comm.size} ranks, {torch.cuda.get_device_name(dev)}")
        print(f"{'bytes':>8} {'back-to-back(us)':>17} {'round-trip(us)':>15}")
        for n, b, rt in rows:
            print(f"{n:>8} {b * 1e6:>17.1f} {rt * 1e6:>15.1f}")
    comm.destroy()


if __name__ == "__main__":
    main()
