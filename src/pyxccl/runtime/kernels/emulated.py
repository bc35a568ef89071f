"""Device kernels on the emulated device: numpy on host memory, in stream order.

The emulated device (``PYXCCL_DEVICE_BACKEND=emulated``) serves ``cuda:N`` from host memory and
runs each stream's work on a thread, so the GPU path's lowering runs and is tested on machines
without a GPU. :class:`EmulatedKernels` has :class:`.cuda.CudaKernels`'s three methods; each
enqueues one host function with ``device.run(stream, fn)`` that works on numpy views of the
device's memory (``device.view``) with the host kernels' own functions (:mod:`.host`), so the
emulated path and the CPU path compute the same bits by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...dtypes import DType, ReduceOp
from . import host


class EmulatedKernels:
    """One (op, dtype, device)'s kernels for the emulated device; addresses are the device's ints."""

    def __init__(self, op: ReduceOp, dtype: DType, device: Any) -> None:
        self.op, self.dtype, self.device = op, dtype, device
        self._ufunc = host.ufunc(op)

    def _array(self, address: int, count: int) -> np.ndarray:
        return self.device.view(address, count * self.dtype.itemsize).view(self.dtype.np)

    def reduce(self, dst: int, a: int, b: int, count: int, stream: Any) -> None:
        """``dst[i] = a[i] op b[i]`` for ``count`` elements (``dst`` may be ``a`` or ``b``)."""
        if count <= 0:
            return
        ufunc, array = self._ufunc, self._array

        def fn() -> None:
            ufunc(array(a, count), array(b, count), out=array(dst, count))

        self.device.run(stream, fn)

    def scale(self, dst: int, src: int, count: int, factor: float, stream: Any) -> None:
        """premul_sum's prescale: ``dst[i] = factor * src[i]`` (:func:`.host.prescale`)."""
        if count <= 0:
            return
        op, array = ReduceOp("premul_sum", float(factor)), self._array

        def fn() -> None:
            np.copyto(array(dst, count), host.prescale(array(src, count), op))

        self.device.run(stream, fn)

    def divide(self, address: int, count: int, nranks: int, stream: Any) -> None:
        """avg's postdivide in place (:func:`.host.postdivide`; nothing to do for one rank)."""
        if count <= 0 or nranks == 1:
            return
        array = self._array

        def fn() -> None:
            host.postdivide(array(address, count), nranks)

        self.device.run(stream, fn)
