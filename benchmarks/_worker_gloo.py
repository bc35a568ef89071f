"""compare.py's torch.distributed / Gloo worker: ``python benchmarks/_worker_gloo.py -n 2 [--ops ..]``.

The parent starts N rank processes on loopback (``MASTER_ADDR=127.0.0.1``, a free
``MASTER_PORT``, ``GLOO_SOCKET_IFNAME=lo``, one torch thread per rank) and waits; each
rank runs ``init_process_group("gloo")`` and the shared timing loop of
``_worker_common.py`` on numpy buffers seen as tensors (``torch.from_numpy``, no copy).
Calls: ``all_gather_single``, ``reduce_scatter_single`` (torch 2.13's names of
``all_gather_into_tensor`` / ``reduce_scatter_tensor``) and ``all_to_all_single``
out of place; ``all_reduce`` and ``broadcast`` in place, because torch has no
out-of-place form of them (broadcast sends from the root's input buffer and receives
into the others' output buffer, like MPI's Bcast).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import _worker_common as wc


class Backend:
    inplace_ops = ("allreduce",)

    def __init__(self, dist, torch):
        self.dist, self.torch = dist, torch
        self.rank, self.n = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        self.dist.barrier()

    def allreduce_f64(self, values, op):
        t = self.torch.tensor(values, dtype=self.torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX if op == "max" else self.dist.ReduceOp.SUM)
        return t.tolist()

    def make_call(self, op, send, recv):
        d, torch = self.dist, self.torch
        ts, tr = torch.from_numpy(send), torch.from_numpy(recv)
        # torch 2.13 names; older torch: all_gather_into_tensor / reduce_scatter_tensor (same calls)
        ag = getattr(d, "all_gather_single", None) or d.all_gather_into_tensor
        rs = getattr(d, "reduce_scatter_single", None) or d.reduce_scatter_tensor
        if op == "allreduce":
            return lambda: (d.all_reduce(tr), recv)[1]
        if op == "allgather":
            return lambda: (ag(tr, ts), recv)[1]
        if op == "reducescatter":
            return lambda: (rs(tr, ts), recv)[1]
        if op == "broadcast":
            mine, arr = (ts, send) if self.rank == wc.ROOT else (tr, recv)
            return lambda: (d.broadcast(mine, wc.ROOT), arr)[1]
        if op == "alltoall":
            return lambda: (d.all_to_all_single(tr, ts), recv)[1]
        raise ValueError(op)


def rank_main(args: argparse.Namespace) -> int:
    import platform

    import numpy as np
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    info = {"torch": torch.__version__, "backend": "gloo", "numpy": np.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "")}
    try:
        return wc.measure(Backend(dist, torch), args, "gloo", info)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--nranks", type=int, default=2)
    p.add_argument("--rank-process", action="store_true", help=argparse.SUPPRESS)
    wc.add_args(p)
    args = p.parse_args()
    if args.rank_process:
        return rank_main(args)
    port = str(_free_port())
    argv = [sys.executable, "-u", os.path.abspath(__file__), *sys.argv[1:], "--rank-process"]

    def env(r: int) -> dict:
        return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(r), "WORLD_SIZE": str(args.nranks),
                "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(args.nranks), "GLOO_SOCKET_IFNAME": "lo",
                "OMP_NUM_THREADS": "1"}

    return wc.spawn_ranks(args.nranks, lambda r: argv, env)


if __name__ == "__main__":
    sys.exit(main())
