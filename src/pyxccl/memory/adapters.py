"""The adapters of array libraries: any array a caller passes becomes a :class:`Buffer`, no copy.

This is the only module that knows array libraries. Accepted, in the order tried:

- numpy arrays (C-contiguous): host memory, the fast path, tried first;
- torch tensors: CPU ones as host memory viewed through numpy, CUDA ones as device memory
  (``data_ptr()``, bytes, device index);
- objects with ``__cuda_array_interface__`` (versions 2 and 3: CuPy, Numba, ...): device memory;
  the device is read from ``__dlpack_device__()`` when the object has it, else asked of the CUDA
  driver (the interface itself does not say);
- DLPack objects (``__dlpack__`` and ``__dlpack_device__``): CPU memory through
  ``numpy.from_dlpack``; CUDA memory as device memory, the pointer read from the DLPack capsule
  (:mod:`pyxccl.memory.dlpack`);
- buffer-protocol objects (``bytearray``, ``memoryview``, ``array.array``; ``bytes`` read-only).

torch is imported only for a torch tensor, and CuPy never (its arrays are read through the CUDA
array interface). Devices are named ``"cpu"`` and ``"cuda:N"`` (:mod:`pyxccl.memory.region`).
"""

from __future__ import annotations

import sys
from math import prod
from typing import Any

import numpy as np

from ..dtypes import BY_NUMPY, DTYPES, DType, dtype_of
from ..errors import InvalidArgument
from . import cuda_pointers, dlpack
from .buffer import Buffer

_NP_FAST = BY_NUMPY  # numpy dtype -> DType (ml_dtypes' types join once loaded)
_SUPPORTED = ", ".join(DTYPES)


def as_buffer(obj: Any, name: str, *, writable: bool = False) -> Buffer:
    """Wrap ``obj`` as a Buffer without copying; InvalidArgument names ``name`` when it can't be used
    (not contiguous, read-only where the call writes, an unsupported dtype or kind of memory)."""
    if type(obj) is np.ndarray:  # the fast path: every call's arguments come through here
        flags = obj.flags
        if flags.c_contiguous and (flags.writeable or not writable):
            dt = _NP_FAST.get(obj.dtype)
            if dt is not None:
                return Buffer(obj, obj.reshape(-1), dt)
    return _adapt(obj, name, writable)


# ---------------------------------------------------------------------- the slow path

def _adapt(obj: Any, name: str, writable: bool) -> Buffer:
    if isinstance(obj, Buffer):
        if writable and obj.array is not None and not obj.array.flags.writeable:
            raise InvalidArgument(f"{name}: the buffer is read-only but the call writes into it")
        return obj
    if isinstance(obj, np.ndarray):
        return _host(obj, obj, name, writable, f"np.ascontiguousarray({name})")
    if _is_torch(obj):
        return _from_torch(obj, name, writable)
    if hasattr(obj, "__cuda_array_interface__"):
        return _from_cuda_array_interface(obj, name, writable)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        return _from_dlpack(obj, name, writable)
    try:
        mv = memoryview(obj)
    except TypeError:
        raise InvalidArgument(
            f"{name}: expected a numpy array, a torch tensor, a CUDA array (__cuda_array_interface__), "
            f"a DLPack array or a buffer-protocol object, got {type(obj).__name__}") from None
    if not mv.c_contiguous:
        raise InvalidArgument(f"{name}: the buffer is not C-contiguous")
    try:
        arr = np.asarray(mv)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: buffer format {mv.format!r} is not supported ({exc})") from None
    return _host(obj, arr, name, writable, "a contiguous copy")


def _host(owner: Any, arr: np.ndarray, name: str, writable: bool, fix: str) -> Buffer:
    """A host Buffer of ``arr`` (a numpy view of ``owner``'s memory)."""
    if not arr.flags.c_contiguous:
        raise InvalidArgument(f"{name}: the array is not C-contiguous; pass {fix}")
    if writable and not arr.flags.writeable:
        raise InvalidArgument(f"{name}: the buffer is read-only but the call writes into it")
    return Buffer(owner, arr.reshape(-1), _dtype(arr.dtype, name))


def _dtype(npd: np.dtype, name: str) -> DType:
    dt = _NP_FAST.get(npd)
    if dt is not None:
        return dt
    try:
        return dtype_of(npd)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{name}: {exc}") from None


def _c_contiguous(shape: tuple, strides: "tuple | None", itemsize: int) -> bool:
    """Whether ``strides`` (in units whose element is ``itemsize``) lay ``shape`` out C-contiguously."""
    if strides is None or prod(shape) == 0:
        return True
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


# ---------------------------------------------------------------------- torch

