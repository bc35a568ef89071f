"""Tensors and reduce ops of torch.distributed as pyxccl buffers and ops.

Data movement without arithmetic (broadcast, gathers, scatters, all-to-all, p2p) goes
through a byte view of the tensor, so every torch dtype works (bool, int16, complex,
float8 variants). Reductions need pyxccl's own element types: bool is reduced as
uint8 (sum/max/or as max, prod/min/and as min), int16/uint16 through an int32 staging
buffer, complex as pairs of reals (sum, avg, premul_sum). Non-contiguous tensors are
staged through a contiguous copy. Bitwise and/or/xor, which pyxccl has no kernels for,
are folded locally from an allgather of every rank's tensor.

Turning a tensor into numpy memory (:func:`arr`, :func:`np_bytes`) is :mod:`pyxccl.memory`'s
work; this module decides which path a tensor takes and stages what needs staging.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import pyxccl
from pyxccl.memory import as_buffer, tensor_array, tensor_bytes, torch_numpy_dtypes

from ._errors import PyxcclInvalidArgument, unsupported

R = dist.ReduceOp.RedOpType

# torch dtypes numpy can view directly (zero copy, pyxccl's fastest path)
_NUMPY = {torch.float32, torch.float64, torch.float16, torch.int8, torch.uint8, torch.int32, torch.int64,
          torch.uint32, torch.uint64}
# torch dtypes pyxccl reduces natively (bf16 / fp8 are handed over as tensors)
_NATIVE = _NUMPY | {torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2}
# torch dtypes whose bytes numpy can view directly
_NUMPY_BYTES = torch_numpy_dtypes()
_WIDEN = {torch.int16: torch.int32, torch.uint16: torch.int32}
_BITWISE = {int(R.BAND): torch.bitwise_and, int(R.BOR): torch.bitwise_or, int(R.BXOR): torch.bitwise_xor}
_NAMES = {int(R.SUM): "sum", int(R.PRODUCT): "prod", int(R.MIN): "min", int(R.MAX): "max", int(R.AVG): "avg"}
_BOOL = {int(R.SUM): "max", int(R.MAX): "max", int(R.BOR): "max", int(R.PRODUCT): "min", int(R.MIN): "min",
         int(R.BAND): "min"}
_PREMUL, _BXOR = int(R.PREMUL_SUM), int(R.BXOR)
#: the ops the fast paths hand to pyxccl as they are (by RedOpType value)
FAST_OPS = dict(_NAMES)


def plain(t: Any) -> bool:
    """A dense contiguous CPU tensor without grad of a dtype numpy views: ``t.numpy()`` is all it takes."""
    return (type(t) is torch.Tensor and t.dtype in _NUMPY and t.is_cpu and t.layout is torch.strided
            and not t.requires_grad and t.is_contiguous())


def plain_any(t: Any) -> bool:
    """A dense contiguous CPU tensor without grad whose bytes numpy views (any dtype numpy knows)."""
    return (type(t) is torch.Tensor and t.dtype in _NUMPY_BYTES and t.is_cpu and t.layout is torch.strided
            and not t.requires_grad and t.is_contiguous())


def arr(t: torch.Tensor) -> Any:
    """What pyxccl gets for a contiguous tensor of a pyxccl dtype: a numpy view of a CPU tensor when
    numpy has the dtype, else its :class:`pyxccl.memory.Buffer` (bfloat16, fp8, CUDA tensors)."""
    if t.dtype in _NUMPY and t.is_cpu:
        return tensor_array(t)
    return as_buffer(t, "tensor")


#: the bytes of a contiguous tensor of any shape and dtype: a flat uint8 numpy view of a CPU tensor
#: (no copy), a uint8 device Buffer of a CUDA one
np_bytes = tensor_bytes


def scratch(n: int, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """``n`` uninitialized elements on ``like``'s device (staging buffers live where the data does)."""
    return torch.empty(n, dtype=dtype, device=like.device)


