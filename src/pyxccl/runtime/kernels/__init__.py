"""Kernels per (reduce op, data type, device): the only place that picks the arithmetic.

``kernels(op, dtype, device, stream)`` returns a :class:`Kernels`: ``reduce(a, b, out)``,
``copy(dst, src)`` and ``bulk_copy(dst, src)`` (a copy of a whole block whose destination
is not read again soon: non-temporal stores on the host, :mod:`.nt_copy`). The stream is an
argument of the kernel set, bound once per call the way a CUDA launch takes its stream: a
device's kernels enqueue on it, the host's ignore it. (Binding it per set instead of per
kernel call keeps the host's hot loop calling numpy's functions directly, with no Python
frame of pyxccl's in between.) ``prescale`` and ``postdivide`` are premul_sum's first step
and avg's last.

``device_kernels(op, dtype, device)`` serves the GPU path, whose buffers are device addresses:
``reduce(dst, a, b, count, stream)``, ``scale(dst, src, count, factor, stream)`` and
``divide(address, count, nranks, stream)``, NVRTC-compiled CUDA on a real GPU (:mod:`.cuda`,
imported only then: cuda-python is an optional extra) or numpy in stream order on the emulated
device (:mod:`.emulated`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ...dtypes import DType, ReduceOp, dtype_of, op_of
from ...errors import InvalidArgument
from . import host

#: the devices that have kernels (CUDA joins with the GPU path)
DEVICES = ("cpu",)


@dataclass(frozen=True)
class Kernels:
    """The per-device functions the executors call, bound to ``stream`` (None on the host)."""

    reduce: Callable[[Any, Any, Any], None]
    copy: Callable[[Any, Any], None]
    bulk_copy: Callable[[Any, Any], None]
    device: str = "cpu"
    stream: Any = None


def kernels(op: ReduceOp, dtype: DType, device: str = "cpu", stream: Any = None) -> Kernels:
    """The kernels of one call: ``op`` over ``dtype`` on ``device`` ("cpu", "cuda:N"), on ``stream``."""
    if device == "cpu":
        reduce, copy, bulk = host.functions(op, dtype)
        return Kernels(reduce, copy, bulk, "cpu", None)
    raise InvalidArgument(f"device {device!r} has no kernels (pyxccl has kernels for {', '.join(DEVICES)})")


_device_sets: dict[tuple[str, str, str, bool], Any] = {}


def device_kernels(op: ReduceOp | str, dtype: DType | str, device: Any) -> Any:
    """The ``CudaKernels`` or ``EmulatedKernels`` (``device.emulated`` picks) of ``op`` over
    ``dtype`` on ``device`` (an object keeping :class:`pyxccl.cuda.device.Device`'s contract),
    made once per (op, dtype, device name, emulated): a real GPU compiles and loads its module
    then. premul_sum's scalar is not part of the set (``scale`` takes the factor)."""
    op, dt = op_of(op), dtype_of(dtype)
    emulated = bool(device.emulated)
    key = (op.name, dt.name, device.name, emulated)
    found = _device_sets.get(key)
    if found is None or found.device is not device:  # a device made anew under the same name
        if emulated:
            from .emulated import EmulatedKernels

            found = EmulatedKernels(op, dt, device)
        else:
            from .cuda import CudaKernels

            found = CudaKernels(op, dt, device)
        _device_sets[key] = found
    return found


prescale = host.prescale
postdivide = host.postdivide
trim_pair = host.trim_pair

__all__ = ["DEVICES", "Kernels", "device_kernels", "kernels", "postdivide", "prescale", "trim_pair"]
