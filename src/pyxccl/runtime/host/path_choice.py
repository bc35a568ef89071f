"""Slots, single copy or both, chosen per call by measured time (``PYXCCL_CMA=auto``).

A sending step that may go by descriptor (see :mod:`pyxccl.ir.passes.direct`) can also go
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
through the slots, 64 MiB 6 % (``docs/history/performance-log.md``); on 4 ranks on the 2 vCPUs the three
paths sit within the noise. It is only a candidate where it differs from both others.

A fourth path writes instead of reading (:data:`PUT`): single copy everywhere, and where a
rank that also receives may send every slice of a step at once towards a receive offered at
the call's start (:func:`pyxccl.ir.passes.direct.put_plan`: the 2-rank all-gather and all-to-all),
it writes each slice into the receiver's destination itself with ``process_vm_writev`` right
after its own earlier steps of that slice, instead of posting them to be read. An all-gather
copies its own block locally and writes the same bytes to the peer while they are in the
cache. Within one 2-rank job it ran 8-15 % faster than reading in some jobs and 7-14 % slower
in others (``docs/history/performance-log.md``), so the chooser measures it like the others, where it
differs from single copy.

So the sender measures. Per (program, size class) it keeps each path's time per byte:
the fastest of its last :data:`HISTORY` calls (delays from other processes only ever add
time, so the minimum is the robust estimate, and it still follows a change of placement
within :data:`HISTORY` calls). It keeps the path in use unless another is faster by
:data:`_MARGIN` (no flapping between two paths of equal speed), and tries each other path
on its own schedule: :data:`MIN_INTERVAL` calls after it was measured or lost the lead, the
interval doubling (up to :data:`MAX_INTERVAL`) while its tries keep losing, and never sooner
than its lag behind the best allows (:data:`TRY_BUDGET`: a path 2.5x slower is tried every
150 calls, not every 8). With one interval shared by all paths, a close second (the put, a
few % from single copy, winning some tries) kept resetting it, and every other try went to
the slots at 2.5x the time: ``auto`` ran 5-10 % behind the best fixed path on the 2-rank
exchanges (``docs/history/performance-log.md``). A try, and a path's first measurement, is
:data:`TRY_CALLS` calls in a row of which only the last counts: the first call of a path after
calls of another runs cold (its slots and their cache lines idle: a 2-rank all-gather of 1 MiB
through the slots took 71 µs on the first call after single copy, 66-68 on the next), and
before the rings' pages were mapped up front (:func:`pyxccl.transport.ring.map_ring`) the
first use of each slot took 500-750 µs in page faults: one-call tries saw that, not the
path's own speed. The first two calls of a kind go by single copy, the next two through the
slots, then mixed and by puts (where those are candidates).

The ranks of a host take the same path in each call: the host's lowest rank decides and
publishes, the others follow (:mod:`pyxccl.runtime.host.path_board`); receivers read whatever arrives,
so a follower that misses an answer only loses time, never data.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..plan import DIRECT, MIXED, PUT, SLOTS
from .path_board import Board, board_key
from ...transport.doorbell import Doorbell, attach_shared

#: the paths (every step through the slots; by descriptor wherever a step may; the mix; writes)
#: are numbered by the plan, which keeps each step's mode per path

NPATHS = 4
#: the candidates of a run whose mix and put equal one of the others
TWO_PATHS = (DIRECT, SLOTS)
MIN_INTERVAL = 8  # calls between tries of a path: at first, and for a path that just lost its lead
MAX_INTERVAL = 256  # at most, however far behind a path is
TRY_BUDGET = 0.01  # a path x times slower than the best is tried at most every (x - 1) / TRY_BUDGET calls
MAX_KEYS = 256
HISTORY = 3  # calls per path whose fastest is that path's cost
TRY_CALLS = 2  # calls in a row per try (and per first measurement); only the last is recorded
_MARGIN = 1.03  # a path not in use must be this much faster to take over


class _Record:
    __slots__ = ("samples", "cost", "best", "calls", "interval", "due", "trying", "left", "seq", "board_key", "program")

    def __init__(self, board_key: int = 0, program: object = None) -> None:
        self.program = program  # kept alive: the key holds its id
        self.samples: list[list[float]] = [[] for _ in range(NPATHS)]  # seconds per byte of the last calls, per path
        self.cost: list[float | None] = [None] * NPATHS  # the fastest of them
        self.best = DIRECT
        self.calls = 0  # calls counted once every candidate was measured
        self.interval = [MIN_INTERVAL] * NPATHS  # per path: calls between its tries
        self.due = [0] * NPATHS  # per path: the count of calls at which it is tried next
        self.trying: int | None = None  # the path this call tries (or measures for the first time)
        self.left = 0  # calls of that try still to come after this one
        self.seq = 0  # calls of this key, all of them (the board's call number)
        self.board_key = board_key


def _pick(rec: _Record, candidates: tuple[int, ...], ran: int | None = None) -> tuple[int, bool, bool]:
    """What :meth:`PathChooser.choose` gives next for ``rec``, as (path, counted, a new try); ``ran``:
    a path chosen since whose time is not recorded yet (for a forecast), taken as measured."""
    if rec.left and rec.trying in candidates:  # a try goes on
        return rec.trying, rec.cost[rec.trying] is not None, False  # type: ignore[return-value]
    for path in candidates:
        if rec.cost[path] is None and path != ran:
            return path, False, True
    best = rec.best if rec.best in candidates else _fastest(rec, candidates)
    due = [p for p in candidates if p != best and rec.due[p] <= rec.calls + 1]
    if due:
        return min(due, key=lambda p: rec.due[p]), True, True
    return best, True, False


def _fastest(rec: _Record, candidates) -> int:
    return min(candidates, key=lambda p: _INF if rec.cost[p] is None else rec.cost[p])  # type: ignore[return-value]


_INF = float("inf")


def _schedule(rec: _Record, path: int, interval: int) -> None:
    """Try ``path`` (not the best) again after ``interval`` calls, or later as far as it is slower
    than the best (:data:`TRY_BUDGET`, for the :data:`TRY_CALLS` calls of a try), within
    :data:`MIN_INTERVAL`..:data:`MAX_INTERVAL`."""
    cost, best = rec.cost[path], rec.cost[rec.best]
    if cost is not None and best:
        interval = max(interval, round(TRY_CALLS * (cost / best - 1.0) / TRY_BUDGET))
    rec.interval[path] = interval = min(max(interval, MIN_INTERVAL), MAX_INTERVAL)
    rec.due[path] = rec.calls + interval


class PathChooser:
    """Per communicator: which path the next call of a (program, size class) takes, by the
    ``PYXCCL_CMA`` setting: "auto" measures; "on" always takes :data:`DIRECT`, "mixed" :data:`MIXED`,
    "put" :data:`PUT`. With a ``board`` (:mod:`pyxccl.runtime.host.path_board`) the chooser of the host's lowest
    rank (``leads``) publishes each choice there and the others follow it."""

    def __init__(self, setting: str = "auto", board: Board | None = None, leads: bool = False) -> None:
        self._records: dict[tuple, _Record] = {}
        self._fixed = {"on": DIRECT, "mixed": MIXED, "put": PUT}.get(setting)
        self._board = board
        self._leads = leads

    @property
    def leads(self) -> bool:
        """Whether this chooser measures and decides: it has no board (decides for itself alone)
        or it publishes there for the ranks of its host; False: it follows another's board."""
        return self._board is None or self._leads

    @staticmethod
    def key(program: object, nbytes: int) -> tuple:
        """Calls of one program within a factor of two in size share a record."""
        return (id(program), nbytes.bit_length())

    def _record(self, key: tuple, program: object = None, nbytes: int = 0) -> _Record:
        """The record of ``key``, made on its first call (keyed on the board by ``program`` and ``nbytes``)."""
        rec = self._records.get(key)
        if rec is None:
            if len(self._records) >= MAX_KEYS:
                self._records.pop(next(iter(self._records)))
            rec = self._records[key] = _Record(0 if self._board is None else board_key(program, nbytes), program)
        return rec

    def choose(self, key: tuple, candidates: tuple[int, ...] = TWO_PATHS) -> int:
        """The path of the next call of ``key`` among ``candidates``: each measured first (in their
        order), then the fastest, with a try of another where its interval has passed (a
        measurement and a try are :data:`TRY_CALLS` calls in a row)."""
        rec = self._record(key)
        path, counted, trying = _pick(rec, candidates)
        if trying:
            rec.trying, rec.left = path, TRY_CALLS - 1
        elif rec.left and path == rec.trying:  # the try goes on (_pick gives that first)
            rec.left -= 1
        else:
            rec.trying, rec.left = None, 0
        if counted:
            rec.calls += 1
            rec.best = rec.best if rec.best in candidates else _fastest(rec, candidates)
        if trying and rec.cost[path] is not None:  # not again before its interval, whatever this try's time
            rec.due[path] = rec.calls + rec.interval[path]
        return path

    def forecast(self, key: tuple, candidates: tuple[int, ...], ran: int) -> int:
        """The path the call after this one (which took ``ran``) takes, unless this one's time
        changes the choice."""
        return _pick(self._records[key], candidates, ran)[0]

    def record(self, key: tuple, path: int, seconds: float, nbytes: int) -> None:
        """The call of ``key`` that took ``path`` ran ``seconds`` for ``nbytes`` per rank."""
        rec = self._records.get(key)
        if rec is None or nbytes <= 0:
            return
        tried = rec.trying == path
        if tried and rec.left:  # a try's first calls warm the path up: not recorded
            return
        first = rec.cost[path] is None
        history = rec.samples[path]
        if tried:  # a tried path starts afresh: its old times are stale
            history.clear()
        history.append(seconds / nbytes)
        if len(history) > HISTORY:
            del history[0]
        rec.cost[path] = min(history)
        old = best = rec.best  # another path must be faster by _MARGIN to take over (no flapping)
        mine = rec.cost[best]
        if best != path and mine is not None and rec.cost[path] * _MARGIN < mine:  # type: ignore[operator]
            best = path
        elif best == path:  # the path in use got slower: any measured path faster by the margin takes over
            fastest = _fastest(rec, range(NPATHS))
            if rec.cost[fastest] * _MARGIN < rec.cost[best]:  # type: ignore[operator]
                best = fastest
        rec.trying = None
        rec.best = best
        if best != old:  # the path that lost the lead is tried again soon
            _schedule(rec, old, MIN_INTERVAL)
        if path != best and tried:  # a first measurement, or a losing try (backs off)
            _schedule(rec, path, MIN_INTERVAL if first else 2 * rec.interval[path])

    def drive(self, run: Any, nbytes: int, drive: Callable[[], None]) -> None:
        """Run ``drive()`` (the call of ``run``, a :class:`~pyxccl.runtime.host.executor.HostCall` moving
        ``nbytes`` per rank) on the path chosen for it, and record how long it took; a follower
        takes the path its leader published where there is one (:mod:`pyxccl.runtime.host.path_board`)."""
        if self._fixed is not None:
            run.path = self._fixed
            drive()
            return
        key = self.key(run.program, nbytes)
        board = self._board
        rec = self._record(key, run.program, nbytes)
        rec.seq += 1
        if board is not None and not self._leads:
            followed = board.follow(rec.board_key, rec.seq)
            if followed is not None:
                run.path = followed
                drive()
                return
        candidates = self.candidates(run)
        path = run.path = self.choose(key, candidates)
        if board is not None and self._leads:
            board.publish(rec.board_key, rec.seq, path, self.forecast(key, candidates, path))
        t0 = time.perf_counter()
        drive()
        self.record(key, path, time.perf_counter() - t0, nbytes)
        if board is not None and self._leads:  # the forecast again, with this call's time
            board.publish(rec.board_key, rec.seq, path, self.forecast(key, candidates, path))

    @staticmethod
    def candidates(run: Any) -> tuple[int, ...]:
        """The paths worth measuring for ``run``: single copy and the slots, and the mix and the
        put where they differ from both (:attr:`~pyxccl.runtime.host.executor.HostCall.mixed_differs`, ``put_differs``)."""
        return TWO_PATHS + ((MIXED,) if run.mixed_differs else ()) + ((PUT,) if run.put_differs else ())

    def best(self, key: tuple) -> int | None:
        """The path currently preferred for ``key`` (None before any call)."""
        rec = self._records.get(key)
        return None if rec is None else rec.best


def for_host(setting: str, rank: int, kinds: Sequence[str], doorbell: Doorbell,
             doorbells: Sequence[str]) -> PathChooser | None:
    """The path chooser of ``rank`` for the ``PYXCCL_CMA`` ``setting`` (None for "off"). Under "auto",
    the lowest of the ranks that share memory with it (``kinds[r]``, the transport towards rank
    ``r``: "self", "local" or "shm", i.e. its host) decides for all of them, on the spare bytes of
    its doorbell page (its own ``doorbell``, or the file ``doorbells[leader]``: :mod:`pyxccl.runtime.host.path_board`)."""
    if setting == "off":
        return None
    sharing = [r for r, kind in enumerate(kinds) if kind in ("self", "local", "shm")]
    if setting != "auto" or len(sharing) == 1:
        return PathChooser(setting)
    leader = min(sharing)
    bell = doorbell if leader == rank else attach_shared(doorbells[leader], writer=0)
    return PathChooser(setting, Board(bell.spare()), leads=leader == rank)
