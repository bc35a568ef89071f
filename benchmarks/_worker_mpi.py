"""compare.py's MPI worker (mpi4py on MPICH or Open MPI), started under that MPI's mpiexec:

    /tmp/pyxccl-mpich/bin/mpiexec -n 2 /tmp/pyxccl-mpich/bin/python benchmarks/_worker_mpi.py
    /tmp/pyxccl-ompi/bin/mpiexec --allow-run-as-root --oversubscribe -n 4 \\
        /tmp/pyxccl-ompi/bin/python benchmarks/_worker_mpi.py

Runs the shared timing loop of ``_worker_common.py`` on numpy float32 buffers with
out-of-place calls: ``Allreduce``, ``Allgather``, ``Reduce_scatter_block``, ``Alltoall``;
``Bcast`` (root 0) is MPI's in-place broadcast: the root sends from its input buffer, the
others receive into their output buffer. Needs only numpy and mpi4py.
"""

from __future__ import annotations

import argparse
import platform
import sys

import _worker_common as wc


class Backend:
    inplace_ops: tuple = ()

    def __init__(self, MPI):
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.n = self.comm.Get_rank(), self.comm.Get_size()

    def barrier(self) -> None:
        self.comm.Barrier()

    def allreduce_f64(self, values, op):
        import numpy as np

        src = np.array(values, dtype=np.float64)
        dst = np.empty_like(src)
        self.comm.Allreduce(src, dst, self.MPI.MAX if op == "max" else self.MPI.SUM)
        return dst.tolist()

    def make_call(self, op, send, recv):
        c, MPI = self.comm, self.MPI
        if op == "allreduce":
            return lambda: (c.Allreduce(send, recv, MPI.SUM), recv)[1]
        if op == "allgather":
            return lambda: (c.Allgather(send, recv), recv)[1]
        if op == "reducescatter":
            return lambda: (c.Reduce_scatter_block(send, recv, MPI.SUM), recv)[1]
        if op == "broadcast":
            arr = send if self.rank == wc.ROOT else recv
            return lambda: (c.Bcast(arr, root=wc.ROOT), arr)[1]
        if op == "alltoall":
            return lambda: (c.Alltoall(send, recv), recv)[1]
        raise ValueError(op)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lib", default="mpi", help="name to report (mpich / ompi)")
    wc.add_args(p)
    args = p.parse_args()
    import mpi4py
    import numpy as np
    from mpi4py import MPI

    lines = MPI.Get_library_version().replace("\x00", "").strip().splitlines()
    info = {"mpi_library": lines[0].strip() if lines else "", "mpi4py": mpi4py.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "mpi_details": " | ".join(x.strip() for x in lines[1:4])}
    return wc.measure(Backend(MPI), args, args.lib, info)


if __name__ == "__main__":
    sys.exit(main())
