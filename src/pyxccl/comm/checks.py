"""Argument checking and buffer plans for every collective, before anything is sent.

Each ``plan_*`` function turns a call's arguments on this rank into a :class:`Call`:
the flat input and output arrays the program runs on (in-place calls alias them the
way NCCL does), the per-block element count, the device the buffers are on, and what to
hand back to the caller. Arguments become :class:`~pyxccl.memory.Buffer` objects through
:func:`pyxccl.memory.as_buffer`; a call's buffers must all be on one device. Bad arguments
raise :class:`~pyxccl.errors.InvalidArgument` naming the argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..memory import HOST, Buffer, DeviceArray, as_buffer
from ..dtypes import SUM, DType, ReduceOp, check_op_dtype, op_of
from ..errors import InvalidArgument
from ..ir.program import Buf
from ..runtime.kernels import DEVICES


@dataclass
class Call:
    """One collective call on this rank, checked and laid out for the executor."""

    collective: str
    count: int
    """elements per block (per rank for allgather/reducescatter/gather/scatter, per peer for alltoall)"""
    dtype: DType
    input: "np.ndarray | DeviceArray"
    output: "np.ndarray | DeviceArray"
    """the flat elements of the buffers: host views, or DeviceArrays of device memory"""
    inplace: bool
    result: Any
    op: ReduceOp = SUM
    root: int | None = None
    reduced: list[np.ndarray] = field(default_factory=list)
    """this rank's arrays that hold reduced results (avg divides them at the end)"""
    device: str = HOST
    """where the buffers are ("cpu", "cuda:N"): the kernels are chosen for it"""
    stream: int = 0
    """device calls: the caller's CUDA stream (read on the caller's thread), the call is ordered on it"""
    layout: dict[Buf, list[tuple[int, int]]] | None = None
    """v-collectives: (offset, count) of every block of the input/output; ``count`` is the largest"""
    agree_count: bool = False
    """v-collectives where a rank knows only its own counts: the ranks agree on the largest first"""

    def describe(self) -> str:
        root = f" root={self.root}" if self.root is not None else ""
        return f"{self.collective}(count={self.count}, dtype={self.dtype}, op={self.op}{root})"


def check_timeout(value: "float | None") -> "float | None":
    """A call's own ``timeout`` (seconds, > 0) or None (the communicator's)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise InvalidArgument(f"timeout={value!r} must be a positive number of seconds (or None: the "
                              f"communicator's timeout)")
    return float(value)


def check_rank(value: int, nranks: int, name: str) -> int:
    """``value`` as a rank in ``0 .. nranks-1``, else InvalidArgument naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"{name}={value!r} must be an int rank")
    if not 0 <= int(value) < nranks:
        raise InvalidArgument(f"{name}={value} is out of range: the communicator has ranks 0..{nranks - 1}")
    return int(value)


def _match(inb: Buffer, outb: Buffer) -> None:
    """input and output on one device, of one dtype."""
    if inb.device != outb.device:
        raise InvalidArgument(f"input is on {inb.device} but output is on {outb.device}; a call's buffers must "
                              f"be on one device")
    if inb.dtype != outb.dtype:
        raise InvalidArgument(f"output: dtype {outb.dtype} differs from the input's {inb.dtype}; they must match")


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidArgument(msg)


def _op(op: Any, dtype: DType) -> ReduceOp:
    rop = op_of(op)
    check_op_dtype(rop, dtype)
    return rop


def plan_elementwise(coll: str, rank: int, nranks: int, input: Any, output: Any, op: Any = None,
                     root: int | None = None) -> Call:
    """allreduce, broadcast and reduce: input and output hold the same count."""
    if root is not None:
        root = check_rank(root, nranks, "root")
    # broadcast's input matters on the root only; reduce's output on the root only
    inb = as_buffer(input, "input", writable=output is None)
    if output is None:
        outb, inplace = inb, True
    else:
        outb = as_buffer(output, "output", writable=True)
        _match(inb, outb)
        _need(outb.count == inb.count,
              f"output: has {outb.count} elements but input has {inb.count}; {coll} needs equal counts")
        inplace = outb is inb or (outb.overlaps(inb) and _same_start(inb, outb))
        _need(inplace or not outb.overlaps(inb), "output: overlaps input partially; use the same buffer or disjoint ones")
    rop = _op(op, inb.dtype) if op is not None else SUM
    reduced = [outb.flat] if coll == "allreduce" or (coll == "reduce" and rank == root) else []
    return Call(coll, inb.count, inb.dtype, inb.flat, outb.flat, inplace, outb.owner, rop, root, reduced, inb.device)


