"""Slots, single copy or both, chosen per call by measured time (``PYXCCL_CMA=auto``).

A sending step that may go by descriptor (see :mod:`pyxccl.direct_plan`) can also go
through the slots; the receiver takes either. Which is faster is not a property of the
program but of the machine *at the moment*: on the 2-vCPU benchmark VM the two vCPUs sit
either on one CCD (a cache line moves between them in ~80 ns round trip, slots shared in
L3 are the fastest path: 16 MiB broadcast 0.85 ms) or on two (~330 ns; pulling slot lines
out of the other CCD's cache is 3-8x slower, 4.5-7 ms, while ``process_vm_readv`` of the
sender's buffer stays at 1.2-1.8 ms). The host moves the vCPUs every few seconds.

A third path mixes them (:data:`MIXED`): descriptors only where the receiver reads them
straight into its destination (forwards of final data, plain receives), the slots where a
reduction consumes what arrives. The reduction reads its input once either way; through a
slot the sender does the copy and the receiver reads it from the shared cache, where by
descriptor the receiver does both. A 2-rank allreduce of 16 MiB ran 3-5 % faster mixed than
through the slots, 64 MiB 6 % (``docs/performance.md``); on 4 ranks on the 2 vCPUs the three
paths sit within the noise. It is only a candidate where it differs from both others.

A fourth path writes instead of reading (:data:`PUT`): single copy everywhere, and where a
rank that also receives may send every slice of a step at once towards a receive offered at
the call's start (:func:`pyxccl.direct_plan.put_plan`: the 2-rank all-gather and all-to-all),
it writes each slice into the receiver's destination itself with ``process_vm_writev`` right
after its own earlier steps of that slice, instead of posting them to be read. An all-gather
copies its own block locally and writes the same bytes to the peer while they are in the
cache. Within one 2-rank job it ran 8-15 % faster than reading in some jobs and 7-14 % slower
in others (``docs/performance.md``), so the chooser measures it like the others, where it
differs from single copy.

So the sender measures. Per (program, size class) it keeps each path's time per byte:
the fastest of its last :data:`HISTORY` calls (delays from other processes only ever add
time, so the minimum is the robust estimate, and it still follows a change of placement
within :data:`HISTORY` calls). It keeps the path in use unless the other one is faster by
:data:`_MARGIN` (no flapping between two paths of equal speed), and tries another path
once every ``interval`` calls, the one measured longest ago (the interval doubles, up to
:data:`MAX_INTERVAL`, while the tried paths keep losing, and drops back to
:data:`MIN_INTERVAL` when one wins). The choice is the sender's alone and per call;
receivers read whatever arrives. The first call of a kind goes by single copy, the second
through the slots, the third mixed and the fourth by puts (where those are candidates).
"""

from __future__ import annotations

import time
from typing import Any, Callable

#: the paths: every step through the slots; by descriptor wherever a step may; the mix; writes
SLOTS, DIRECT, MIXED, PUT = 0, 1, 2, 3
NPATHS = 4
#: the candidates of a run whose mix and put equal one of the others
TWO_PATHS = (DIRECT, SLOTS)
MIN_INTERVAL = 8
MAX_INTERVAL = 64
MAX_KEYS = 256
HISTORY = 3  # calls per path whose fastest is that path's cost
_MARGIN = 1.03  # a path not in use must be this much faster to take over


class _Record:
    __slots__ = ("samples", "cost", "last", "best", "calls", "interval", "trying")

    def __init__(self) -> None:
        self.samples: list[list[float]] = [[] for _ in range(NPATHS)]  # seconds per byte of the last calls, per path
        self.cost: list[float | None] = [None] * NPATHS  # the fastest of them
        self.last = [0] * NPATHS  # per path: the call count when it last ran
        self.best = DIRECT
        self.calls = 0
        self.interval = MIN_INTERVAL
        self.trying = False


class PathChooser:
    """Per communicator: which path the next call of a (program, size class) takes, by the
    ``PYXCCL_CMA`` setting: "auto" measures; "on" always takes :data:`DIRECT`, "mixed" :data:`MIXED`,
    "put" :data:`PUT`."""

    def __init__(self, setting: str = "auto") -> None:
        self._records: dict[tuple, _Record] = {}
        self._fixed = {"on": DIRECT, "mixed": MIXED, "put": PUT}.get(setting)

    @staticmethod
    def key(program: object, nbytes: int) -> tuple:
        """Calls of one program within a factor of two in size share a record."""
        return (id(program), nbytes.bit_length())

    def choose(self, key: tuple, candidates: tuple[int, ...] = TWO_PATHS) -> int:
        """The path of the next call of ``key`` among ``candidates``: each once first (in their
        order), then the fastest, with a try of another every ``interval`` calls."""
        rec = self._records.get(key)
        if rec is None:
            if len(self._records) >= MAX_KEYS:
                self._records.pop(next(iter(self._records)))
            rec = self._records[key] = _Record()
        rec.trying = False
        for path in candidates:
            if rec.cost[path] is None:
                return self._ran(rec, path)
        rec.calls += 1
        if rec.best not in candidates:
            rec.best = min(candidates, key=lambda p: rec.cost[p])  # type: ignore[arg-type,return-value]
        if rec.calls % rec.interval == 0:
            rec.trying = True
            return self._ran(rec, min((p for p in candidates if p != rec.best), key=lambda p: rec.last[p]))
        return self._ran(rec, rec.best)

    @staticmethod
    def _ran(rec: _Record, path: int) -> int:
        rec.last[path] = rec.calls
        return path

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
        best = rec.best  # another path must be faster by _MARGIN to take over (no flapping)
        mine = rec.cost[best]
        if best != path and mine is not None and rec.cost[path] * _MARGIN < mine:  # type: ignore[operator]
            best = path
        elif best == path:  # the path in use got slower: any measured path faster by the margin takes over
            fastest = min((p for p in range(NPATHS) if rec.cost[p] is not None), key=lambda p: rec.cost[p])  # type: ignore[arg-type,return-value]
            if rec.cost[fastest] * _MARGIN < rec.cost[best]:  # type: ignore[operator]
                best = fastest
        if rec.trying:
            rec.interval = MIN_INTERVAL if best == path else min(rec.interval * 2, MAX_INTERVAL)
            rec.trying = False
        rec.best = best

    def drive(self, run: Any, nbytes: int, drive: Callable[[], None]) -> None:
        """Run ``drive()`` (the call of ``run``, a :class:`~pyxccl.executor.ProgramRun` moving
        ``nbytes`` per rank) on the path chosen for it, and record how long it took."""
        if self._fixed is not None:
            run.path = self._fixed
            drive()
            return
        key = self.key(run.program, nbytes)
        path = run.path = self.choose(key, self.candidates(run))
        t0 = time.perf_counter()
        drive()
        self.record(key, path, time.perf_counter() - t0, nbytes)

    @staticmethod
    def candidates(run: Any) -> tuple[int, ...]:
        """The paths worth measuring for ``run``: single copy and the slots, and the mix and the
        put where they differ from both (:attr:`~pyxccl.executor.ProgramRun.mixed_differs`, ``put_differs``)."""
        return TWO_PATHS + ((MIXED,) if run.mixed_differs else ()) + ((PUT,) if run.put_differs else ())

    def best(self, key: tuple) -> int | None:
        """The path currently preferred for ``key`` (None before any call)."""
        rec = self._records.get(key)
        return None if rec is None else rec.best
