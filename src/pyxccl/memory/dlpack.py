"""DLPack's C structs, read through ctypes: where a DLPack array's memory is, its shape and type.

Used by :mod:`pyxccl.memory.adapters` for device memory (numpy reads CPU DLPack arrays itself).
The capsule an array's ``__dlpack__()`` returns is only looked at, never consumed: its own
destructor hands the tensor back to the producer, and the Buffer keeps the producer's object
(and so its memory) alive. Both capsule kinds are read: the legacy ``"dltensor"``
(``DLManagedTensor``) and the versioned ``"dltensor_versioned"`` (``DLManagedTensorVersioned``,
whose flags can say read-only).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument

#: DLDeviceType values pyxccl takes
CPU, CUDA = 1, 2
_DEVICE_TYPES = {1: "kDLCPU", 2: "kDLCUDA", 3: "kDLCUDAHost", 4: "kDLOpenCL", 7: "kDLVulkan", 8: "kDLMetal",
                 9: "kDLVPI", 10: "kDLROCM", 11: "kDLROCMHost", 12: "kDLExtDev", 13: "kDLCUDAManaged",
                 14: "kDLOneAPI", 15: "kDLWebGPU", 16: "kDLHexagon", 17: "kDLMAIA", 18: "kDLTrn"}

#: pyxccl dtype names by DLDataType (code, bits, lanes)
DTYPE_NAMES = {(0, 8, 1): "int8", (1, 8, 1): "uint8", (0, 32, 1): "int32", (1, 32, 1): "uint32",
               (0, 64, 1): "int64", (1, 64, 1): "uint64", (2, 16, 1): "float16", (2, 32, 1): "float32",
               (2, 64, 1): "float64", (4, 16, 1): "bfloat16", (10, 8, 1): "float8_e4m3",
               (12, 8, 1): "float8_e5m2"}

_READ_ONLY = 1  # DLPACK_FLAG_BITMASK_READ_ONLY


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", _DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
                ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype, _get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_is_valid.restype, _is_valid.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]


@dataclass(frozen=True)
class Tensor:
    """What a DLPack capsule says of an array's memory."""

    address: int
    """the first element's address (``data + byte_offset``)"""
    device: tuple[int, int]
    """(DLDeviceType, device id)"""
    shape: tuple[int, ...]
    strides: "tuple[int, ...] | None"
    """in elements; None: compact row-major"""
    dtype: tuple[int, int, int]
    """(code, bits, lanes)"""
    readonly: bool


def device_type_name(kind: int) -> str:
    return _DEVICE_TYPES.get(kind, "unknown")


def read(obj: Any, name: str) -> Tensor:
    """The DLTensor of ``obj.__dlpack__()`` (InvalidArgument naming ``name`` when it is no DLPack capsule)."""
    capsule = obj.__dlpack__()
    if _is_valid(capsule, b"dltensor"):
        managed = _DLManagedTensor.from_address(_get_pointer(capsule, b"dltensor"))
        t, readonly = managed.dl_tensor, False
    elif _is_valid(capsule, b"dltensor_versioned"):
        versioned = _DLManagedTensorVersioned.from_address(_get_pointer(capsule, b"dltensor_versioned"))
        if versioned.version.major != 1:
            raise InvalidArgument(f"{name}: DLPack version {versioned.version.major}.{versioned.version.minor} "
                                  f"is not supported (version 1 is)")
        t, readonly = versioned.dl_tensor, bool(versioned.flags & _READ_ONLY)
    else:
        raise InvalidArgument(f"{name}: __dlpack__() did not return an unused DLPack capsule")
    shape = tuple(t.shape[i] for i in range(t.ndim))
    strides = tuple(t.strides[i] for i in range(t.ndim)) if t.strides else None
    dtype = (t.dtype.code, t.dtype.bits, t.dtype.lanes)
    return Tensor((t.data or 0) + t.byte_offset, (t.device.device_type, t.device.device_id), shape, strides,
                  dtype, readonly)