def _same_start(a: Buffer, b: Buffer) -> bool:
    return a.address == b.address


def _is_block(buf: Buffer, whole: Buffer, rank: int, count: int) -> bool:
    """Whether ``buf`` starts at block ``rank`` (of ``count`` elements) of ``whole``: the in-place layout."""
    return count > 0 and buf.address == whole.address + rank * count * whole.dtype.itemsize


def _elems(buf: Buffer, start: int, count: int) -> "np.ndarray | None":
    """Elements ``start .. start+count`` of the flat elements (a host view or a DeviceArray)."""
    return buf.flat[start:start + count]


def plan_gatherlike(coll: str, rank: int, nranks: int, input: Any, output: Any, root: int | None = None) -> Call:
    """allgather and gather: output holds nranks blocks of the input's count (gather: on the root)."""
    if root is not None:
        root = check_rank(root, nranks, "root")
    has_output = coll == "allgather" or rank == root
    if has_output:
        if output is None:
            raise InvalidArgument(f"output: {coll} needs an output buffer of nranks * count elements on rank {rank}")
        outb = as_buffer(output, "output", writable=True)
    if input is None:
        if not has_output:
            raise InvalidArgument("input: is required on ranks other than the root")
        _need(outb.count % nranks == 0,
              f"output: {outb.count} elements is not a multiple of nranks={nranks}")
        count = outb.count // nranks
        inarr, inplace = _elems(outb, rank * count, count), True
        dtype, device = outb.dtype, outb.device
    else:
        inb = as_buffer(input, "input")
        count, dtype, inarr, device = inb.count, inb.dtype, inb.flat, inb.device
        inplace = False
        if has_output:
            _match(inb, outb)
            _need(outb.count == count * nranks,
                  f"output: has {outb.count} elements; {coll} of {count} elements per rank over {nranks} "
                  f"ranks needs {count * nranks}")
            if outb.overlaps(inb):
                _need(_is_block(inb, outb, rank, count),
                      f"input: overlaps output but is not output's block of rank {rank} (the in-place layout)")
                inarr, inplace = _elems(outb, rank * count, count), True
    if has_output:
        return Call(coll, count, dtype, inarr, outb.flat, inplace, outb.owner, SUM, root, [], device)
    return Call(coll, count, dtype, inarr, np.empty(count * nranks, dtype.np), False, None, SUM, root, [], device)


def plan_scatterlike(coll: str, rank: int, nranks: int, input: Any, output: Any, op: Any = None,
                     root: int | None = None) -> Call:
    """reducescatter and scatter: input holds nranks blocks of the output's count (scatter: on the root)."""
    if root is not None:
        root = check_rank(root, nranks, "root")
    has_input = coll == "reducescatter" or rank == root
    if has_input:
        if input is None:
            raise InvalidArgument(f"input: {coll} needs an input buffer of nranks * count elements on rank {rank}")
        inb = as_buffer(input, "input", writable=output is None)
    if output is None:
        if not has_input:
            raise InvalidArgument("output: is required on ranks other than the root")
        _need(inb.count % nranks == 0, f"input: {inb.count} elements is not a multiple of nranks={nranks}")
        count = inb.count // nranks
        outarr, inplace, dtype, device = _elems(inb, rank * count, count), True, inb.dtype, inb.device
        result = inb.slice(rank * count, count)
    else:
        outb = as_buffer(output, "output", writable=True)
        count, dtype, outarr, inplace, result = outb.count, outb.dtype, outb.flat, False, outb.owner
        device = outb.device
        if has_input:
            _match(inb, outb)
            _need(inb.count == count * nranks,
                  f"input: has {inb.count} elements; {coll} to {count} elements per rank over {nranks} "
                  f"ranks needs {count * nranks}")
            if outb.overlaps(inb):
                _need(_is_block(outb, inb, rank, count),
                      f"output: overlaps input but is not input's block of rank {rank} (the in-place layout)")
                outarr, inplace = _elems(inb, rank * count, count), True
    inarr = inb.flat if has_input else np.empty(count * nranks, dtype.np)
    rop = _op(op, dtype) if op is not None else SUM
    reduced = [outarr] if coll == "reducescatter" else []
    return Call(coll, count, dtype, inarr, outarr, inplace, result, rop, root, reduced, device)


