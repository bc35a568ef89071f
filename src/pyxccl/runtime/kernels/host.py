"""Host kernels: numpy's ufuncs for reductions (ml_dtypes computes bf16/fp8 in float32 and
rounds once), ``np.copyto`` for copies, non-temporal copies of whole blocks (:mod:`.nt_copy`)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...dtypes import DType, ReduceOp, dtype_of
from . import nt_copy

Reduce = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
_UFUNC = {"sum": np.add, "avg": np.add, "premul_sum": np.add, "prod": np.multiply,
          "min": np.minimum, "max": np.maximum}


def ufunc(op: ReduceOp) -> Reduce:
    """The numpy function that combines two arrays under ``op`` (avg sums, premul_sum sums the prescaled)."""
    return _UFUNC[op.name]  # type: ignore[return-value]


def functions(op: ReduceOp, dtype: DType) -> tuple[Reduce, Callable, Callable]:
    """(reduce, copy, bulk_copy) for ``op`` over ``dtype`` on the host."""
    return ufunc(op), np.copyto, nt_copy.bulk_copy


def trim_pair(dst: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``dst`` and ``src`` cut to their common length for a kernel (a short user chunk may meet a
    full-length scratch chunk: only the elements both have are real)."""
    if dst.size == src.size:
        return dst, src
    n = min(dst.size, src.size)
    return dst[:n], src[:n]


def prescale(array: np.ndarray, op: ReduceOp) -> np.ndarray:
    """premul_sum's first step: ``scalar * array`` in a new array (float32 math for bf16/fp8)."""
    assert op.scalar is not None
    dt = dtype_of(array.dtype)
    if dt.is_low_precision:
        return (array.astype(np.float32) * np.float32(op.scalar)).astype(array.dtype)
    return (array * array.dtype.type(op.scalar)).astype(array.dtype, copy=False)


def postdivide(array: np.ndarray, nranks: int) -> None:
    """avg's last step, in place: divide the sum by ``nranks``.

    Floats multiply by 1/nranks (float32 math for bf16/fp8, rounded once); integers
    divide and truncate toward zero, like NCCL's SumPostDiv.
    """
    if nranks == 1 or array.size == 0:
        return
    dt = dtype_of(array.dtype)
    if dt.is_low_precision:
        array[...] = (array.astype(np.float32) / np.float32(nranks)).astype(array.dtype)
    elif dt.is_float:
        np.divide(array, array.dtype.type(nranks), out=array)
    elif array.dtype.kind == "u":
        np.floor_divide(array, array.dtype.type(nranks), out=array)
    else:
        n = array.dtype.type(nranks)
        inexact = (array < 0) & (np.remainder(array, n) != 0)
        np.floor_divide(array, n, out=array)
        array += inexact.astype(array.dtype)
