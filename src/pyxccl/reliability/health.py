"""Peer liveness: which ranks of a communicator are gone, learned as fast as the system allows.

A rank killed with SIGKILL cannot say goodbye, so the survivors find out by themselves:

- **same host**: each rank holds a pidfd of every same-host peer (same pid namespace) and a
  watcher thread polls them; a peer's exit makes the fd readable at once;
- **other hosts**: the kernel closes a killed process's sockets, so its bootstrap and
  socket-transport connections end with EOF (TCP keep-alive on the bootstrap
  connections covers a host that vanished without closing them);
- **everyone else**: the rank that noticed tells every other rank over the bootstrap
  (a ``lost`` notice), so a rank that had no connection to the lost one learns it too.

Any loss breaks the communicator (as an asynchronous error does in NCCL): every wait of
every call from then on, point-to-point calls between survivors included, raises
:class:`~pyxccl.errors.PeerLostError` naming the lost rank, its host and who saw it (a
survivor waiting on another survivor that already gave up would otherwise wait for the
timeout). ``Communicator.shrink(exclude=[...])`` builds a working communicator from the
survivors. A rank that aborts or exits without ``destroy()`` counts as lost for the others.
Once this rank starts a collective teardown (``destroy``), peers leaving is expected and
no longer reported.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import TYPE_CHECKING, Callable

from .. import log
from ..errors import PeerLostError
from ..transport import pid_alive

if TYPE_CHECKING:
    from ..transport.base import PeerInfo


#: seconds a loss seen by this rank waits for a notice of an earlier loss (see Health.report)
GRACE = 0.25


class Health:
    """One communicator's view of which peers are lost (first reason wins)."""

    def __init__(self, rank: int, peers: "list[PeerInfo]", watch: dict[int, int],
                 on_loss: Callable[[int, str], None], notify: Callable[[int, str], None]):
        """``watch``: rank -> pid of same-host peers to watch; ``on_loss(rank, why)`` runs (from
        any thread) when a loss is recorded, e.g. to ring the executor's doorbell; ``notify(rank,
        why)`` tells the other ranks."""
        self.rank = rank
        self.lost: dict[int, str] = {}
        self._peers = peers
        self._on_loss, self._notify = on_loss, notify
        self._lock = threading.Condition()
        self._stopped = False
        self._notices: list[threading.Thread] = []
        self._fds: dict[int, int] = {}
        self._watched = dict(watch)
        for peer, pid in watch.items():
            try:
                self._fds[os.pidfd_open(pid)] = peer
            except (OSError, AttributeError):  # gone already, or no pidfd on this kernel
                if not pid_alive(pid):
                    self.report(peer, f"its process (pid {pid}) is gone", notify=False)
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        if self._fds:
            self._thread = threading.Thread(target=self._watch, name=f"pyxccl-health-r{rank}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------ reporting
    def report(self, peer: int, why: str, *, seen_by: int | None = None, notify: bool = True) -> None:
        """Record that ``peer`` is lost because ``why``; tell the other ranks (once per peer).

        A loss this rank saw itself waits up to :data:`GRACE` seconds for a notice of an
        earlier loss first: a peer that failed because a third rank died exits too, and the
        survivors should name the rank that died first, not the one that left after it.
        """
        seen_by = self.rank if seen_by is None else seen_by
        with self._lock:
            if self._stopped or peer in self.lost or peer == self.rank:
                return
            if seen_by == self.rank and not self.lost:
                self._lock.wait_for(lambda: bool(self.lost) or self._stopped, GRACE)
                if self._stopped or peer in self.lost:
                    return
            self.lost[peer] = f"{why} (seen by rank {seen_by})"
            self._lock.notify_all()
        log.warn("rank %d (host %s) is lost: %s (seen by rank %d)", peer, self.host_of(peer), why, seen_by,
                 rank=self.rank)
        self._on_loss(peer, why)
        if notify:
            t = threading.Thread(target=self._notify, args=(peer, why), name="pyxccl-lost-notice", daemon=True)
            t.start()
            self._notices.append(t)

    def host_of(self, peer: int) -> str:
        """The hostname ``peer`` reported at init."""
        return self._peers[peer].hostname or self._peers[peer].host

    def error(self, what: str) -> PeerLostError | None:
        """The error a call (described by ``what``) fails with now, or None while every peer lives."""
        if not self.lost:
            return None
        peer = next(iter(self.lost))  # the first loss is the cause; later ones may be its effects
        others = sorted(set(self.lost) - {peer})
        more = f" (also lost: {', '.join(map(str, others))})" if others else ""
        return PeerLostError(f"rank {self.rank}: {what}: rank {peer} on host {self.host_of(peer)} "
                             f"(pid {self._peers[peer].pid}) is lost: {self.lost[peer]}{more}",
                             rank=peer, host=self.host_of(peer))

    def wait_error(self, what: str, seconds: float = 3 * GRACE) -> PeerLostError | None:
        """Like :meth:`error`, but first wait up to ``seconds`` for a loss to be reported.

        For failures that may be a peer's death seen from another angle (a transport error)."""
        with self._lock:
            self._lock.wait_for(lambda: bool(self.lost) or self._stopped, seconds)
        return self.error(what)

    def check(self, what: str) -> None:
        """Raise PeerLostError when a peer is known lost."""
        err = self.error(what)
        if err is not None:
            raise err

    def wait_exited(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until lost same-host peers are fully gone, so their files can go."""
        end = time.monotonic() + seconds
        pids = [self._watched[p] for p in self.lost if p in self._watched]
        while any(pid_alive(pid) for pid in pids) and time.monotonic() < end:
            time.sleep(0.01)

    # ------------------------------------------------------------ watching
    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in self._fds:
            poller.register(fd, select.POLLIN)
        while True:
            try:
                events = poller.poll()
            except OSError:
                return
            for fd, _ in events:
                if fd == self._wake_r:
                    return
                peer = self._fds.get(fd)
                poller.unregister(fd)
                if peer is not None:
                    self.report(peer, f"its process (pid {self._peers[peer].pid}) exited")

    def stop(self) -> None:
        """Stop reporting (a collective teardown began: peers leaving is expected). Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._lock.notify_all()
        os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        for t in self._notices:  # let the other ranks hear of a loss before this rank goes quiet
            t.join(5.0)
        for fd in list(self._fds) + [self._wake_r, self._wake_w]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