def plan_alltoall(rank: int, nranks: int, input: Any, output: Any) -> Call:
    """alltoall: input and output hold nranks blocks; block q goes to rank q."""
    inb = as_buffer(input, "input", writable=output is None)
    _need(inb.count % nranks == 0,
          f"input: {inb.count} elements is not a multiple of nranks={nranks} (one equal block per peer)")
    if output is None:
        outb, inplace = inb, True
    else:
        outb = as_buffer(output, "output", writable=True)
        _match(inb, outb)
        _need(outb.count == inb.count, f"output: has {outb.count} elements but input has {inb.count}; they must match")
        inplace = outb.overlaps(inb)
        _need(not inplace or _same_start(inb, outb), "output: overlaps input partially")
    return Call("alltoall", inb.count // nranks, inb.dtype, inb.flat, outb.flat, inplace, outb.owner, SUM, None,
                [], inb.device)


def plan_p2p(buf: Any, peer: int, nranks: int, name: str, writable: bool) -> Buffer:
    """send/recv: the buffer and a checked peer."""
    check_rank(peer, nranks, "peer")
    b = as_buffer(buf, name, writable=writable)
    if b.array is None and b.device not in DEVICES and not b.device.startswith("cuda:"):
        raise InvalidArgument(f"{name}: is on {b.device}, which has no kernels (pyxccl has kernels for "
                              f"{', '.join(DEVICES)})")
    return b


# ---------------------------------------------------------------------- v-collectives

def _counts(values: Any, nranks: int, name: str) -> list[int]:
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name}: expected {nranks} non-negative ints, got {values!r}") from None
    if len(out) != nranks or any(v < 0 for v in out):
        raise InvalidArgument(f"{name}: expected {nranks} non-negative ints (one per rank), got {out}")
    return out


def _displs(displs: Any, counts: list[int], nranks: int, name: str) -> list[int]:
    if displs is None:
        return [sum(counts[:q]) for q in range(nranks)]
    return _counts(displs, nranks, name)


def _fits(buf: Buffer, displs: list[int], counts: list[int], name: str) -> None:
    need = max((d + c for d, c in zip(displs, counts)), default=0)
    _need(buf.count >= need, f"{name}: has {buf.count} elements; the counts and displacements need {need}")


def plan_allgatherv(rank: int, nranks: int, input: Any, output: Any, counts: Any, displs: Any = None) -> Call:
    """allgatherv: rank q's ``counts[q]`` elements land at ``displs[q]`` of every rank's output."""
    counts = _counts(counts, nranks, "counts")
    displs = _displs(displs, counts, nranks, "displs")
    outb = as_buffer(output, "output", writable=True)
    _fits(outb, displs, counts, "output")
    if input is None:
        inarr, inplace = _elems(outb, displs[rank], counts[rank]), True
    else:
        inb = as_buffer(input, "input")
        _match(inb, outb)
        _need(inb.count == counts[rank], f"input: has {inb.count} elements but counts[{rank}] is {counts[rank]}")
        inarr, inplace = inb.flat, False
    layout = {Buf.INPUT: [(0, counts[rank])], Buf.OUTPUT: list(zip(displs, counts))}
    return Call("allgather", max(counts), outb.dtype, inarr, outb.flat, inplace, outb.owner, layout=layout,
                device=outb.device)


def plan_reducescatterv(rank: int, nranks: int, input: Any, output: Any, counts: Any, op: Any) -> Call:
    """reducescatterv: rank q gets the reduction of block q (``counts[q]`` elements) of every input."""
    counts = _counts(counts, nranks, "counts")
    displs = _displs(None, counts, nranks, "displs")
    inb = as_buffer(input, "input", writable=output is None)
    _need(inb.count == sum(counts), f"input: has {inb.count} elements but the counts add up to {sum(counts)}")
    if output is None:
        outarr, inplace, result = _elems(inb, displs[rank], counts[rank]), True, inb.slice(displs[rank], counts[rank])
    else:
        outb = as_buffer(output, "output", writable=True)
        _match(inb, outb)
        _need(outb.count == counts[rank], f"output: has {outb.count} elements but counts[{rank}] is {counts[rank]}")
        _need(not outb.overlaps(inb), "output: overlaps input; pass output=None for in place")
        outarr, inplace, result = outb.flat, False, outb.owner
    rop = _op(op, inb.dtype)
    layout = {Buf.INPUT: list(zip(displs, counts)), Buf.OUTPUT: [(0, counts[rank])]}
    return Call("reducescatter", max(counts), inb.dtype, inb.flat, outarr, inplace, result, rop,
                reduced=[outarr], layout=layout, device=inb.device)


