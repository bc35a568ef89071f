"""pyxccl's view of CUDA devices: the contract the GPU path speaks (:mod:`.device`) and who serves it.

``get_device("cuda:N")`` gives the device object: a real GPU through cuda-python
(:mod:`.driver`, the optional extra ``cuda``), or the emulated one (:mod:`.emulated`) when
``PYXCCL_DEVICE_BACKEND=emulated``. This layer knows no array library and no collective; the
transports, the runtime and the communicator build on it. ``empty(...)`` allocates arrays the
ranks of a host can share (:mod:`.memory`, NCCL's ``ncclMemAlloc``).
"""

from __future__ import annotations

import threading
from typing import Any

from .. import config
from ..errors import InvalidArgument
from .device import Device, SharedBlock
from .driver import CudaError
from .memory import SharedArray, empty

_devices: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def device_index(name: str) -> int:
    """N of ``"cuda:N"`` (InvalidArgument for anything else)."""
    kind, _, index = name.partition(":")
    if kind != "cuda" or not index.isdigit():
        raise InvalidArgument(f"device {name!r} is not a CUDA device name ('cuda:N')")
    return int(index)


def get_device(name: str) -> Device:
    """The device object serving ``name`` ("cuda:N"), made once per process and backend."""
    backend = config.get().device_backend
    key = (backend, name)
    dev = _devices.get(key)
    if dev is not None:
        return dev
    with _lock:
        dev = _devices.get(key)
        if dev is None:
            index = device_index(name)
            if backend == "emulated":
                from .emulated import EmulatedDevice
                dev = EmulatedDevice(index)
            else:
                from .driver import CudaDevice
                dev = CudaDevice(index)
            _devices[key] = dev
    return dev


def available() -> bool:
    """Whether a real CUDA device can be used in this process (cuda-python, a driver, a GPU)."""
    from . import driver
    try:
        return driver.init() > 0
    except CudaError:
        return False


__all__ = ["CudaError", "Device", "SharedArray", "SharedBlock", "available", "device_index", "empty", "get_device"]
