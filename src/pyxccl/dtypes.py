"""Data types and reduce operations, with their kernels per device.

Types: int8, uint8, int32, uint32, int64, uint64, float16, bfloat16, float32, float64,
float8_e4m3 (e4m3fn, NCCL's ncclFloat8e4m3) and float8_e5m2. Ops: sum, prod, min, max,
avg, premul_sum(scalar). bfloat16 and fp8 arithmetic goes through ml_dtypes, which
computes every element in float32 and rounds once.

Kernels are chosen in one place (:func:`kernels`) per (op, dtype, device), so a CUDA
device plugs in here without touching the executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import ml_dtypes
import numpy as np

from . import stream_copy
from .errors import InvalidArgument


@dataclass(frozen=True)
class DType:
    """One element type: its pyxccl name, numpy dtype and nccl-tests name."""

    name: str
    np: np.dtype
    nccl_name: str

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @property
    def is_float(self) -> bool:
        return self.name.startswith(("float", "bfloat"))

    @property
    def is_low_precision(self) -> bool:
        """bfloat16 and fp8: arithmetic is done in float32 and rounded once."""
        return self.name in ("bfloat16", "float8_e4m3", "float8_e5m2")

    def __str__(self) -> str:
        return self.name


_TYPES = [
    DType("int8", np.dtype(np.int8), "int8"),
    DType("uint8", np.dtype(np.uint8), "uint8"),
    DType("int32", np.dtype(np.int32), "int32"),
    DType("uint32", np.dtype(np.uint32), "uint32"),
    DType("int64", np.dtype(np.int64), "int64"),
    DType("uint64", np.dtype(np.uint64), "uint64"),
    DType("float16", np.dtype(np.float16), "half"),
    DType("bfloat16", np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    DType("float32", np.dtype(np.float32), "float"),
    DType("float64", np.dtype(np.float64), "double"),
    DType("float8_e4m3", np.dtype(ml_dtypes.float8_e4m3fn), "f8e4m3"),
    DType("float8_e5m2", np.dtype(ml_dtypes.float8_e5m2), "f8e5m2"),
]

#: every supported type by pyxccl name
DTYPES: dict[str, DType] = {t.name: t for t in _TYPES}
_BY_NUMPY: dict[np.dtype, DType] = {t.np: t for t in _TYPES}
_ALIASES = {"half": "float16", "float": "float32", "double": "float64", "bf16": "bfloat16",
            "fp8_e4m3": "float8_e4m3", "f8e4m3": "float8_e4m3", "float8_e4m3fn": "float8_e4m3",
            "fp8_e5m2": "float8_e5m2", "f8e5m2": "float8_e5m2"}


def dtype_of(x: object) -> DType:
    """The DType for a name (``"float32"``, ``"bf16"``, nccl-tests names) or a numpy dtype."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str):
        name = _ALIASES.get(x, x)
        if name in DTYPES:
            return DTYPES[name]
        raise InvalidArgument(f"dtype {x!r} is not supported; use one of {', '.join(DTYPES)}")
    try:
        npd = np.dtype(x)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgument(f"dtype {x!r} is not supported; use one of {', '.join(DTYPES)}") from None
    if npd.byteorder == ">":
        raise InvalidArgument(f"dtype {npd} is big-endian; pass native-endian arrays")
    if npd not in _BY_NUMPY:
        raise InvalidArgument(f"dtype {npd} is not supported; use one of {', '.join(DTYPES)}")
    return _BY_NUMPY[npd]


@dataclass(frozen=True)
class ReduceOp:
    """A reduce operation; ``premul_sum`` carries the scalar each input is multiplied by first."""

    name: str
    scalar: float | None = None

    def __str__(self) -> str:
        return self.name if self.scalar is None else f"{self.name}({self.scalar})"

    @property
    def nccl_name(self) -> str:
        return {"premul_sum": "mulsum"}.get(self.name, self.name)


SUM = ReduceOp("sum")
PROD = ReduceOp("prod")
MIN = ReduceOp("min")
MAX = ReduceOp("max")
AVG = ReduceOp("avg")
_OPS = {o.name: o for o in (SUM, PROD, MIN, MAX, AVG)}


def premul_sum(scalar: float) -> ReduceOp:
    """NCCL's ncclRedOpCreatePreMulSum: sum of ``scalar * input`` over ranks."""
    try:
        value = float(scalar)
    except (TypeError, ValueError):
        raise InvalidArgument(f"premul_sum scalar must be a number, got {scalar!r}") from None
    return ReduceOp("premul_sum", value)


def op_of(x: object) -> ReduceOp:
    """The ReduceOp for a name (``"sum"``, ``"prod"``, ``"min"``, ``"max"``, ``"avg"``) or a ReduceOp."""
    if isinstance(x, ReduceOp):
        return x
    if isinstance(x, str) and x.lower() in _OPS:
        return _OPS[x.lower()]
    raise InvalidArgument(
        f"op {x!r} is not supported; use sum, prod, min, max, avg or pyxccl.premul_sum(scalar)")


def check_op_dtype(op: ReduceOp, dtype: DType, arg: str = "op") -> None:
    """Raise InvalidArgument when ``op`` cannot be applied to ``dtype``."""
    if op.name == "premul_sum" and not dtype.is_float:
        raise InvalidArgument(
            f"{arg}={op}: premul_sum needs a floating-point dtype, the buffers are {dtype}; "
            "scale integers yourself and use sum")


Reduce = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
_UFUNC = {"sum": np.add, "avg": np.add, "premul_sum": np.add, "prod": np.multiply,
          "min": np.minimum, "max": np.maximum}


@dataclass(frozen=True)
class Kernels:
    """The per-device functions the executor calls: ``reduce(a, b, out)``, ``copy(dst, src)`` and
    ``bulk_copy(dst, src)``, a copy of a whole block whose destination is not read again soon."""

    reduce: Reduce
    copy: Callable[[np.ndarray, np.ndarray], None]
    bulk_copy: Callable[[np.ndarray, np.ndarray], None]


def trim_pair(dst: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``dst`` and ``src`` cut to their common length for a kernel (a short user chunk may meet a
    full-length scratch chunk: only the elements both have are real)."""
    if dst.size == src.size:
        return dst, src
    n = min(dst.size, src.size)
    return dst[:n], src[:n]


def kernels(op: ReduceOp, dtype: DType, device: str = "cpu") -> Kernels:
    """Kernels for one call; the only place that picks them per device."""
    if device != "cpu":
        raise InvalidArgument(f"device {device!r} has no kernels yet (CPU only in this version)")
    return Kernels(reduce=_UFUNC[op.name], copy=np.copyto, bulk_copy=stream_copy.bulk_copy)  # type: ignore[arg-type]


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
