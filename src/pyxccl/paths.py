"""Slots or single copy, chosen per call by measured time (``PYXCCL_CMA=auto``).

A sending step that may go by descriptor (see :mod:`pyxccl.direct_plan`) can also go
through the slots; the receiver takes either. Which is faster is not a property of the
program but of the machine *at the moment*: on the 2-vCPU benchmark VM the two vCPUs sit
either on one CCD (a cache line moves between them in ~80 ns round trip, slots shared in
L3 are the fastest path: 16 MiB broadcast 0.85 ms) or on two (~330 ns; pulling slot lines
out of the other CCD's cache is 3-8x slower, 4.5-7 ms, while ``process_vm_readv`` of the
sender's buffer stays at 1.2-1.8 ms). The host moves the vCPUs every few seconds.

So the sender measures. Per (program, size class) it keeps each path's time per byte:
the fastest of its last :data:`HISTORY` calls (delays from other processes only ever add
time, so the minimum is the robust estimate, and it still follows a change of placement
within :data:`HISTORY` calls). It keeps the path in use unless the other one is faster by
:data:`_MARGIN` (no flapping between two paths of equal speed), and tries the other path
once every ``interval`` calls (the interval doubles, up to :data:`MAX_INTERVAL`, while the
other path keeps losing, and drops back to :data:`MIN_INTERVAL` when it wins). The choice
is the sender's alone and per call; receivers read whatever arrives. The first call of a
kind goes by single copy, the second through the slots.
"""

from __future__ import annotations

import time
from typing import Any, Callable

SLOTS, DIRECT = 0, 1
MIN_INTERVAL = 8
MAX_INTERVAL = 64
MAX_KEYS = 256
HISTORY = 3  # calls per path whose fastest is that path's cost
_MARGIN = 1.03  # the path not in use must be this much faster to take over


class _Record:
    __slots__ = ("samples", "cost", "best", "calls", "interval", "trying")

    def __init__(self) -> None:
        self.samples: list[list[float]] = [[], []]  # seconds per byte of the last calls, per path
        self.cost: list[float | None] = [None, None]  # the fastest of them
        self.best = DIRECT
        self.calls = 0
        self.interval = MIN_INTERVAL
        self.trying = False


class PathChooser:
    """Per communicator: which path the next call of a (program, size class) takes."""

    def __init__(self) -> None:
        self._records: dict[tuple, _Record] = {}

    @staticmethod
    def key(program: object, nbytes: int) -> tuple:
        """Calls of one program within a factor of two in size share a record."""
        return (id(program), nbytes.bit_length())

    def choose(self, key: tuple) -> int:
        """SLOTS or DIRECT for the next call of ``key``: each path once first (DIRECT first), then
        the faster one, with a try of the other every ``interval`` calls."""
        rec = self._records.get(key)
        if rec is None:
            if len(self._records) >= MAX_KEYS:
                self._records.pop(next(iter(self._records)))
            rec = self._records[key] = _Record()
        for path in (DIRECT, SLOTS):
            if rec.cost[path] is None:
                rec.trying = False
                return path
        rec.calls += 1
        rec.trying = rec.calls % rec.interval == 0
        return 1 - rec.best if rec.trying else rec.best

    def record(self, key: tuple, path: int, seconds: float, nbytes: int) -> None:
        """The call of ``key`` that took ``path`` ran ``seconds`` for ``nbytes`` per rank."""
        rec = self._records.get(key)
        if rec is None or nbytes <= 0:
            return
        history = rec.samples[path]
        if rec.trying:  # a tried path starts afresh: its old times are stale
            history.clear()
        history.append(seconds / nbytes)
        if len(history) > HISTORY:
            del history[0]
        rec.cost[path] = min(history)
        slots, direct = rec.cost
        if slots is None or direct is None:
            return
        best = rec.best  # the other path must be faster by _MARGIN to take over (no flapping)
        if best == SLOTS and direct * _MARGIN < slots:
            best = DIRECT
        elif best == DIRECT and slots * _MARGIN < direct:
            best = SLOTS
        if rec.trying:
            rec.interval = MIN_INTERVAL if best == path else min(rec.interval * 2, MAX_INTERVAL)
            rec.trying = False
        rec.best = best

    def drive(self, run: Any, nbytes: int, drive: Callable[[], None]) -> None:
        """Run ``drive()`` (the call of ``run``, a :class:`~pyxccl.executor.ProgramRun` moving
        ``nbytes`` per rank) on the path chosen for it, and record how long it took."""
        key = self.key(run.program, nbytes)
        path = self.choose(key)
        run.use_direct = path == DIRECT
        t0 = time.perf_counter()
        drive()
        self.record(key, path, time.perf_counter() - t0, nbytes)

    def best(self, key: tuple) -> int | None:
        """The path currently preferred for ``key`` (None before any call)."""
        rec = self._records.get(key)
        return None if rec is None else rec.best
