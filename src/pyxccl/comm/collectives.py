"""The collective entry points of :class:`~pyxccl.comm.communicator.Communicator`.

Each method lays its arguments out with :mod:`pyxccl.comm.checks` (the checks that raise
InvalidArgument on the rank that made the mistake) and hands the call to
``Communicator._collective``; ``all_reduce``, ``broadcast``, ``reduce``, ``all_gather``,
``reduce_scatter``, ``all_to_all``, ``gather`` and ``scatter`` first look for a remembered repeat of the same call
(:mod:`pyxccl.comm.repeat`, through :meth:`Collectives._remembered`). Every method takes
``algorithm`` (a registered name or an IR Program), ``async_op`` and ``timeout`` as the
Communicator's docstring describes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import checks as calls
from . import group as _group
from .checks import Call
from ..dtypes import DTYPES, MAX
from ..ir.program import Program


class Collectives:
    """Mixin of :class:`~pyxccl.comm.communicator.Communicator`: one public method per collective."""

    def _remembered(self, collective: str, input: Any, output: Any, op: Any, root: Any,
                    algorithm: "str | Program | None", async_op: bool, timeout: float | None) -> tuple:
        """``(key, repeat)`` for a call :mod:`pyxccl.comm.repeat` may serve: ``repeat`` is the remembered
        call to run again (or None), ``key`` what to remember this one by (None: never remembered).

        Only blocking calls with the communicator's algorithm and timeout qualify; a remembered
        call is not reused inside ``group()`` (``_collective`` remembers nothing there, nor with
        PYXCCL_CHECK on). The caller runs ``self._repeat(repeat)`` itself: the flight recorder
        finds the call site a fixed number of frames up.
        """
        if async_op or algorithm is not None or timeout is not None:
            return None, None
        key = self._repeats.key(collective, input, output, op, root)
        if key is None:
            return None, None
        rep = self._repeats.get(key, input, output)
        if rep is not None and _group.active():
            rep = None
        return key, rep

    def all_reduce(self, input: Any, output: Any = None, op: Any = "sum", *, algorithm: "str | Program | None" = None,
                   async_op: bool = False, timeout: float | None = None) -> Any:
        """Reduce ``input`` over all ranks into ``output`` on every rank (in place when output is None)."""
        key, rep = self._remembered("allreduce", input, output, op, None, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._collective(calls.plan_elementwise("allreduce", self._rank, self._size, input, output, op),
                                algorithm, async_op, timeout, (key, input, output))

    def broadcast(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
                  async_op: bool = False, timeout: float | None = None) -> Any:
        """Copy the root's ``input`` into ``output`` on every rank (in place when output is None)."""
        key, rep = self._remembered("broadcast", input, output, None, root, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._collective(calls.plan_elementwise("broadcast", self._rank, self._size, input, output, None, root),
                                algorithm, async_op, timeout, (key, input, output))

    def reduce(self, input: Any, output: Any = None, op: Any = "sum", *, root: int = 0,
               algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """Reduce ``input`` over all ranks into the root's ``output`` (in place when output is None)."""
        key, rep = self._remembered("reduce", input, output, op, root, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._collective(calls.plan_elementwise("reduce", self._rank, self._size, input, output, op, root),
                                algorithm, async_op, timeout, (key, input, output))

    def all_gather(self, input: Any, output: Any, *, algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """Concatenate every rank's ``input`` (count elements) into ``output`` (size * count) on every rank.

        In place: pass ``input=None`` (or output's block of this rank) with the data in that block.
        """
        key, rep = self._remembered("allgather", input, output, None, None, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._collective(calls.plan_gatherlike("allgather", self._rank, self._size, input, output),
                                algorithm, async_op, timeout, (key, input, output))

    def reduce_scatter(self, input: Any, output: Any = None, op: Any = "sum", *, algorithm: "str | Program | None" = None,
                       async_op: bool = False, timeout: float | None = None) -> Any:
        """Reduce ``input`` (size * count) over ranks; rank r gets block r in ``output`` (count).

        In place (output None): the result is the rank's block of ``input``, which is returned.
        """
        key, rep = self._remembered("reducescatter", input, output, op, None, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._collective(calls.plan_scatterlike("reducescatter", self._rank, self._size, input, output, op),
                                algorithm, async_op, timeout, (key, input, output))

    def all_to_all(self, input: Any, output: Any = None, *, algorithm: "str | Program | None" = None,
                   async_op: bool = False, timeout: float | None = None) -> Any:
        """Block q of ``input`` goes to rank q, into block r (this rank) of its ``output``."""
        key, rep = self._remembered("alltoall", input, output, None, None, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._collective(calls.plan_alltoall(self._rank, self._size, input, output), algorithm, async_op,
                                timeout, (key, input, output))

    def gather(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
               async_op: bool = False, timeout: float | None = None) -> Any:
        """Concatenate every rank's ``input`` into the root's ``output`` (size * count)."""
        key, rep = self._remembered("gather", input, output, None, root, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._collective(calls.plan_gatherlike("gather", self._rank, self._size, input, output, root),
                                algorithm, async_op, timeout, (key, input, output))

    def scatter(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
                async_op: bool = False, timeout: float | None = None) -> Any:
        """Block r of the root's ``input`` (size * count) goes to rank r's ``output`` (count)."""
        key, rep = self._remembered("scatter", input, output, None, root, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._collective(calls.plan_scatterlike("scatter", self._rank, self._size, input, output, None, root),
                                algorithm, async_op, timeout, (key, input, output))

    def all_gatherv(self, input: Any, output: Any, counts: Any, displs: Any = None, *,
                    algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """Rank q's ``counts[q]`` elements land at ``displs[q]`` (default: packed) of every rank's output.

        In place: ``input=None``, with this rank's data already at its place in ``output``.
        """
        return self._collective(calls.plan_allgatherv(self._rank, self._size, input, output, counts, displs),
                                algorithm, async_op, timeout)

    def reduce_scatterv(self, input: Any, output: Any = None, counts: Any = (), op: Any = "sum", *,
                        algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """Reduce ``input`` (``sum(counts)`` elements, packed blocks) over ranks; rank r gets block r."""
        return self._collective(calls.plan_reducescatterv(self._rank, self._size, input, output, counts, op),
                                algorithm, async_op, timeout)

    def all_to_allv(self, input: Any, output: Any, send_counts: Any, recv_counts: Any, send_displs: Any = None,
                    recv_displs: Any = None, *, algorithm: "str | Program | None" = None,
                    async_op: bool = False, timeout: float | None = None) -> Any:
        """MPI_Alltoallv: ``send_counts[q]`` elements at ``send_displs[q]`` go to rank q's ``recv_displs[r]``."""
        return self._collective(calls.plan_alltoallv(self._rank, self._size, input, output, send_counts,
                                                     recv_counts, send_displs, recv_displs), algorithm, async_op, timeout)

    def gatherv(self, input: Any, output: Any = None, counts: Any = None, displs: Any = None, *, root: int = 0,
                algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """Rank q's input lands at ``displs[q]`` of the root's output; ``counts``/``displs`` matter on the root."""
        return self._collective(calls.plan_gatherv(self._rank, self._size, input, output, counts, displs, root),
                                algorithm, async_op, timeout)

    def scatterv(self, input: Any, output: Any, counts: Any = None, displs: Any = None, *, root: int = 0,
                 algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """``counts[q]`` elements at ``displs[q]`` of the root's input go to rank q's output."""
        return self._collective(calls.plan_scatterv(self._rank, self._size, input, output, counts, displs, root),
                                algorithm, async_op, timeout)

    def barrier(self, *, async_op: bool = False, timeout: float | None = None) -> Any:
        """Return once every rank has entered the barrier."""
        token = np.zeros(1, dtype=np.uint8)
        call = Call("barrier", 1, DTYPES["uint8"], token, token, True, None, MAX)
        return self._collective(call, None, async_op, timeout)
