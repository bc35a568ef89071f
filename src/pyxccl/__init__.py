"""pyxccl: a collective communication library for distributed deep learning, in Python.

Quick start::

    import pyxccl, numpy as np
    comm = pyxccl.init()                 # from torchrun / pyxccl-run / mpirun / srun variables
    x = np.ones(1024, np.float32)
    comm.all_reduce(x)                   # in place, sum over ranks
    w = comm.all_reduce(x, op="max", async_op=True); w.wait()

Or explicitly: ``uid = pyxccl.get_unique_id()`` on one rank, shared out of band, then
``pyxccl.Communicator(nranks, uid, rank)`` on every rank.
"""

from __future__ import annotations

import os as _os

# the GPU path gives every thread block a stream that may wait on a flag (cuStreamWaitValue32); such a
# stream must not share a hardware queue with work that writes the flag, so ask for the most queues
# CUDA has (read when a process creates its CUDA context: importing pyxccl before the first CUDA
# call is enough; a value the user set is kept)
_os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")

from .bootstrap import UniqueId, get_unique_id  # noqa: E402
from .comm.communicator import Communicator
from .dtypes import AVG, DTYPES, MAX, MIN, PROD, SUM, DType, ReduceOp, premul_sum
from .errors import (Aborted, CollectiveTimeout, ConfigError, CudaError, InvalidArgument, MismatchError, PeerLostError,
                     PyxcclError, TransportError, VerificationError)
from .comm.group import group
from .comm.call_queue import Work

__version__ = "0.1.0"


def init(*, timeout: float | None = None) -> Communicator:
    """The world communicator, from the launcher's environment (torchrun, Open MPI, MPICH/PMI, Slurm).

    Needs ``MASTER_ADDR``/``MASTER_PORT`` for more than one rank (torchrun and pyxccl-run set them).
    """
    from .bootstrap import exchange_unique_id, from_environment

    info = from_environment()
    uid = exchange_unique_id(info, timeout=timeout)
    return Communicator(info.world_size, uid, info.rank, timeout=timeout)


__all__ = [
    "Aborted", "AVG", "CollectiveTimeout", "Communicator", "ConfigError", "CudaError", "DType", "DTYPES", "InvalidArgument",
    "MAX", "MIN", "MismatchError", "PeerLostError", "PROD", "PyxcclError", "ReduceOp", "SUM", "TransportError",
    "UniqueId", "VerificationError", "Work", "get_unique_id", "group", "init", "premul_sum",
]
