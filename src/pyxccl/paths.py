"""Slots or single copy, chosen per call by measured time (``PYXCCL_CMA=auto``).

A sending step that may go by descriptor (see :mod:`pyxccl.direct_plan`) can also go
through the slots; the receiver takes either. Which is faster is not a property of the
program but of the machine *at the moment*: on the 2-vCPU benchmark VM the two vCPUs sit
either on one CCD (a cache line moves between them in ~80 ns round trip, slots shared in
L3 are the fastest path: 16 MiB broadcast 0.85 ms) or on two (~330 ns; pulling slot lines
out of the other CCD's cache is 3-8x slower, 4.5-7 ms, while ``process_vm_readv`` of the
sender's buffer stays at 1.2-1.8 ms). The host moves the vCPUs every few seconds.

So the sender measures. Per (program, size class) it keeps the recent time per byte of
each path and takes the faster one; every ``interval`` calls it tries the other path
once (the interval doubles, up to :data:`MAX_INTERVAL`, while the other path keeps
losing, and drops back to :data:`MIN_INTERVAL` when it wins). The choice is the
sender's alone and per call; receivers read whatever arrives.
"""

from __future__ import annotations

SLOTS, DIRECT = 0, 1
MIN_INTERVAL = 8
MAX_INTERVAL = 128
MAX_KEYS = 256
_WEIGHT = 0.5  # of the newest sample in a path's running time per byte
_MARGIN = 1.1  # a tried path must be this much slower to count as losing


class _Record:
    __slots__ = ("cost", "best", "calls", "interval", "trying")

    def __init__(self) -> None:
        self.cost: list[float | None] = [None, None]  # seconds per byte, per path
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
        sample = seconds / nbytes
        old = rec.cost[path]
        # a path in use keeps a running average; a tried one starts afresh (its old time is stale)
        rec.cost[path] = sample if old is None or rec.trying else _WEIGHT * sample + (1 - _WEIGHT) * old
        other = rec.cost[1 - path]
        if other is None:
            return
        if rec.trying:
            lost = rec.cost[path] > other * _MARGIN  # type: ignore[operator]
            rec.interval = min(rec.interval * 2, MAX_INTERVAL) if lost else MIN_INTERVAL
            rec.trying = False
        rec.best = path if rec.cost[path] <= other else 1 - path  # type: ignore[operator]

    def best(self, key: tuple) -> int | None:
        """The path currently preferred for ``key`` (None before any call)."""
        rec = self._records.get(key)
        return None if rec is None else rec.best