def _is_torch(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


_TORCH_DTYPES: dict = {}  # torch dtype -> pyxccl DType, filled as tensors come


def _torch_dtype(t: Any, name: str) -> DType:
    dt = _TORCH_DTYPES.get(t.dtype)
    if dt is None:
        try:  # torch's names are pyxccl's ("torch.float8_e4m3fn" is an alias of float8_e4m3)
            dt = dtype_of(str(t.dtype).removeprefix("torch."))
        except InvalidArgument:
            raise InvalidArgument(f"{name}: torch dtype {t.dtype} is not supported; use one of {_SUPPORTED}") from None
        _TORCH_DTYPES[t.dtype] = dt
    return dt


def _from_torch(t: Any, name: str, writable: bool) -> Buffer:  # torch has no read-only tensors
    cpu = t.is_cpu
    if not cpu and not t.is_cuda:
        raise InvalidArgument(f"{name}: tensors on {t.device} are not supported (CPU and CUDA tensors only)")
    if not t.is_contiguous():
        raise InvalidArgument(f"{name}: the tensor is not contiguous; pass tensor.contiguous()")
    dt = _torch_dtype(t, name)
    if not cpu:
        return Buffer.on_device(t, f"cuda:{t.device.index}", t.data_ptr(), t.numel() * t.element_size(), dt)
    if t.requires_grad:
        t = t.detach()
    if dt.is_low_precision:  # numpy has no bfloat16 / fp8: view the bytes as an int, then as ml_dtypes' type
        torch = sys.modules["torch"]
        arr = t.view(torch.int16 if dt.itemsize == 2 else torch.uint8).numpy().view(dt.np)
    else:
        arr = t.numpy()
    return Buffer(t, arr.reshape(-1), dt)


def torch_numpy_dtypes() -> frozenset:
    """The torch dtypes whose CPU tensors numpy views as they are (``tensor.numpy()``). Imports torch."""
    global _TORCH_NUMPY, _TORCH_NATIVE
    if _TORCH_NUMPY is None:
        import torch

        _TORCH_NATIVE = frozenset({torch.float32, torch.float64, torch.float16, torch.int8, torch.uint8,
                                   torch.int32, torch.uint32, torch.int64, torch.uint64})
        _TORCH_NUMPY = _TORCH_NATIVE | {torch.int16, torch.uint16, torch.bool, torch.complex64, torch.complex128}
    return _TORCH_NUMPY


_TORCH_NUMPY: "frozenset | None" = None  # the torch dtypes numpy views (on the first tensor)
_TORCH_NATIVE: frozenset = frozenset()  # those of them that are pyxccl dtypes


def tensor_array(t: Any, name: str = "tensor") -> np.ndarray:
    """A numpy view (no copy) of a CPU tensor of a pyxccl dtype: of its shape and strides where numpy
    has the dtype, else flat (bfloat16 and fp8 as ml_dtypes' types; the tensor must be contiguous).
    InvalidArgument naming ``name`` for any other tensor."""
    if _TORCH_NUMPY is None:
        torch_numpy_dtypes()
    if t.requires_grad:
        t = t.detach()
    if t.dtype in _TORCH_NATIVE:
        try:
            return t.numpy()
        except TypeError:  # not in host memory: the full path says why
            pass
    return as_buffer(t, name).host_view()


def tensor_bytes(t: Any, name: str = "tensor") -> "np.ndarray | Buffer":
    """The bytes of a contiguous tensor of any shape and dtype: a flat uint8 numpy view (no copy) of a
    CPU tensor, a uint8 device Buffer of a CUDA one; InvalidArgument naming ``name`` for a
    non-contiguous tensor or one on another device."""
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        raise InvalidArgument(f"{name}: the tensor is not contiguous; pass tensor.contiguous()")
    if t.is_cuda:
        return Buffer.on_device(t, f"cuda:{t.device.index}", t.data_ptr(), t.numel() * t.element_size(),
                                DTYPES["uint8"])
    if t.dtype in (_TORCH_NUMPY or torch_numpy_dtypes()):  # numpy reshapes and views for a fraction of torch's cost
        try:
            return t.numpy().reshape(-1).view(np.uint8)
        except TypeError:
            raise InvalidArgument(f"{name}: the tensor is on {t.device}: its memory has no host view") from None
    if not t.is_cpu:
        raise InvalidArgument(f"{name}: the tensor is on {t.device}: its memory has no host view")
    if t.numel() == 0:
        return np.empty(0, np.uint8)
    if t.dim() == 0:
        t = t.view(1)
    return t.view(sys.modules["torch"].uint8).numpy().reshape(-1)


# ---------------------------------------------------------------------- CUDA array interface, DLPack

def _from_cuda_array_interface(obj: Any, name: str, writable: bool) -> Buffer:
    try:
        cai = obj.__cuda_array_interface__
        shape, typestr, (ptr, readonly) = tuple(int(n) for n in cai["shape"]), cai["typestr"], cai["data"]
        version, strides = cai.get("version"), cai.get("strides")
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: its __cuda_array_interface__ is malformed ({exc!r}); it needs shape, "
                              f"typestr and data=(pointer, read-only flag)") from None
    if version not in (2, 3):
        raise InvalidArgument(f"{name}: __cuda_array_interface__ version {version!r} is not supported "
                              f"(versions 2 and 3 are)")
    if cai.get("mask") is not None:
        raise InvalidArgument(f"{name}: masked CUDA arrays are not supported")
    try:
        npd = np.dtype(typestr)
    except TypeError:
        raise InvalidArgument(f"{name}: typestr {typestr!r} is not a numpy type string") from None
    if npd.kind == "V" and isinstance(getattr(obj, "dtype", None), np.dtype) and obj.dtype.itemsize == npd.itemsize:
        npd = obj.dtype  # bfloat16 and fp8 have no type string of their own: the array's own dtype says
    if not _c_contiguous(shape, None if strides is None else tuple(strides), npd.itemsize):
        raise InvalidArgument(f"{name}: the array is not C-contiguous; pass a contiguous copy")
    if writable and readonly:
        raise InvalidArgument(f"{name}: the buffer is read-only but the call writes into it")
    dt = _dtype(npd, name)
    return Buffer.on_device(obj, _cuda_device(obj, int(ptr), name), int(ptr), prod(shape) * npd.itemsize, dt)


