"""Device memory pyxccl allocates to be shared: :func:`empty` (NCCL's ``ncclMemAlloc``).

An array from :func:`empty` lives in VMM memory made shareable (``cuMemCreate`` with a POSIX
file descriptor, :meth:`~pyxccl.cuda.device.Device.alloc_shared`): the other processes of the
host can map it, which memory from torch's or CuPy's allocators with expandable segments
cannot. It is an array of the CUDA array interface (version 3) and of DLPack's device query,
so ``torch.as_tensor(a, device="cuda")`` and ``cupy.asarray(a)`` view it without a copy, and a
communicator takes it, or any view of it, like any CUDA array. Registered with
:meth:`pyxccl.Communicator.register`, it is read by the peers straight from where it is.

The process keeps a table of the blocks it allocated (:func:`find`), so a registration
of any view of one (a torch tensor made from it, a slice) finds the block to export.
"""

from __future__ import annotations

import threading
import weakref
from math import prod
from typing import Any

import numpy as np

from ..errors import InvalidArgument
from .device import SharedBlock

_blocks: dict[tuple[str, int], tuple[SharedBlock, Any]] = {}  # (device name, address) -> (block, device)
_lock = threading.Lock()


class SharedArray:
    """``shape`` elements of ``dtype`` in shareable memory of ``device`` (see the module docstring).

    The memory is freed by :meth:`free` (or ``with``), or when the array and every view made
    from it through the CUDA array interface are gone; it starts zeroed."""

    def __init__(self, shape: "int | tuple[int, ...]", dtype: Any = "float32", device: str = "cuda:0"):
        from . import get_device
        from ..dtypes import dtype_of
        self.shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
        if any(n < 0 for n in self.shape):
            raise InvalidArgument(f"pyxccl.cuda.empty: negative extent in shape {self.shape}")
        self.dtype = dtype_of(dtype).np
        self.device = device
        dev = get_device(device)
        self.nbytes = prod(self.shape) * self.dtype.itemsize
        block = dev.alloc_shared(self.nbytes)
        self.address = block.address
        with _lock:
            _blocks[(device, block.address)] = (block, dev)
        self._finalizer = weakref.finalize(self, _release, device, block.address)

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def __cuda_array_interface__(self) -> dict:
        if not self._finalizer.alive:
            raise InvalidArgument("this pyxccl.cuda array was freed")
        return {"version": 3, "shape": self.shape, "typestr": self.dtype.str, "descr": [("", self.dtype.str)],
                "data": (self.address, False), "strides": None, "stream": None}

    def __dlpack_device__(self) -> tuple[int, int]:
        from . import device_index
        return 2, device_index(self.device)  # kDLCUDA

    def free(self) -> None:
        """Give the memory back now (views of it must not be used after)."""
        self._finalizer()

    def __enter__(self) -> "SharedArray":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.free()

    def __repr__(self) -> str:
        state = "" if self._finalizer.alive else ", freed"
        return f"pyxccl.cuda.SharedArray(shape={self.shape}, dtype={self.dtype.name}, device={self.device!r}{state})"


def _release(device: str, address: int) -> None:
    with _lock:
        hit = _blocks.pop((device, address), None)
    if hit is not None:
        block, dev = hit
        dev.free(block)


def empty(shape: "int | tuple[int, ...]", dtype: Any = "float32", device: str = "cuda:0") -> SharedArray:
    """A new array in memory the ranks of a host can share (NCCL's ``ncclMemAlloc``): ``shape``
    elements of ``dtype`` (any pyxccl dtype: numpy's names, "bfloat16", "float8_e4m3fn", ...) on
    ``device``. Zeroed. See :class:`SharedArray`."""
    return SharedArray(shape, dtype, device)


def find(device: str, address: int) -> "tuple[SharedBlock, int] | None":
    """The block of :func:`empty` holding ``address`` on ``device`` and the offset in it; None when
    ``address`` is not in one."""
    with _lock:
        for (name, base), (block, _) in _blocks.items():
            if name == device and base <= address < base + block.nbytes:
                return block, address - base
    return None


__all__ = ["SharedArray", "empty", "find"]
