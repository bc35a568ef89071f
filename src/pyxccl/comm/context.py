"""The communicator as the modules around it see it: a read-only :class:`CommContext`.

``group()``, the flight recorder, the mismatch check and the torch backend need a few
facts about a communicator (rank, size, tag, configuration, timeout, hosts), its
bootstrap (the mismatch check's allgather), its call queue and flight recorder, and a
few operations (submit a call to the queue, launch a batch of point-to-point ops).
They get them here, as ``comm.context``, instead of reaching into the Communicator's
private attributes. Nothing here can be reassigned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..bootstrap import Bootstrap
    from ..config import Config
    from ..reliability.flight import FlightRecorder
    from .call_queue import CallQueue, Work
    from .liveness import Liveness


class CommContext:
    """Read-only facts and operations of one communicator (``comm.context``)."""

    __slots__ = ("__weakref__", "_rank", "_size", "_tag", "_config", "_timeout", "_hosts", "_bootstrap", "_call_queue",
                 "_flight", "_liveness", "_launch_p2p")

    def __init__(self, *, rank: int, size: int, tag: str, config: Config, timeout: float,
                 hosts: tuple[tuple[int, ...], ...], bootstrap: Bootstrap, call_queue: CallQueue,
                 flight: FlightRecorder | None, liveness: Liveness,
                 launch_p2p: Callable[[list, list], None]):
        self._rank, self._size, self._tag, self._config, self._timeout = rank, size, tag, config, timeout
        self._hosts, self._bootstrap, self._call_queue, self._flight = hosts, bootstrap, call_queue, flight
        self._liveness, self._launch_p2p = liveness, launch_p2p

    # ------------------------------------------------------------------ facts
    @property
    def rank(self) -> int:
        """This rank's index in the communicator."""
        return self._rank

    @property
    def size(self) -> int:
        """Number of ranks."""
        return self._size

    @property
    def tag(self) -> str:
        """The communicator's unique tag (16 hex digits from its unique id): names its dumps and files."""
        return self._tag

    @property
    def config(self) -> Config:
        """The configuration (``PYXCCL_*`` settings) the communicator was made with."""
        return self._config

    @property
    def timeout(self) -> float:
        """Seconds every wait of the communicator may last (calls may pass their own)."""
        return self._timeout

    @property
    def hosts(self) -> tuple[tuple[int, ...], ...]:
        """The ranks of each host, hosts in order of their lowest rank."""
        return self._hosts

    @property
    def bootstrap(self) -> Bootstrap:
        """The bootstrap ring (tagged messages between ranks, allgather, barrier)."""
        return self._bootstrap

    @property
    def call_queue(self) -> CallQueue:
        """The ordered queue the communicator's collectives run on (``run``, ``submit``, ``drain``)."""
        return self._call_queue

    @property
    def flight(self) -> FlightRecorder | None:
        """The flight recorder (None when ``PYXCCL_TRACE_SIZE=0``)."""
        return self._flight

    @property
    def lost(self) -> dict[int, Any]:
        """The ranks found lost so far, with why."""
        return self._liveness.lost

    @property
    def aborted(self) -> bool:
        """True once ``abort()`` ran (or ``destroy()`` gave up waiting)."""
        return self._liveness.aborted

    @property
    def closed(self) -> bool:
        """True once ``destroy()`` was called."""
        return self._liveness.closed

    # ------------------------------------------------------------------ operations
    def submit(self, fn: Callable[[], Any], work: Work) -> Work:
        """Queue ``fn`` on the call queue, after every call issued before; ``work`` completes with it."""
        return self._call_queue.submit(fn, work)

    def launch_p2p(self, ops: list, works: list[Work]) -> None:
        """Start a batch of point-to-point ops (as ``send``/``recv`` record them inside ``group()``),
        progressing together; each op's Work completes with it."""
        self._launch_p2p(ops, works)

    def __repr__(self) -> str:
        return f"<CommContext rank {self._rank}/{self._size} tag {self._tag}>"
