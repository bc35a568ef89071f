"""``Work``: the handle of an asynchronous call, and the communicator's :class:`CallQueue`.

A communicator's collectives (and the other calls that must run in issue order) go
through its call queue, an ordered queue of calls (not a CUDA stream): each runs
either inline on the caller's thread (a blocking call when nothing is queued: no
thread hand-off, which costs tens of µs on these VMs) or on the queue's worker
thread (``async_op=True``, or a blocking call behind queued work). ``Work.wait()`` on a
call still queued behind an idle queue runs the queue up to it on the waiting thread
(``async_op=True`` then ``wait()`` costs no thread hand-off either), and a call made
inside a call that the queue is running (on the same thread) runs inline, nested.

``Work.add_done_callback(fn)`` runs ``fn(work)`` once the call finished, on the thread
that finished it, after the queue has moved on: a callback may issue (and wait for)
further calls of the same communicator.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import log
from ..errors import Aborted, CollectiveTimeout

_CALLBACKS = threading.Lock()  # guards Work._callbacks (taken only by works that have callbacks)
_EVENTS = threading.Lock()  # makes a Work's event (taken only by a wait that has to sleep)


class Work:
    """The handle of one call: ``wait(timeout)``, ``is_completed()``, ``exception()``, ``result()``,
    ``add_done_callback(fn)``."""

    _callbacks: list[Callable[[Work], Any]] | None = None  # made by the first add_done_callback
    _queue: CallQueue | None = None  # set while queued: wait() may run the queue up to this call itself
    _via: Work | None = None  # the queued Work that runs this one (a BatchWork's), if not itself
    _event: threading.Event | None = None  # made by the first wait that has to sleep
    _device: Any = None  # a device call's (order the current stream, block the host) once enqueued

    def __init__(self, what: str):
        self.what = what
        self._done = False
        self._exc: BaseException | None = None
        self._result: Any = None

    @classmethod
    def completed(cls, what: str, result: Any = None) -> "Work":
        """A Work that is already done with ``result`` (a call that finished before it returned)."""
        work = cls(what)
        work._set(result)
        return work

    def _set(self, result: Any = None, exc: BaseException | None = None) -> None:
        """Mark the call finished (waiters wake); the callbacks run later, in :meth:`_run_callbacks`."""
        self._result, self._exc = result, exc
        self._done = True
        event = self._event  # read after _done is set: see _await
        if event is not None:
            event.set()

    def _finish(self, result: Any = None, exc: BaseException | None = None) -> None:
        self._set(result, exc)
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        """Run (once) the callbacks added so far; an error a callback raises is logged at WARN."""
        if self._callbacks is None:  # the common case, lock-free; read after _done was set
            return
        while True:
            with _CALLBACKS:
                cbs = self._callbacks
                if not cbs:
                    return
                self._callbacks = []
            for fn in cbs:
                try:
                    fn(self)
                except BaseException as exc:  # noqa: BLE001 - a callback must not break the queue
                    log.warn("a completion callback of %s (%r) raised %s: %s", self.what, fn,
                             type(exc).__name__, exc)

    def add_done_callback(self, fn: Callable[[Work], Any]) -> None:
        """Call ``fn(work)`` once, when the call has finished (successfully or not).

        At once, on this thread, if it already has; otherwise on the thread that finishes it
        (the queue's worker thread, or a thread that ran the call itself), after the queue has
        moved on, so that ``fn`` may issue further calls of the communicator and wait for them.
        The callbacks added before the call finished run in the order they were added. An
        exception ``fn`` raises is logged (``PYXCCL_DEBUG=WARN``) and otherwise ignored.
        """
        with _CALLBACKS:
            if self._callbacks is None:
                self._callbacks = [fn]
            else:
                self._callbacks.append(fn)
        # _finish sets _done, then reads _callbacks; this appends, then reads _done: one of the
        # two sees the other's write, and _run_callbacks hands each callback out once
        if self._done:
            self._run_callbacks()

    def _enqueued(self, queue: CallQueue) -> None:
        self._queue = queue

    def _await(self, timeout: float | None) -> bool:
        """Wait for completion without raising the call's error; False when ``timeout`` s passed."""
        if self._done:
            return True
        queue = self._queue
        if queue is not None and timeout is None:
            queue.help(self._via or self)
            if self._done:
                return True
        with _EVENTS:
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        # _set sets _done, then reads _event; this made _event, then reads _done: no lost wake-up
        return self._done or event.wait(timeout)

    def is_completed(self) -> bool:
        """True once the call finished, successfully or not."""
        return self._done

    def exception(self) -> BaseException | None:
        """The error the call failed with, or None (also None while it runs)."""
        return self._exc if self._done else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for completion; re-raise the call's error. CollectiveTimeout if ``timeout`` s pass first.

        Without a timeout, a call still queued behind an idle queue runs on this thread.
        """
        if not self._await(timeout):
            raise CollectiveTimeout(f"Work.wait: {self.what} did not complete within {timeout} s")
        if self._exc is not None:
            raise self._exc
        if self._device is not None:  # a device call: the caller's current stream waits for it (NCCL's wait)
            self._device[0]()
        return True

    def synchronize(self, timeout: float | None = None) -> bool:
        """:meth:`wait`, and for a call on a device also block the host until the device finished it
        (CollectiveTimeout if ``timeout`` s pass first)."""
        start = time.monotonic()
        self.wait(timeout)
        if self._device is not None:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            if not self._device[1](left):
                raise CollectiveTimeout(f"Work.synchronize: {self.what} did not finish on the device within "
                                        f"{timeout} s")
        return True

    def on_device(self, order: Callable[[], None], block: Callable[["float | None"], bool]) -> None:
        """Mark this Work as a device call's: ``order()`` makes the caller's current stream wait for it,
        ``block(timeout)`` blocks the host until the device finished it (False on timeout)."""
        self._device = (order, block)

    def result(self, timeout: float | None = None) -> Any:
        """Wait, then return what the blocking call would have returned (the output buffer)."""
        self.wait(timeout)
        return self._result

    def __repr__(self) -> str:
        state = "failed" if self._exc else "done" if self._done else "pending"
        return f"<Work {self.what} {state}>"


class BatchWork(Work):
    """The Work of a batch of calls run as one (grouped send/recv): finishing it finishes each call."""

    def __init__(self, what: str, works: list[Work], results: list[Any]):
        super().__init__(what)
        self._works, self._results = works, results

    def _set(self, result: Any = None, exc: BaseException | None = None) -> None:
        for work, res in zip(self._works, self._results):
            work._set(res, exc)
        super()._set(result, exc)

    def _run_callbacks(self) -> None:
        for work in self._works:
            work._run_callbacks()
        super()._run_callbacks()

    def _enqueued(self, queue: CallQueue) -> None:
        self._queue = queue
        for work in self._works:
            work._queue, work._via = queue, self


class CallQueue:
    """A communicator's ordered queue of calls, with a lazily started worker thread.

    One call runs at a time: on the worker thread, inline on a blocking caller's thread, or on a
    thread waiting for a queued call (:meth:`help`). A call's Work is marked finished before the
    queue moves on, and its callbacks run after that.
    """

    def __init__(self, name: str):
        self._name = name
        self._cv = threading.Condition(threading.Lock())  # guards everything below; drain() sleeps in it
        self._queue: deque[tuple[Callable[[], Any], Work]] = deque()
        self._running = False
        self._owner: int | None = None  # the thread running a call: its nested calls run inline
        self._thread: threading.Thread | None = None
        self._closed: BaseException | None = None
        self._draining = 0  # threads in drain()
        # The idle worker sleeps on a doorbell (a lock, released to ring it). A thread that takes
        # the last queued call itself (wait() right after an async call) takes the ring back; when
        # it is quick enough, the worker never wakes and never competes for the GIL.
        self._bell = threading.Lock()
        self._bell.acquire()
        self._idle = False  # the worker sleeps (or is about to) on the bell
        self._rung = False  # the bell was released and nobody took it yet

    def _ring(self) -> None:
        """Wake the idle worker (lock held)."""
        if self._idle and not self._rung:
            self._rung = True
            self._bell.release()

    def submit(self, fn: Callable[[], Any], work: Work) -> Work:
        """Queue ``fn``; ``work`` completes with its result or error."""
        with self._cv:
            closed = self._closed
            if closed is None:
                work._enqueued(self)
                self._queue.append((fn, work))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                    self._thread.start()
                elif not self._running:  # else whoever runs rings on release
                    self._ring()
        if closed is not None:
            work._finish(exc=closed)
        return work

    def run(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn`` after everything queued, blocking; inline when the queue is idle.

        Inline, nested, too, when this thread is running a call of the queue (a call made by
        a queued function).
        """
        me = threading.get_ident()
        if self._owner == me:  # only this thread sets _owner to its own id
            return fn()
        with self._cv:
            if self._closed is not None:
                raise self._closed
            inline = not self._queue and not self._running
            if inline:
                self._running, self._owner = True, me
        if not inline:
            return self.submit(fn, Work(what)).result()
        try:
            return fn()
        finally:
            self._release()

    def _release(self) -> None:
        with self._cv:
            self._running, self._owner = False, None
            if self._queue:
                self._ring()
            if self._draining:
                self._cv.notify_all()

    def _execute(self, fn: Callable[[], Any], work: Work) -> None:
        """Run one call (the queue is held), mark its Work finished, release, run its callbacks."""
        try:
            try:
                result, exc = fn(), None
            except BaseException as e:  # noqa: BLE001 - handed to the waiter
                result, exc = None, e
            work._set(result, exc)
        finally:
            self._release()
        work._run_callbacks()

    def _take(self, until: Work | None = None) -> tuple[Callable[[], Any], Work] | None:
        """The next queued call, the queue now held; None when busy (or ``until`` no longer queued)."""
        with self._cv:
            if self._running or not self._queue:
                return None
            if until is not None and not any(w is until for _, w in self._queue):
                return None
            self._running, self._owner = True, threading.get_ident()
            item = self._queue.popleft()
            if self._rung and not self._queue and self._bell.acquire(False):
                self._rung = False  # the worker has not woken yet: let it sleep on
            return item

    def help(self, work: Work) -> None:
        """Run the queue up to ``work`` on this thread while the queue is idle (else return)."""
        while not work._done:
            item = self._take(work)
            if item is None:
                return
            self._execute(*item)

    def _loop(self) -> None:
        cv, bell, me = self._cv, self._bell, threading.get_ident()
        while True:
            with cv:
                if self._queue and not self._running:
                    item = self._queue.popleft()
                    self._running, self._owner = True, me
                elif self._closed is not None and not self._queue:
                    self._thread = None
                    return
                else:
                    item = None
                    self._idle = True
            if item is not None:
                self._execute(*item)
                continue
            rang = bell.acquire(timeout=0.5)
            with cv:
                self._idle = False
                if rang:
                    self._rung = False

    def close(self, exc: BaseException | None = None, timeout: float = 5.0) -> None:
        """Stop accepting calls; fail what is still queued with ``exc`` (default Aborted)."""
        with self._cv:
            self._closed = exc or Aborted(f"{self._name}: the communicator was closed")
            pending = list(self._queue)
            self._queue.clear()
            self._ring()
            self._cv.notify_all()
            thread = self._thread
        for _, work in pending:
            work._finish(exc=self._closed)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def drain(self, deadline: float) -> bool:
        """Wait until nothing is queued or running; False when ``deadline`` (monotonic) passed."""
        with self._cv:
            self._draining += 1
            try:
                while self._queue or self._running:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cv.wait(min(left, 0.1))
            finally:
                self._draining -= 1
        return True
