"""Data types and reduce operations: names and metadata only.

Types: int8, uint8, int32, uint32, int64, uint64, float16, bfloat16, float32, float64,
float8_e4m3 (e4m3fn, NCCL's ncclFloat8e4m3) and float8_e5m2. Ops: sum, prod, min, max,
avg, premul_sum(scalar). bfloat16 and fp8 arithmetic goes through ml_dtypes, which
computes every element in float32 and rounds once.

The arithmetic lives in :mod:`pyxccl.runtime.kernels` (``kernels(op, dtype, device)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

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
