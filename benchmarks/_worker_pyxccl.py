"""compare.py's pyxccl worker: ``python benchmarks/_worker_pyxccl.py -n 2 [--ops ..] [--sizes ..]``.

The parent creates a unique id (its root rendezvous runs in this process), starts N rank
processes with it and waits; each rank builds ``pyxccl.Communicator(n, uid, rank)`` and
runs the shared timing loop of ``_worker_common.py`` with out-of-place calls:
``all_reduce(x, y)``, ``all_gather(x, y)``, ``reduce_scatter(x, y)``, ``all_to_all(x, y)``;
broadcast in place, as MPI's ``Bcast`` and torch's ``broadcast`` are (the root sends from
its input buffer, the others receive into their output buffer): ``broadcast(buf, root=0)``.
Rank 0 prints the JSON result line.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
if os.path.isdir(os.path.join(SRC, "pyxccl")):
    sys.path.insert(0, os.path.abspath(SRC))  # the checkout's pyxccl, installed or not

import _worker_common as wc  # noqa: E402


class Backend:
    inplace_ops: tuple = ()

    def __init__(self, comm):
        self.comm, self.rank, self.n = comm, comm.rank, comm.size

    def barrier(self) -> None:
        self.comm.barrier()

    def allreduce_f64(self, values, op):
        import numpy as np

        buf = np.array(values, dtype=np.float64)
        self.comm.all_reduce(buf, None, op)
        return buf.tolist()

    def make_call(self, op, send, recv):
        c = self.comm
        if op == "allreduce":
            return lambda: c.all_reduce(send, recv)
        if op == "allgather":
            return lambda: c.all_gather(send, recv)
        if op == "reducescatter":
            return lambda: c.reduce_scatter(send, recv)
        if op == "broadcast":  # in place, like MPI_Bcast and torch's broadcast
            arr = send if self.rank == wc.ROOT else recv
            return lambda: c.broadcast(arr, root=wc.ROOT)
        if op == "alltoall":
            return lambda: c.all_to_all(send, recv)
        raise ValueError(op)


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return rev or "unknown"


def _src_hash(pkg_dir: str) -> str:
    """Short hash of pyxccl's .py files: shows whether the code changed between runs."""
    import hashlib

    h = hashlib.sha256()
    for root, dirs, files in os.walk(pkg_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, pkg_dir).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:12]


def rank_main(args: argparse.Namespace) -> int:
    import platform

    import numpy as np

    import pyxccl

    comm = pyxccl.Communicator(args.nranks, args.uid, args.rank)
    info = {"pyxccl": pyxccl.__version__, "pyxccl_path": os.path.dirname(pyxccl.__file__),
            "git": _git_rev() if args.rank == 0 else "", "numpy": np.__version__,
            "src_hash": _src_hash(os.path.dirname(pyxccl.__file__)) if args.rank == 0 else "",
            "python": platform.python_version(),
            "transports": sorted({comm.transport_of(p) for p in range(comm.size) if p != comm.rank})}
    def stop(signum, frame):  # compare.py's timeout: leave no shared-memory files behind
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    done = False
    try:
        code = wc.measure(Backend(comm), args, "pyxccl", info)
        done = True
        return code
    finally:
        if done:
            comm.destroy()
        else:
            comm.abort()  # local, never blocks, unlinks this rank's files


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--nranks", type=int, default=2)
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--uid", help=argparse.SUPPRESS)
    wc.add_args(p)
    args = p.parse_args()
    if args.rank is not None:
        return rank_main(args)
    import pyxccl

    uid = str(pyxccl.get_unique_id())  # loopback root, serves this one communicator
    argv = [sys.executable, "-u", os.path.abspath(__file__), *sys.argv[1:], "--uid", uid]
    return wc.spawn_ranks(args.nranks, lambda r: argv + ["--rank", str(r)], lambda r: {})


if __name__ == "__main__":
    sys.exit(main())
