"""Point-to-point calls: tags, per-peer order, and progress of their own, beside the call queue.

``send(buf, peer, tag=...)`` and ``recv(buf, peer, tag=...)`` do not run on the
communicator's call queue: they start at once and progress on their own (MPI's rules,
not NCCL's). Messages from one sender to one receiver with the same tag match in the
order they were posted; different (peer, tag) pairs are independent, so a receive that
waits holds up neither sends nor receives with other peers or tags, nor later
collectives. Per peer and direction one :mod:`~pyxccl.runtime.host.p2p` lane carries the
messages over the p2p channel's connectors (made lazily: a receive sets up its side and
sends the connect info; a send waits for it without blocking the other lanes).

Progress: one thread at a time drives every lane (the *drive lock*): a thread waiting for
a blocking call (or ``Work.wait()``) drives inline; otherwise a background thread of the
communicator does, as long as any operation is pending, and steps aside while a caller
waits. Calls made inside ``group()`` are posted together when the group ends and
progress together; a send to this rank itself is matched (by tag, in order) only with a
receive from itself in the same batch. Every wait is bounded by the call's timeout (or
the communicator's), and a timeout names the peer and the tag. Completed calls' Works
are marked done by the driving thread; their callbacks run after it released the lanes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .. import log
from ..errors import (Aborted, CollectiveTimeout, InvalidArgument, PeerLostError, PyxcclError,
                      TransportError)
from ..reliability import flight
from . import group as _group
from .call_queue import Work
from .connections import Connections
from .context import CommContext
from .liveness import Liveness
from ..runtime.host.p2p import P2POp, RecvLane, SendLane

#: point-to-point traffic uses its own channel, after any collective's
P2P_CHANNEL = 1 << 10
TAG_MIN, TAG_MAX = -(1 << 63), (1 << 63) - 1
_CONNECT_POLL = 0.001  # seconds between looks for a peer's connect info while a send waits for it
_IDLE_WAIT = 0.05  # longest doorbell wait between checks for abort, lost peers and timeouts
_WAITER_SLICE = 0.002  # a waiter that cannot drive looks at the drive lock this often


def check_tag(tag: Any) -> int:
    """``tag`` as a message tag (an int in the signed 64-bit range), else InvalidArgument."""
    if isinstance(tag, bool) or not isinstance(tag, int) or not TAG_MIN <= tag <= TAG_MAX:
        raise InvalidArgument(f"tag={tag!r} must be an int in -2**63 .. 2**63-1")
    return tag


class P2PWork(Work):
    """The Work of a send or recv: waiting for it drives point-to-point progress on the waiting thread."""

    def __init__(self, what: str, p2p: P2P):
        super().__init__(what)
        self._p2p = p2p
        self._op: P2POp | None = None

    def cancel(self) -> None:
        """Withdraw this receive if no message has matched it yet: it then fails with Aborted ("was
        cancelled"), and the next message of its (peer, tag) goes to the next receive. A send, or a
        receive whose message is already arriving, completes as usual. Returns at once."""
        op = self._op
        if op is not None and op.kind == "recv" and not self._done:
            self._p2p.cancel(op)

    def _await(self, timeout: float | None) -> bool:
        if self._done:
            return True
        return self._p2p.await_work(self, timeout)

    def _wait_event(self, seconds: float) -> bool:
        return super()._await(seconds)

    def _complete(self, result: Any, exc: BaseException | None) -> None:
        self._set(result, exc)

    def _callbacks_after(self) -> None:
        self._run_callbacks()


class P2P:
    """The point-to-point calls of one communicator (see the module docstring)."""

    def __init__(self, ctx: CommContext, liveness: Liveness, connections: Connections, doorbell: Any,
                 slot_bytes: int):
        self.ctx, self.rank, self.timeout = ctx, ctx.rank, ctx.timeout
        self.liveness, self.connections, self.slot_bytes = liveness, connections, slot_bytes
        self.flight = ctx.flight
        self._doorbell = doorbell
        self._bell = doorbell.handle(0)  # wakes a driver that sleeps on the doorbell: new work
        self._cv = threading.Condition(threading.Lock())  # guards the fields up to _thread
        self._incoming: list[P2POp] = []
        self._cancels: list[P2POp] = []
        self._active = 0  # posted remote ops not finished
        self._inline = 0  # threads waiting for an op (the background driver steps aside)
        self._closed: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._drive_lock = threading.Lock()  # the lanes below belong to its holder
        self._sends: dict[int, SendLane] = {}
        self._recvs: dict[int, RecvLane] = {}
        self._last_poll = 0.0

    # ------------------------------------------------------------------ calls
    def call(self, kind: str, peer: int, tag: int, array: Any, result: Any, what: str, async_op: bool,
             timeout: float | None) -> Any:
        """One send or recv (checked by the Communicator); the flight record's call site is 3 frames up."""
        rec = self.flight.p2p(kind, peer, array, 3, tag) if self.flight is not None else None
        work = P2PWork(what, self)
        op = work._op = P2POp(kind, peer, tag, array, result, work, rec, what)
        if _group.active():  # a group's calls start together, under the communicator's timeout
            return _group.record(self.ctx, "p2p", op, work, not async_op)
        self.post([op], timeout, background=async_op)  # blocking: this thread drives it in result()
        return work if async_op else work.result()

    def launch(self, ops: list[P2POp], works: list[Work]) -> None:
        """Start a batch of ops recorded inside ``group()`` (``works`` are theirs); they progress together."""
        self.post(ops, None, background=True)

    def post(self, ops: list[P2POp], timeout: float | None, background: bool) -> None:
        """Start ``ops``; ``background``: someone may not wait for them, so a background thread drives."""
        seconds = timeout or self.timeout
        now = time.monotonic()
        for op in ops:
            op.timeout, op.deadline = seconds, now + seconds
            if op.rec is not None:
                op.rec.start()
        failed: list[P2POp] = []
        mine = [op for op in ops if op.peer == self.rank]
        if mine:
            self._match_self(mine, failed)
        remote = [op for op in ops if op.peer != self.rank]
        for op in remote:
            if op.kind == "recv":  # set up this side now and send the peer its connect info
                try:
                    self.connections.open_recv(op.peer, P2P_CHANNEL)
                except BaseException as exc:  # noqa: BLE001 - handed to the op's Work
                    op.error = self._lane_error(exc, op.what)
                    failed.append(op)
        remote = [op for op in remote if op.error is None]
        with self._cv:
            closed = self._closed
            if closed is None:
                self._incoming.extend(remote)
                self._active += len(remote)
                if background:
                    if self._thread is None:
                        self._thread = threading.Thread(target=self._loop, daemon=True,
                                                        name=f"pyxccl-p2p{self.ctx.tag[:6]}-r{self.rank}")
                        self._thread.start()
                    self._cv.notify()
        if closed is not None:
            for op in remote:
                op.error = closed
            failed += remote
        else:
            self._bell.ring()  # a driver asleep on the doorbell takes them now
        if failed:
            self._after(self._finalize(failed, count=False))

    def _match_self(self, ops: list[P2POp], failed: list[P2POp]) -> None:
        """Sends to and receives from this rank in one batch: matched by tag, in order, copied now."""
        by_tag: dict[int, tuple[list[P2POp], list[P2POp]]] = {}
        for op in ops:
            by_tag.setdefault(op.tag, ([], []))[op.kind == "recv"].append(op)
        for tag, (sends, recvs) in by_tag.items():
            if len(sends) != len(recvs):
                err = InvalidArgument(f"{len(sends)} send(s) to self but {len(recvs)} recv(s) from self with tag "
                                      f"{tag} in one batch: a message to this rank itself is matched only by a "
                                      f"recv from itself inside the same group()")
                for op in sends + recvs:
                    op.error = err
            for s, r in zip(sends, recvs) if len(sends) == len(recvs) else ():
                if s.data.size != r.data.size:
                    s.error = r.error = InvalidArgument(f"buf: send to self (tag {tag}) has {s.data.size} bytes, "
                                                        f"the recv from self {r.data.size}")
                else:
                    r.data[:] = s.data
            failed += sends + recvs  # done, with or without an error

    # ------------------------------------------------------------------ waiting and driving
    def await_work(self, work: P2PWork, timeout: float | None) -> bool:
        """Wait for ``work`` (at most ``timeout`` s), driving the lanes on this thread when nobody else does."""
        end = None if timeout is None else time.monotonic() + timeout
        cv, lock = self._cv, self._drive_lock
        with cv:
            self._inline += 1
        self._bell.ring()  # a background driver asleep on the doorbell steps aside now
        try:
            while not work.is_completed():
                if lock.acquire(blocking=False):
                    try:
                        done = self._drive(work, end)
                    finally:
                        lock.release()
                    self._after(done)
                else:
                    left = _WAITER_SLICE if end is None else min(_WAITER_SLICE, end - time.monotonic())
                    if left > 0:
                        work._wait_event(left)
                if end is not None and time.monotonic() >= end:
                    break
        finally:
            with cv:
                self._inline -= 1
                cv.notify()
        return work.is_completed()

    def _loop(self) -> None:
        """The background driver: drives while anything is pending and no caller waits to drive."""
        cv = self._cv
        while True:
            with cv:
                while self._closed is None and (self._inline or not (self._incoming or self._active)):
                    cv.wait(_IDLE_WAIT if self._inline else None)
                if self._closed is not None:
                    self._thread = None
                    return
            with self._drive_lock:
                done = self._drive(None, None)
            self._after(done)

    def _drive(self, until: P2PWork | None, end: float | None) -> list[P2POp]:
        """Advance every lane until an op finished, ``until`` is done (None: nothing is pending, or a caller
        wants to drive) or ``end`` (monotonic) passed; the ops finished (Works set, callbacks not run).

        An unexpected error fails every pending op (rather than leaving them to hang)."""
        try:
            return self._progress(until, end)
        except Exception as exc:  # noqa: BLE001
            log.warn("point-to-point progress failed: %s: %s", type(exc).__name__, exc, rank=self.rank)
            err = exc if isinstance(exc, PyxcclError) else TransportError(
                f"rank {self.rank}: point-to-point progress failed: {type(exc).__name__}: {exc}")
            finished: list[P2POp] = []
            self._fail_all(err, finished)
            return self._finalize(finished)

    def _progress(self, until: P2PWork | None, end: float | None) -> list[P2POp]:
        finished: list[P2POp] = []
        doorbell = self._doorbell
        while True:
            seen = doorbell.value()  # before looking for work: a ring after this wakes the wait below
            if self._incoming:
                self._take_incoming(finished)
            if self._cancels:
                self._take_cancels(finished)
            progressed = False
            for lane in list(self._sends.values()):
                if lane.queue and lane.conn is not None:
                    try:
                        progressed |= lane.advance(finished)
                    except Exception as exc:  # noqa: BLE001 - the lane's ops fail with it
                        self._break(lane, exc, finished)
            for rlane in list(self._recvs.values()):
                if rlane.cur is not None or rlane.nposted:
                    try:
                        progressed |= rlane.advance(finished)
                    except Exception as exc:  # noqa: BLE001
                        self._break(rlane, exc, finished)
            now = time.monotonic()
            connecting, attached = self._connect(now, finished)
            progressed |= attached
            closed = self._closed
            if closed is not None:
                self._fail_all(closed, finished)
            if finished:  # back to the caller, which runs their callbacks (they may post more)
                return self._finalize(finished)
            if until is not None:
                if until.is_completed():
                    return []
            elif not (self._active or self._incoming) or self._inline:
                return []
            if closed is not None or (end is not None and now >= end):
                return []
            if progressed:
                continue
            try:
                self.liveness.check_running("point-to-point calls")
            except (Aborted, PeerLostError) as exc:
                self._fail_all(exc, finished)
                continue
            wake = self._expire(now, finished)
            if finished:
                continue
            if connecting:
                wake = min(wake, now + _CONNECT_POLL)
            doorbell.wait(seen, min(wake, now + _IDLE_WAIT, end if end is not None else wake))

    def _take_incoming(self, finished: list[P2POp]) -> None:
        with self._cv:
            ops, self._incoming = self._incoming, []
        conns = self.connections.conns
        for op in ops:
            peer = op.peer
            if op.kind == "send":
                lane: Any = self._sends.get(peer)
                if lane is None:
                    lane = self._sends[peer] = SendLane(peer, self.slot_bytes)
                    lane.conn = conns.get((peer, P2P_CHANNEL, "send"))
                if lane.broken is not None:
                    op.error = lane.broken
                    finished.append(op)
                else:
                    lane.queue.append(op)
            else:
                lane = self._recvs.get(peer)
                if lane is None:
                    conn = conns.get((peer, P2P_CHANNEL, "recv"))
                    if conn is None:  # released meanwhile (abort, destroy)
                        op.error = self._closed or Aborted(f"rank {self.rank}: {op.what}: the communicator "
                                                           f"was released")
                        finished.append(op)
                        continue
                    lane = self._recvs[peer] = RecvLane(peer, conn)
                if lane.broken is not None:
                    op.error = lane.broken
                    finished.append(op)
                else:
                    lane.post(op, finished)

    def cancel(self, op: P2POp) -> None:
        """Ask the driver to withdraw receive ``op`` (see :meth:`P2PWork.cancel`)."""
        with self._cv:
            self._cancels.append(op)
        self._bell.ring()

    def _take_cancels(self, finished: list[P2POp]) -> None:
        with self._cv:
            ops, self._cancels = self._cancels, []
        for op in ops:
            lane = self._recvs.get(op.peer)
            if op.done or op.started or lane is None or not lane.withdraw(op):
                continue
            op.error = Aborted(f"rank {self.rank}: {op.what} with tag {op.tag} was cancelled")
            finished.append(op)

    def _connect(self, now: float, finished: list[P2POp]) -> tuple[bool, bool]:
        """Attach send lanes whose peer's connect info arrived: (some still wait for it, some attached now)."""
        waiting = [lane for lane in self._sends.values() if lane.conn is None and lane.queue]
        if not waiting or now - self._last_poll < _CONNECT_POLL:
            return bool(waiting), False
        self._last_poll = now
        still = attached = False
        for lane in waiting:
            try:
                lane.conn = self.connections.poll_send(lane.peer, P2P_CHANNEL)
            except Exception as exc:  # noqa: BLE001 - e.g. the peer is lost
                self._break(lane, exc, finished)
                continue
            still |= lane.conn is None
            attached |= lane.conn is not None
        return still, attached

    def _expire(self, now: float, finished: list[P2POp]) -> float:
        """Fail the ops whose deadline passed (their message names the peer and the tag); the next deadline."""
        nxt = float("inf")
        for lane in list(self._sends.values()):
            for i, op in enumerate(list(lane.queue)):
                if op.deadline > now:
                    nxt = min(nxt, op.deadline)
                    continue
                if i == 0 and op.started:  # part of it is on the wire: the connection cannot go on
                    op.error = CollectiveTimeout(
                        f"rank {self.rank}: {op.what} with tag {op.tag} timed out after {op.timeout:g} s: rank "
                        f"{op.peer} stopped taking it after {lane.off} of {op.data.size} bytes; sends to rank "
                        f"{op.peer} are unusable from now on")
                    self._break(lane, TransportError(
                        f"rank {self.rank}: sends to rank {op.peer} are unusable: an earlier send to it timed out "
                        f"midway"), finished, mapped=True)
                    break
                lane.queue.remove(op)
                why = (f"rank {op.peer} has not posted a receive from rank {self.rank} yet (its connect info "
                       f"never came)" if lane.conn is None else
                       f"rank {op.peer} did not take it (has it posted the matching recv with tag {op.tag}?)")
                op.error = CollectiveTimeout(f"rank {self.rank}: {op.what} with tag {op.tag} timed out after "
                                             f"{op.timeout:g} s: {why}")
                finished.append(op)
        for rlane in list(self._recvs.values()):
            for op in rlane.ops():
                if op.deadline > now:
                    nxt = min(nxt, op.deadline)
                    continue
                rlane.withdraw(op)
                why = (f"the message from rank {op.peer} stopped arriving" if op.started else
                       f"no message with tag {op.tag} came from rank {op.peer} (has it issued the matching send?)")
                op.error = CollectiveTimeout(f"rank {self.rank}: {op.what} with tag {op.tag} timed out after "
                                             f"{op.timeout:g} s: {why}")
                finished.append(op)
        return nxt

    def _lane_error(self, exc: BaseException, what: str) -> BaseException:
        """The error ops fail with after ``exc`` broke their lane (a lost peer named, Aborted after abort())."""
        live = self.liveness
        if isinstance(exc, PeerLostError):
            return live.lost_error(exc, what)
        if live.aborted and not isinstance(exc, Aborted):
            return Aborted(f"rank {self.rank}: {what} aborted ({exc})")
        if isinstance(exc, TransportError):
            err = live.wait_error(what)
            if err is not None:
                return err
        return exc

    def _break(self, lane: Any, exc: BaseException, finished: list[P2POp], mapped: bool = False) -> None:
        """``exc`` broke ``lane``: fail its ops (those without an error of their own) and every later one."""
        ops = list(lane.queue) if isinstance(lane, SendLane) else lane.ops()
        what = f"point-to-point with rank {lane.peer}"
        err = exc if mapped else self._lane_error(exc, what)
        if not isinstance(err, PyxcclError):
            err = TransportError(f"rank {self.rank}: {what}: {type(exc).__name__}: {exc}")
        lane.broken = err
        if isinstance(lane, SendLane):
            lane.queue.clear()
        else:
            for op in ops:
                lane.withdraw(op)
        for op in ops:
            if op.error is None:
                op.error = err
            finished.append(op)

    def _fail_all(self, exc: BaseException, finished: list[P2POp]) -> None:
        with self._cv:
            ops, self._incoming = self._incoming, []
        for op in ops:
            op.error = exc
            finished.append(op)
        for lane in list(self._sends.values()):
            for op in lane.queue:
                op.error = exc
                finished.append(op)
            lane.queue.clear()
        for rlane in list(self._recvs.values()):
            for op in rlane.ops():
                rlane.withdraw(op)
                op.error = exc
                finished.append(op)

    def _finalize(self, finished: list[P2POp], count: bool = True) -> list[P2POp]:
        """Mark ``finished`` ops done: flight records, Works set (waiters wake); callbacks come later."""
        done = []
        for op in finished:
            if op.done:
                continue
            op.done = True
            exc = op.error
            if exc is None:
                if op.rec is not None:
                    op.rec.done()
            else:
                flight.failed(self.ctx, op.rec, exc)
            op.work._complete(op.result if op.kind == "recv" and exc is None else None, exc)
            done.append(op)
        if count and done:
            with self._cv:
                self._active -= len(done)
                if not self._active:
                    self._cv.notify_all()
        return done

    @staticmethod
    def _after(done: list[P2POp]) -> None:
        """Run the completion callbacks of ``done`` (the drive lock released)."""
        for op in done:
            op.work._callbacks_after()

    # ------------------------------------------------------------------ life
    def drain(self, deadline: float) -> bool:
        """Wait until no op is pending (others drive them); False when ``deadline`` (monotonic) passed."""
        with self._cv:
            while self._active or self._incoming:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, _IDLE_WAIT))
        return True

    def close(self, exc: BaseException) -> None:
        """Fail every pending op with ``exc`` and stop the background driver. Idempotent."""
        with self._cv:
            if self._closed is not None:
                return
            self._closed = exc
            self._cv.notify_all()
            thread = self._thread
        self._bell.ring()
        if self._drive_lock.acquire(timeout=2.0):  # else the driver fails them at its next step
            try:
                finished: list[P2POp] = []
                self._fail_all(exc, finished)
                done = self._finalize(finished)
            finally:
                self._drive_lock.release()
            self._after(done)
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
