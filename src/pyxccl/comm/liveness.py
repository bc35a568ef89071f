"""Whether a communicator may still run calls, and the errors that say why not.

A communicator stops taking calls when it was aborted (:class:`~pyxccl.errors.Aborted`),
destroyed (InvalidArgument: make a new one) or lost a rank (PeerLostError, from
:class:`~pyxccl.reliability.health.Health`); a call already running stops in its next
wait for the first and the last. The call engine, the point-to-point lanes and the
connection set-up ask this object; the Communicator's ``abort()`` and ``destroy()``
flip its flags.
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import Aborted, InvalidArgument, PeerLostError
from ..reliability.health import Health


class Liveness:
    """The aborted / destroyed flags and the peer health of one communicator (rank ``rank``)."""

    def __init__(self, rank: int):
        self.rank = rank
        self.aborted = False
        self.closed = False
        self.health: Health | None = None  # set once the peers are known
        self._lock = threading.Lock()

    def mark_aborted(self) -> bool:
        """Flag the communicator aborted; False when it already was."""
        with self._lock:
            if self.aborted:
                return False
            self.aborted = True
            return True

    def mark_closed(self) -> bool:
        """Flag the communicator destroyed; False when it already was (or was aborted)."""
        with self._lock:
            if self.closed or self.aborted:
                return False
            self.closed = True
            return True

    @property
    def lost(self) -> dict[int, Any]:
        """The ranks found lost so far, with why (empty before the peers are known)."""
        return dict(self.health.lost) if self.health is not None else {}

    def check_open(self) -> None:
        """Fail a new call now: the communicator was aborted, destroyed, or lost a rank."""
        if self.aborted:
            raise Aborted(f"rank {self.rank}: the communicator was aborted")
        if self.closed:
            raise InvalidArgument("the communicator was destroyed; create a new one")
        health = self.health
        if health is not None and health.lost:
            health.check("the communicator lost a rank; comm.shrink(exclude=[lost ranks]) builds "
                         "one from the survivors")

    def check_running(self, what: str) -> None:
        """Raised inside a running call's waits: Aborted after abort(), PeerLostError after a loss."""
        if self.aborted:
            raise Aborted(f"rank {self.rank}: {what} aborted")
        health = self.health
        if health is not None and health.lost:
            health.check(what)

    def lost_error(self, exc: PeerLostError, what: str) -> PeerLostError:
        """The error a call fails with after a transport or the bootstrap saw a peer go (others are told)."""
        health = self.health
        if health is None:
            return exc
        if exc.rank is not None:
            health.report(exc.rank, str(exc))
        return health.error(what) or exc

    def wait_error(self, what: str) -> PeerLostError | None:
        """After a transport error: the PeerLostError it stands for, once the health watch confirms a
        loss (waits briefly), else None (the error is the transport's own)."""
        return self.health.wait_error(what) if self.health is not None else None
