"""pyxccl as a torch.distributed backend.

    import torch.distributed as dist
    import pyxccl.torch                      # registers the "pyxccl" backend (CPU and CUDA tensors)
    dist.init_process_group("pyxccl")        # under torchrun or pyxccl-run
    model = torch.nn.parallel.DistributedDataParallel(model)

Importing this package registers the backend with
``torch.distributed.Backend.register_backend("pyxccl", ..., extended_api=True,
devices=["cpu", "cuda"])``. Every ``dist.*`` collective, point-to-point call and ``new_group``
then runs on pyxccl communicators; see ``docs/torch.md`` for what is supported.
torch is an optional dependency of pyxccl (``pip install -e .[torch]``); only this
package needs it.
"""

from __future__ import annotations

import torch.distributed as dist

from ._errors import (
    BACKEND,
    PyxcclBackendError,
    PyxcclInvalidArgument,
    PyxcclTimeout,
    Unsupported,
)
from ._work import Work
from .process_group import ProcessGroupPyxccl, create_backend

DEVICES = ["cpu", "cuda"]


def register() -> None:
    """Register the ``"pyxccl"`` backend with torch.distributed (idempotent; done on import)."""
    if BACKEND.upper() in getattr(dist.Backend, "_plugins", {}):
        return
    dist.Backend.register_backend(BACKEND, create_backend, extended_api=True, devices=DEVICES)


register()

__all__ = ["BACKEND", "DEVICES", "ProcessGroupPyxccl", "PyxcclBackendError", "PyxcclInvalidArgument",
           "PyxcclTimeout", "Unsupported", "Work", "create_backend", "register"]
