"""Which GPU a CUDA pointer belongs to, asked of the CUDA driver (``cuPointerGetAttribute``).

The CUDA array interface gives a pointer but not its device; this is the answer for objects
that do not say it otherwise (``__dlpack_device__``). The driver is loaded on the first question;
without one, nothing is known.
"""

from __future__ import annotations

import ctypes

_DEVICE_ORDINAL = 9  # CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
_driver: "ctypes.CDLL | bool | None" = None  # None: not tried yet; False: no usable driver


def _load() -> "ctypes.CDLL | None":
    global _driver
    if _driver is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
            lib.cuInit.argtypes, lib.cuInit.restype = [ctypes.c_uint], ctypes.c_int
            lib.cuPointerGetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
            lib.cuPointerGetAttribute.restype = ctypes.c_int
            _driver = lib if lib.cuInit(0) == 0 else False
        except (OSError, AttributeError):
            _driver = False
    return _driver or None


def device_of(pointer: int) -> "int | None":
    """The ordinal of the GPU that ``pointer`` was allocated on or registered with; None when the
    driver is missing or does not know the pointer."""
    lib = _load()
    if lib is None:
        return None
    ordinal = ctypes.c_int(-1)
    if lib.cuPointerGetAttribute(ctypes.byref(ordinal), _DEVICE_ORDINAL, pointer) != 0:
        return None
    return ordinal.value
