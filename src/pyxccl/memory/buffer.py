"""A :class:`Buffer`: the memory of one argument of a call, whatever array library it came from.

A Buffer is (device, address, nbytes, dtype, owner): a :class:`~pyxccl.memory.region.Region`
with a pyxccl element type and the caller's own object. Host memory also has a flat numpy
view (:meth:`Buffer.host_view`, or ``.array`` on the hot path); device memory has none.
Buffers are made by :func:`pyxccl.memory.as_buffer` (:mod:`pyxccl.memory.adapters`, the only
module that knows array libraries); this module knows numpy only, as the host's view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dtypes import DType
from ..errors import InvalidArgument
from .device_array import DeviceArray
from .host import address as _host_address
from .region import HOST, Region, is_host


class Buffer:
    """``nbytes`` bytes of ``dtype`` elements at ``address`` on ``device``, owned by ``owner``.

    ``array`` is the flat numpy view of host memory (None for device memory); ``owner`` is the
    object the caller passed, handed back as a call's result.
    """

    __slots__ = ("owner", "array", "dtype", "device", "_address", "_nbytes")

    def __init__(self, owner: Any, array: "np.ndarray | None", dtype: DType, device: str = HOST,
                 address: int = 0, nbytes: int = 0):
        # host memory: ``array`` says where and how much (its address is read only when asked)
        self.owner, self.array, self.dtype, self.device = owner, array, dtype, device
        self._address, self._nbytes = address, nbytes

    @classmethod
    def on_device(cls, owner: Any, device: str, address: int, nbytes: int, dtype: DType) -> "Buffer":
        """Device memory (no host view): ``nbytes`` bytes at ``address`` on ``device`` ("cuda:N")."""
        return cls(owner, None, dtype, device, address, nbytes)

    @property
    def address(self) -> int:
        """Where the first element is (a host address, or a device pointer)."""
        return self._address if self.array is None else _host_address(self.array)

    @property
    def flat(self) -> "np.ndarray | DeviceArray":
        """The flat elements the executors run on: the host view, or a DeviceArray of device memory."""
        if self.array is not None:
            return self.array
        return DeviceArray(self.device, self._address, self.count, self.dtype.np)

    @property
    def nbytes(self) -> int:
        return self._nbytes if self.array is None else self.array.nbytes

    @property
    def count(self) -> int:
        """The number of elements (of every dimension: the flat count)."""
        return self._nbytes // self.dtype.itemsize if self.array is None else self.array.size

    @property
    def on_host(self) -> bool:
        return is_host(self.device)

    @property
    def region(self) -> Region:
        return Region(self.device, self.address, self.nbytes)

    def host_view(self) -> np.ndarray:
        """The flat numpy view of host memory (no copy); InvalidArgument for device memory."""
        if self.array is None:
            raise InvalidArgument(f"the memory is on {self.device} and has no host view; "
                                  f"pass host memory, or a call that runs on {self.device}")
        return self.array

    def part(self, start: int, count: int) -> "Buffer":
        """Elements ``start .. start+count`` as a Buffer of the same memory (same owner)."""
        if self.array is not None:
            return Buffer(self.owner, self.array[start:start + count], self.dtype)
        count = max(0, min(count, self.count - start))
        isz = self.dtype.itemsize
        return Buffer.on_device(self.owner, self.device, self._address + start * isz, count * isz, self.dtype)

    def slice(self, start: int, count: int) -> Any:
        """Elements ``start .. start+count`` as a view of the caller's own kind where it has one
        (an object that reshapes and slices like numpy: numpy, torch, CuPy), else the host view's
        slice (bytearray, memoryview, ...), else a Buffer of that device memory."""
        owner = self.owner
        if hasattr(owner, "reshape"):
            return owner.reshape(-1)[start:start + count]
        if self.array is not None:
            return self.array[start:start + count]
        return self.part(start, count)

    def overlaps(self, other: "Buffer") -> bool:
        """True when the two buffers share memory (bytes of both, on one device)."""
        a, b = self.array, other.array
        if a is not None and b is not None:
            return np.may_share_memory(a, b) and np.shares_memory(a, b)
        if self.device != other.device:
            return False
        s, o = self._address, other._address
        return s < o + other._nbytes and o < s + self._nbytes and self._nbytes > 0 and other._nbytes > 0

    def __repr__(self) -> str:
        return f"Buffer({self.count} x {self.dtype} on {self.device}, {type(self.owner).__name__})"
