"""The errors the backend raises: torch.distributed's own types, with pyxccl's cause attached."""

from __future__ import annotations

import torch.distributed as dist

import pyxccl

BACKEND = "pyxccl"


class PyxcclBackendError(dist.DistBackendError):
    """A call through the pyxccl torch.distributed backend failed (a ``RuntimeError``)."""


class PyxcclInvalidArgument(PyxcclBackendError, ValueError):
    """A call's arguments cannot be run (both ``RuntimeError`` and ``ValueError``)."""


class PyxcclTimeout(PyxcclBackendError, TimeoutError):
    """A call did not complete within the group's timeout."""


class Unsupported(PyxcclBackendError, NotImplementedError):
    """The operation is not implemented by the pyxccl backend."""


def unsupported(op: str, why: str = "") -> Unsupported:
    """The error for an operation the backend does not implement; names the operation and the backend."""
    return Unsupported(f"ProcessGroup operation {op!r} is not supported by the {BACKEND} backend"
                       + (f": {why}" if why else ""))


def wrap_error(exc: BaseException, what: str) -> BaseException:
    """A pyxccl error as the matching torch.distributed error; anything else unchanged."""
    if isinstance(exc, PyxcclBackendError) or not isinstance(exc, pyxccl.PyxcclError):
        return exc
    msg = f"{BACKEND} backend: {what}: {exc}"
    if isinstance(exc, pyxccl.InvalidArgument):
        err: BaseException = PyxcclInvalidArgument(msg)
    elif isinstance(exc, pyxccl.CollectiveTimeout):
        err = PyxcclTimeout(f"{BACKEND} backend: {what}: Timed out ({exc})")
    else:
        err = PyxcclBackendError(msg)
    err.__cause__ = exc
    return err
