"""Repeated calls: a blocking call identical to an earlier one skips planning.

A training loop or a benchmark issues the same small collective over the same buffers
again and again. For such a call most of the per-call cost is Python bookkeeping:
checking the arguments, laying out the call, finding the program, binding the thread
blocks to the arrays. When a blocking call names the very same numpy arrays (same
objects, same shape, strides, dtype and writeability), op and root as a call remembered
here, the communicator reuses that call's checked :class:`~pyxccl.comm.checks.Call`, program
and bound runners (reset to their first step) — NCCL keeps persistent plans for the same
reason.

Covered: ``all_reduce``, ``broadcast``, ``reduce``, ``all_gather``, ``reduce_scatter``,
``all_to_all``, ``gather`` and ``scatter`` (not the v-variants), in place or not (the
``input=None`` / ``output=None`` forms included), called blocking (``async_op=False``) with the communicator's
algorithm choice (``algorithm=None``) and timeout (``timeout=None``), outside ``group()``,
with ``PYXCCL_CHECK`` off; ops given by name (``avg`` included: the repeat divides again;
never ``premul_sum``), roots as plain ints.
:func:`lookup` makes that decision for all of them.

Any size is remembered, at most :data:`MAX_ENTRIES` calls of at most :data:`SMALL_BYTES` per
block (the call's ``count``, i.e. the whole buffer for all_reduce/broadcast/reduce, one rank's
block for the others) and at most :data:`MAX_LARGE` larger ones, each bound the oldest first.
An entry holds references to its arrays: a numpy array's memory cannot move while it is
referenced (``ndarray.resize`` refuses), so the same object means the same memory. The memory of
a large call's arrays is therefore kept until :data:`MAX_LARGE` other large calls replaced it, or
:meth:`~pyxccl.comm.communicator.Communicator.destroy`. Large calls gain too: between two copies of 16 MiB,
this machine's caches hold none of Python's own data, and the planning a repeat skips took 60-100
µs per call there (2-rank 16 MiB calls: 5-8 % less time). Other array types (torch, CuPy) always
take the full path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import group as _group

SMALL_BYTES = 64 * 1024
MAX_ENTRIES = 16
MAX_LARGE = 2


class Repeat:
    """One remembered call: its arrays' signatures, the checked call, program, kernels and runners."""

    __slots__ = ("input", "output", "sig", "call", "program", "kern", "what", "prun", "runners")

    def __init__(self, input: np.ndarray | None, output: np.ndarray | None, call: Any, program: Any, kern: Any):
        self.input, self.output = input, output
        self.sig = _signature(input, output)
        self.call, self.program, self.kern = call, program, kern
        self.what = call.describe()
        self.prun: Any = None  # bound on the first repeat
        self.runners: list = []


def _signature(input: np.ndarray | None, output: np.ndarray | None) -> tuple:
    """Shape, strides and dtype of the arrays named, and whether the one written to is writeable."""
    if output is None:
        return (input.shape, input.strides, input.dtype, input.flags.writeable)  # type: ignore[union-attr]
    if input is None:  # all_gather in place: the input is output's block
        return (output.shape, output.strides, output.dtype, output.flags.writeable)
    return (input.shape, input.strides, input.dtype, output.shape, output.strides, output.dtype,
            output.flags.writeable)


class Repeats:
    """A communicator's remembered calls, keyed by (collective, arrays' ids, op, root)."""

    def __init__(self) -> None:
        self._entries: dict[tuple, Repeat] = {}
        self._large: dict[tuple, Repeat] = {}  # the calls above SMALL_BYTES per block

    @staticmethod
    def key(collective: str, input: Any, output: Any, op: Any, root: Any) -> tuple | None:
        """The lookup key, or None when the call cannot be remembered (not numpy, op not a name,
        root not a plain int: ``True`` or ``1.0`` hash like ``1`` but are refused by the full path)."""
        if type(input) is not np.ndarray:
            if input is not None or type(output) is not np.ndarray:
                return None
        elif output is not None and type(output) is not np.ndarray:
            return None
        if not isinstance(op, str) and op is not None:
            return None
        if root is not None and type(root) is not int:
            return None
        return (collective, id(input), id(output), op, root)

    def get(self, key: tuple, input: np.ndarray | None, output: np.ndarray | None) -> Repeat | None:
        """The remembered call for ``key`` if its arrays are still these, unchanged."""
        rep = self._entries.get(key) or self._large.get(key)
        if rep is None or rep.input is not input or rep.output is not output or rep.sig != _signature(input, output):
            return None
        return rep

    def remember(self, key: tuple, input: np.ndarray | None, output: np.ndarray | None, call: Any, program: Any,
                 kern: Any) -> None:
        """Keep ``call`` (checked and planned from ``input``/``output``) for its repeats."""
        if call.layout is not None or call.agree_count or call.op.name == "premul_sum" or program is None:
            return
        large = call.count * call.dtype.itemsize > SMALL_BYTES
        entries, bound = (self._large, MAX_LARGE) if large else (self._entries, MAX_ENTRIES)
        (self._entries if large else self._large).pop(key, None)  # the same key, another size before
        entries.pop(key, None)
        if len(entries) >= bound:
            entries.pop(next(iter(entries)))
        entries[key] = Repeat(input, output, call, program, kern)

    def clear(self) -> None:
        """Forget every call (and release its arrays)."""
        self._entries.clear()
        self._large.clear()


def lookup(repeats: Repeats, collective: str, input: Any, output: Any, op: Any, root: Any,
           algorithm: Any, async_op: bool, timeout: float | None) -> tuple:
    """``(key, repeat)`` for a call this module may serve: ``repeat`` is the remembered call to run
    again (or None), ``key`` what to remember this one by (None: never remembered).

    Only blocking calls with the communicator's algorithm and timeout qualify; a remembered
    call is not reused inside ``group()`` (nothing is remembered there, nor with
    PYXCCL_CHECK on). The Communicator runs the repeat itself: the flight recorder finds
    the call site a fixed number of frames up.
    """
    if async_op or algorithm is not None or timeout is not None:
        return None, None
    key = repeats.key(collective, input, output, op, root)
    if key is None:
        return None, None
    rep = repeats.get(key, input, output)
    if rep is not None and _group.active():
        rep = None
    return key, rep
