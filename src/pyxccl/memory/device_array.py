"""A flat run of elements in device memory: what a call's arrays are when they live on a GPU.

Host buffers reach the executors as flat numpy views; device buffers have none, so they come as
a :class:`DeviceArray`: (device, address, size, numpy dtype), sliced like a flat numpy array
(``a[i:j]`` is a view of the same memory) and nothing more. The argument checks cut a call's
buffers the same way for both (:mod:`pyxccl.comm.checks`); the device executor reads the
addresses.
"""

from __future__ import annotations

import numpy as np


class DeviceArray:
    """``size`` elements of ``dtype`` at ``address`` on ``device`` ("cuda:N")."""

    __slots__ = ("device", "address", "size", "dtype")

    def __init__(self, device: str, address: int, size: int, dtype: np.dtype):
        self.device, self.address, self.size, self.dtype = device, address, size, np.dtype(dtype)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: slice) -> "DeviceArray":
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a DeviceArray is sliced by contiguous ranges only")
        start, stop, _ = index.indices(self.size)
        stop = max(start, stop)
        return DeviceArray(self.device, self.address + start * self.dtype.itemsize, stop - start, self.dtype)

    def __repr__(self) -> str:
        return f"DeviceArray({self.size} x {self.dtype} at {self.address:#x} on {self.device})"