def _cuda_device(obj: Any, ptr: int, name: str) -> str:
    """The device of CUDA memory at ``ptr`` that ``obj`` exposes ("cuda:N")."""
    if hasattr(obj, "__dlpack_device__"):
        kind, index = (int(v) for v in obj.__dlpack_device__())
        if kind != dlpack.CUDA:
            raise _other_device(name, kind)
        return f"cuda:{index}"
    ordinal = cuda_pointers.device_of(ptr)
    if ordinal is None:
        raise InvalidArgument(f"{name}: cannot tell which GPU holds its memory: it has no __dlpack_device__() "
                              f"and the CUDA driver does not know pointer {ptr:#x} (or is not installed)")
    return f"cuda:{ordinal}"


def _from_dlpack(obj: Any, name: str, writable: bool) -> Buffer:
    kind, index = (int(v) for v in obj.__dlpack_device__())
    if kind == dlpack.CPU:
        try:
            arr = np.from_dlpack(obj)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{name}: numpy cannot take it through DLPack ({exc})") from None
        return _host(obj, arr, name, writable, "a contiguous copy")
    if kind != dlpack.CUDA:
        raise _other_device(name, kind)
    t = dlpack.read(obj, name)
    if not _c_contiguous(t.shape, t.strides, 1):
        raise InvalidArgument(f"{name}: the array is not C-contiguous; pass a contiguous copy")
    if writable and t.readonly:
        raise InvalidArgument(f"{name}: the buffer is read-only but the call writes into it")
    dt = DTYPES.get(dlpack.DTYPE_NAMES.get(t.dtype, ""))
    if dt is None:
        code, bits, lanes = t.dtype
        raise InvalidArgument(f"{name}: DLPack dtype (code {code}, {bits} bits, {lanes} lanes) is not supported; "
                              f"use one of {_SUPPORTED}")
    return Buffer.on_device(obj, f"cuda:{index}", t.address, prod(t.shape) * dt.itemsize, dt)


def _other_device(name: str, kind: int) -> InvalidArgument:
    return InvalidArgument(f"{name}: its memory is on DLPack device type {kind} ({dlpack.device_type_name(kind)}); "
                           f"pyxccl takes CPU and CUDA memory")


# ---------------------------------------------------------------------- the caller's stream

def caller_stream(owner: Any, device: str) -> int:
    """The CUDA stream (a ``cudaStream_t`` as an int) a call on ``owner``'s memory is ordered on:
    torch's current stream for a torch tensor, CuPy's for a CuPy array, the stream a version-3
    ``__cuda_array_interface__`` names, else 0 (the legacy default stream, as NCCL's callers get
    when they pass none). Read on the caller's thread: current streams are per thread."""
    if _is_torch(owner):
        torch = sys.modules["torch"]
        return int(torch.cuda.current_stream(torch.device(device)).cuda_stream)
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(owner, cupy.ndarray):
        return int(cupy.cuda.get_current_stream().ptr)
    cai = getattr(owner, "__cuda_array_interface__", None)
    if isinstance(cai, dict) and cai.get("stream") not in (None, 1, 2):
        return int(cai["stream"])
    return 0
