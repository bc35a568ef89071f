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

import importlib as _importlib
from typing import TYPE_CHECKING

from .dtypes import AVG, DTYPES, MAX, MIN, PROD, SUM, DType, ReduceOp, premul_sum  # noqa: E402
from .errors import (Aborted, CollectiveTimeout, ConfigError, CudaError, InvalidArgument, MismatchError,  # noqa: E402
                     PeerLostError, PyxcclError, TransportError, VerificationError)

if TYPE_CHECKING:  # what __getattr__ loads, for type checkers and editors
    from .bootstrap.uid import UniqueId, get_unique_id
    from .comm.call_queue import Work
    from .comm.communicator import Communicator
    from .comm.group import group

__version__ = "0.1.0"

#: public names imported at their first use (``import pyxccl`` stays light: errors, dtypes and numpy;
#: the communicator, its runtime, transports and topology load with the first ``pyxccl.Communicator``,
#: ``pyxccl.init()`` or ``pyxccl.get_unique_id()``)
_LAZY = {
    "Communicator": ".comm.communicator",
    "UniqueId": ".bootstrap.uid",
    "get_unique_id": ".bootstrap.uid",
    "group": ".comm.group",
    "Work": ".comm.call_queue",
}


def __getattr__(name: str):
    """The public names of :data:`_LAZY`, and any submodule (``pyxccl.config``, ``pyxccl.cuda``, ...),
    imported on first access."""
    where = _LAZY.get(name)
    if where is not None:
        value = getattr(_importlib.import_module(where, __name__), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def init(*, timeout: float | None = None) -> Communicator:
    """The world communicator, from the launcher's environment (torchrun, Open MPI, MPICH/PMI, Slurm).

    Needs ``MASTER_ADDR``/``MASTER_PORT`` for more than one rank (torchrun and pyxccl-run set them).
    A bad ``PYXCCL_*`` value raises :class:`ConfigError` here, before anything connects.
    """
    from . import config
    from .bootstrap import exchange_unique_id, from_environment
    from .comm.communicator import Communicator

    config.get()
    info = from_environment()
    uid = exchange_unique_id(info, timeout=timeout)
    return Communicator(info.world_size, uid, info.rank, timeout=timeout)


__all__ = [
    "Aborted", "AVG", "CollectiveTimeout", "Communicator", "ConfigError", "CudaError", "DType", "DTYPES", "InvalidArgument",
    "MAX", "MIN", "MismatchError", "PeerLostError", "PROD", "PyxcclError", "ReduceOp", "SUM", "TransportError",
    "UniqueId", "VerificationError", "Work", "get_unique_id", "group", "init", "premul_sum",
]
