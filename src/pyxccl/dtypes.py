"""Data types and reduce operations: names and metadata only.

Types: int8, uint8, int32, uint32, int64, uint64, float16, bfloat16, float32, float64,
float8_e4m3 (e4m3fn, NCCL's ncclFloat8e4m3) and float8_e5m2. Ops: sum, prod, min, max,
avg, premul_sum(scalar). bfloat16 and fp8 arithmetic goes through ml_dtypes, which
computes every element in float32 and rounds once; ml_dtypes is imported the first time one
of those types' numpy dtype is needed (``DType.np``), not with pyxccl (it takes ~0.5 s).

The arithmetic lives in :mod:`pyxccl.runtime.kernels` (``kernels(op, dtype, device)``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidArgument


@dataclass(frozen=True)
class DType:
    """One element type: its pyxccl name, numpy dtype and nccl-tests name.

    ``np`` of bfloat16 and the fp8 types is ml_dtypes' dtype, imported at its first use."""

    name: str
    nccl_name: str
    itemsize: int
    _np: "np.dtype | None" = field(default=None, repr=False, compare=False)

    @property
    def np(self) -> np.dtype:
        npd = self._np
        if npd is None:
            npd = _low_precision()[self.name]
            object.__setattr__(self, "_np", npd)
        return npd

    @property
    def is_float(self) -> bool:
        return self.name.startswith(("float", "bfloat"))

    @property
    def is_low_precision(self) -> bool:
        """bfloat16 and fp8: arithmetic is done in float32 and rounded once."""
        return self.name in _ML_DTYPES

    def __str__(self) -> str:
        return self.name


def _native(name: str, npd: type, nccl_name: str) -> DType:
    d = np.dtype(npd)
    return DType(name, nccl_name, d.itemsize, d)


#: pyxccl name -> ml_dtypes' attribute, for the types numpy lacks
_ML_DTYPES = {"bfloat16": "bfloat16", "float8_e4m3": "float8_e4m3fn", "float8_e5m2": "float8_e5m2"}

_TYPES = [
    _native("int8", np.int8, "int8"),
    _native("uint8", np.uint8, "uint8"),
    _native("int32", np.int32, "int32"),
    _native("uint32", np.uint32, "uint32"),
    _native("int64", np.int64, "int64"),
    _native("uint64", np.uint64, "uint64"),
    _native("float16", np.float16, "half"),
    DType("bfloat16", "bfloat16", 2),
    _native("float32", np.float32, "float"),
    _native("float64", np.float64, "double"),
    DType("float8_e4m3", "f8e4m3", 1),
    DType("float8_e5m2", "f8e5m2", 1),
]

#: every supported type by pyxccl name
DTYPES: dict[str, DType] = {t.name: t for t in _TYPES}
#: numpy dtype -> DType; ml_dtypes' types join once ml_dtypes is loaded (the same dict object)
BY_NUMPY: dict[np.dtype, DType] = {t._np: t for t in _TYPES if t._np is not None}
_loaded: "dict[str, np.dtype] | None" = None


def _low_precision() -> dict[str, np.dtype]:
    """pyxccl name -> numpy dtype of bfloat16 and the fp8 types (imports ml_dtypes once)."""
    global _loaded
    if _loaded is None:
        import ml_dtypes

        loaded = {name: np.dtype(getattr(ml_dtypes, attr)) for name, attr in _ML_DTYPES.items()}
        for name, npd in loaded.items():
            BY_NUMPY[npd] = DTYPES[name]
        _loaded = loaded
    return _loaded
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
    dt = BY_NUMPY.get(npd)
    if dt is None and _loaded is None and "ml_dtypes" in sys.modules:
        _low_precision()  # an ml_dtypes array: its module is loaded already, so are its types now
        dt = BY_NUMPY.get(npd)
    if dt is None:
        raise InvalidArgument(f"dtype {npd} is not supported; use one of {', '.join(DTYPES)}")
    return dt


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