def plan_alltoallv(rank: int, nranks: int, input: Any, output: Any, send_counts: Any, recv_counts: Any,
                   send_displs: Any = None, recv_displs: Any = None) -> Call:
    """alltoallv: ``send_counts[q]`` elements at ``send_displs[q]`` go to rank q, which receives them
    at ``recv_displs[rank]``; its ``recv_counts[rank]`` must equal them. Out of place only."""
    sc, rc = _counts(send_counts, nranks, "send_counts"), _counts(recv_counts, nranks, "recv_counts")
    sd, rd = _displs(send_displs, sc, nranks, "send_displs"), _displs(recv_displs, rc, nranks, "recv_displs")
    inb = as_buffer(input, "input")
    if output is None:
        raise InvalidArgument("output: alltoallv needs a separate output buffer (no in-place form)")
    outb = as_buffer(output, "output", writable=True)
    _match(inb, outb)
    _fits(inb, sd, sc, "input")
    _fits(outb, rd, rc, "output")
    _need(not outb.overlaps(inb), "output: overlaps input; alltoallv has no in-place form")
    _need(sc[rank] == rc[rank], f"recv_counts[{rank}]={rc[rank]} must equal send_counts[{rank}]={sc[rank]} (to self)")
    layout = {Buf.INPUT: list(zip(sd, sc)), Buf.OUTPUT: list(zip(rd, rc))}
    return Call("alltoall", max(sc + rc), inb.dtype, inb.flat, outb.flat, False, outb.owner, layout=layout,
                agree_count=True, device=inb.device)


def plan_gatherv(rank: int, nranks: int, input: Any, output: Any, counts: Any, displs: Any, root: int) -> Call:
    """gatherv: rank q's input lands at ``displs[q]`` of the root's output (``counts`` needed on the root)."""
    root = check_rank(root, nranks, "root")
    inb = as_buffer(input, "input")
    if rank == root:
        counts = _counts(counts, nranks, "counts")
        displs = _displs(displs, counts, nranks, "displs")
        outb = as_buffer(output, "output", writable=True)
        _match(inb, outb)
        _fits(outb, displs, counts, "output")
        _need(inb.count == counts[rank], f"input: has {inb.count} elements but counts[{rank}] is {counts[rank]}")
        outarr, blocks, result = outb.flat, list(zip(displs, counts)), outb.owner
    else:
        outarr, blocks, result = np.empty(0, inb.dtype.np), [(0, 0)] * nranks, None
    layout = {Buf.INPUT: [(0, inb.count)], Buf.OUTPUT: blocks}
    return Call("gather", inb.count, inb.dtype, inb.flat, outarr, False, result, root=root, layout=layout,
                agree_count=True, device=inb.device)


def plan_scatterv(rank: int, nranks: int, input: Any, output: Any, counts: Any, displs: Any, root: int) -> Call:
    """scatterv: ``counts[q]`` elements at ``displs[q]`` of the root's input go to rank q's output."""
    root = check_rank(root, nranks, "root")
    outb = as_buffer(output, "output", writable=True)
    if rank == root:
        counts = _counts(counts, nranks, "counts")
        displs = _displs(displs, counts, nranks, "displs")
        inb = as_buffer(input, "input")
        _match(inb, outb)
        _fits(inb, displs, counts, "input")
        _need(outb.count == counts[rank], f"output: has {outb.count} elements but counts[{rank}] is {counts[rank]}")
        _need(not outb.overlaps(inb), "output: overlaps input")
        inarr, blocks = inb.flat, list(zip(displs, counts))
    else:
        inarr, blocks = np.empty(0, outb.dtype.np), [(0, 0)] * nranks
    layout = {Buf.INPUT: blocks, Buf.OUTPUT: [(0, outb.count)]}
    return Call("scatter", outb.count, outb.dtype, inarr, outb.flat, False, outb.owner, root=root, layout=layout,
                agree_count=True, device=outb.device)
