"""One adapter from numpy arrays, torch tensors and buffer-protocol objects to a :class:`Buffer`.

Nothing outside this module knows which array library a buffer came from. A Buffer
knows its device, its pyxccl dtype, its element count and gives the executor a flat
numpy view of its memory (no copy). Results are handed back to the caller in the
caller's own type (:meth:`Buffer.slice`).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..dtypes import DTYPES, DType, dtype_of

_NP_FAST = {t.np: t for t in DTYPES.values()}
from ..errors import InvalidArgument


class Buffer:
    """A contiguous buffer: the caller's object, a flat numpy view of it, dtype, count, device."""

    __slots__ = ("obj", "array", "dtype", "device")

    def __init__(self, obj: Any, array: np.ndarray, dtype: DType, device: str = "cpu"):
        self.obj, self.array, self.dtype, self.device = obj, array, dtype, device

    @property
    def count(self) -> int:
        return self.array.size

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def slice(self, start: int, count: int) -> Any:
        """Elements ``start .. start+count`` as an object of the caller's own kind (a view)."""
        obj = self.obj
        if isinstance(obj, np.ndarray) or _is_torch(obj):
            return obj.reshape(-1)[start:start + count]
        return self.array[start:start + count]

    def overlaps(self, other: "Buffer") -> bool:
        """True when the two buffers share memory."""
        return np.may_share_memory(self.array, other.array) and np.shares_memory(self.array, other.array)


def _is_torch(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _torch_to_numpy(t: Any, name: str) -> np.ndarray:
    import torch

    if t.device.type != "cpu":
        raise InvalidArgument(f"{name}: tensors on {t.device} are not supported yet (CPU tensors only)")
    if not t.is_contiguous():
        raise InvalidArgument(f"{name}: the tensor is not contiguous; pass tensor.contiguous()")
    special = {torch.bfloat16: ("int16", "bfloat16"), torch.float8_e4m3fn: ("uint8", "float8_e4m3"),
               torch.float8_e5m2: ("uint8", "float8_e5m2")}
    t = t.detach()
    if t.dtype in special:
        carrier, target = special[t.dtype]
        return t.view(getattr(torch, carrier)).numpy().view(dtype_of(target).np)
    try:
        return t.numpy()
    except TypeError:
        raise InvalidArgument(f"{name}: torch dtype {t.dtype} is not supported") from None


def as_buffer(obj: Any, name: str, *, writable: bool = False) -> Buffer:
    """Wrap ``obj`` as a Buffer without copying; InvalidArgument names ``name`` when it can't be used.

    Accepts numpy arrays and torch CPU tensors of any shape when contiguous, and any
    C-contiguous buffer-protocol object (``bytearray``, ``memoryview``, ``array.array``).
    """
    if type(obj) is np.ndarray and obj.flags.c_contiguous and (obj.flags.writeable or not writable):
        dt = _NP_FAST.get(obj.dtype)
        if dt is not None:
            return Buffer(obj, obj.reshape(-1), dt)
    if isinstance(obj, Buffer):
        return obj
    if isinstance(obj, np.ndarray):
        arr = obj
        if not arr.flags.c_contiguous:
            raise InvalidArgument(f"{name}: the array is not C-contiguous; pass np.ascontiguousarray({name})")
    elif _is_torch(obj):
        arr = _torch_to_numpy(obj, name)
    else:
        try:
            mv = memoryview(obj)
        except TypeError:
            raise InvalidArgument(
                f"{name}: expected a numpy array, a torch tensor or a buffer-protocol object, "
                f"got {type(obj).__name__}") from None
        if not mv.c_contiguous:
            raise InvalidArgument(f"{name}: the buffer is not C-contiguous")
        try:
            arr = np.asarray(mv)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{name}: buffer format {mv.format!r} is not supported ({exc})") from None
    if writable and not arr.flags.writeable:
        raise InvalidArgument(f"{name}: the buffer is read-only but the call writes into it")
    try:
        dtype = dtype_of(arr.dtype)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{name}: {exc}") from None
    return Buffer(obj=obj, array=arr.reshape(-1), dtype=dtype)