def check_tensor(t: Any, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise PyxcclInvalidArgument(f"pyxccl backend: {what}: expected a tensor, got {type(t).__name__}")
    if not (t.is_cpu or t.is_cuda):
        raise unsupported(what, f"tensors on {t.device} (the backend moves CPU and CUDA tensors)")
    if t.layout is not torch.strided:
        raise unsupported(what, f"{t.layout} tensors (only dense tensors)")
    return t


class Staged:
    """A flat contiguous tensor for ``t``: ``t`` itself (a view) or a staging copy written back by ``done()``."""

    __slots__ = ("copy_back", "flat", "t")

    def __init__(self, t: torch.Tensor, flat: torch.Tensor, copy_back: bool):
        self.t, self.flat, self.copy_back = t, flat, copy_back

    def done(self) -> None:
        if self.copy_back:
            with torch.no_grad():
                self.t.copy_(self.flat.view(self.t.shape) if self.flat.dtype == self.t.dtype
                             else self.flat.view(self.t.shape).to(self.t.dtype))


def staged(t: torch.Tensor, writable: bool = True, load: bool = True) -> Staged:
    """A contiguous flat view of ``t``, staging through a copy when ``t`` is not contiguous."""
    t = t.detach()
    if t.is_contiguous():
        return Staged(t, t.view(-1), False)
    flat = t.contiguous().view(-1) if load else torch.empty(t.numel(), dtype=t.dtype, device=t.device)
    return Staged(t, flat, writable)


def staged_on_host(t: torch.Tensor, load: bool = True) -> Staged:
    """A contiguous flat CPU tensor for ``t``: ``t``'s own view when it is a contiguous CPU tensor, else
    a host copy written back by ``done()`` (a CUDA tensor's bytes travel through host memory where the
    peer-to-peer path needs them: point-to-point messages are matched on the host)."""
    if t.is_cpu:
        return staged(t, load=load)
    t = t.detach()
    flat = t.reshape(-1).cpu() if load else torch.empty(t.numel(), dtype=t.dtype)
    return Staged(t, flat, True)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def reduce_op(op: Any, dtype: torch.dtype, what: str) -> tuple[Any, Any]:
    """``(pyxccl op, None)`` for a torch ReduceOp (or bare RedOpType) on ``dtype``, or ``(None, fold)``
    with a torch bitwise function for BAND/BOR/BXOR (and bool XOR), which are emulated."""
    kind = int(getattr(op, "op", op))
    if dtype == torch.bool:
        if kind in _BOOL:
            return _BOOL[kind], None
        if kind == _BXOR:
            return None, torch.bitwise_xor
        raise PyxcclInvalidArgument(f"pyxccl backend: {what}: {R(kind)} is not defined for bool tensors")
    name = _NAMES.get(kind)
    if name is not None:
        return name, None
    if kind == _PREMUL:
        factor = op.factor
        if isinstance(factor, torch.Tensor):
            factor = float(factor.item())
        return pyxccl.premul_sum(float(factor)), None
    if kind in _BITWISE:
        if dtype.is_floating_point or dtype.is_complex:
            raise PyxcclInvalidArgument(f"pyxccl backend: {what}: {R(kind)} needs an integer or bool dtype, "
                                        f"not {dtype}")
        return None, _BITWISE[kind]
    raise unsupported(what, f"reduce op {R(kind)}")


class Reducible:
    """A tensor prepared for a pyxccl reduction: ``buf`` to hand over, ``done()`` writes results back."""

    __slots__ = ("buf", "narrow", "stage", "work")

    def __init__(self, t: torch.Tensor, op_name: Any, what: str, load: bool = True):
        self.stage = staged(t, load=load)
        flat = self.stage.flat
        self.narrow = None
        dt = flat.dtype
        if dt in _NATIVE:
            self.work = flat
        elif dt == torch.bool:
            self.work = flat.view(torch.uint8)
        elif dt in _WIDEN:
            self.work = flat.to(_WIDEN[dt]) if load else torch.empty(flat.numel(), dtype=_WIDEN[dt], device=flat.device)
            self.narrow = flat
        elif dt.is_complex:
            if op_name not in ("sum", "avg") and not isinstance(op_name, pyxccl.ReduceOp):
                raise PyxcclInvalidArgument(f"pyxccl backend: {what}: {op_name} is not defined for complex tensors")
            self.work = torch.view_as_real(flat).reshape(-1)
        else:
            raise PyxcclInvalidArgument(f"pyxccl backend: {what}: dtype {dt} cannot be reduced")
        self.buf = arr(self.work)

    def done(self) -> None:
        if self.narrow is not None:
            self.narrow.copy_(self.work)
        self.stage.done()


def fold(stacked: torch.Tensor, fn: Any) -> torch.Tensor:
    """Reduce the rows of ``stacked`` (nranks x n) with a torch bitwise function."""
    out = stacked[0].clone()
    for row in stacked[1:]:
        fn(out, row, out=out)
    return out


def opt(opts: Any, name: str, default: Any) -> Any:
    """An option of a torch ``*Options`` object (or of :class:`Opts`), ``default`` without options."""
    return getattr(opts, name, default) if opts is not None else default


class Opts:
    """Options for the positional overloads (``pg.broadcast(t, root)``) and the backend's own calls."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)
