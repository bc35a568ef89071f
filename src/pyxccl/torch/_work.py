"""``Work`` handles for torch.distributed and the ordered lane that runs a group's calls.

A :class:`Lane` runs the calls of one process group in issue order, like a CUDA
stream: a blocking call (torch's ``async_op=False``) runs inline on the caller's
thread when nothing is queued, so a synchronous ``dist.all_reduce`` costs no thread
hand-off; an asynchronous call (``async_op=True``, and every call DDP's C++ reducer
makes) is queued to the lane's worker thread so that it overlaps with the caller's
computation. The call's outputs are copied back (when a staging buffer was needed)
and its :class:`Work` and future completed on the thread that ran it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ._errors import PyxcclBackendError, wrap_error


def _seconds(timeout: Any) -> float | None:
    """torch passes ``timedelta(0)`` (kNoTimeout) for "wait forever"."""
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        s = timeout.total_seconds()
    else:
        s = float(timeout)
    return s if s > 0 else None


class Work(dist.Work):
    """A torch.distributed ``Work`` for one pyxccl call: ``wait``, ``is_completed``, ``get_future``.

    Cheap for the common blocking call, which completes before it is returned: the event
    that waiters sleep on and the future are made only when someone needs them.
    """

    _guard = threading.Lock()  # makes events/futures and completes works; held for microseconds

    def __init__(self, what: str, outputs: list[torch.Tensor] | None = None):
        super().__init__()
        self.what = what
        self._outputs = outputs if outputs is not None else []
        self._done = False
        self._event: threading.Event | None = None
        self._exc: BaseException | None = None
        self._future: torch.futures.Future | None = None
        self._source = -1
        self._lane: Lane | None = None  # set while queued on a lane: wait() may run it itself

    # ---------------------------------------------------------------- completion (lane side)
    def _finish(self, exc: BaseException | None = None) -> None:
        with Work._guard:
            self._exc = exc
            self._done = True
            event, fut = self._event, self._future
        if event is not None:
            event.set()
        if fut is not None:
            self._complete_future(fut)

    def _complete_future(self, fut: torch.futures.Future) -> None:
        if self._exc is not None:
            fut.set_exception(self._exc)
        else:
            fut.set_result(self._outputs)

    # ---------------------------------------------------------------- torch API
    def wait(self, timeout: Any = None) -> bool:
        """Block until the call completed; raise its error. ``timeout`` (timedelta or s): 0/None = forever."""
        lane = self._lane
        if lane is not None and not self._done:
            lane.help(self)  # still queued and the lane idle: run it here, no thread hand-off
        if not self._done:
            with Work._guard:
                if not self._done and self._event is None:
                    self._event = threading.Event()
                event = self._event
            if event is not None:
                secs = _seconds(timeout)
                if not event.wait(secs):
                    raise PyxcclBackendError(f"pyxccl backend: {self.what} did not complete within {secs} s "
                                             "(Work.wait)")
        if self._exc is not None:
            raise self._exc
        return True

    def is_completed(self) -> bool:
        return self._done

    def is_success(self) -> bool:
        return self._done and self._exc is None

    def exception(self) -> BaseException | None:
        return self._exc if self._done else None

    def get_future(self) -> torch.futures.Future:
        """A future completed with the call's output tensors (DDP communication hooks chain on it)."""
        with Work._guard:
            fut = self._future
            if fut is not None:
                return fut
            fut = self._future = torch.futures.Future()
            done = self._done
        if done:
            self._complete_future(fut)
        return fut

    def result(self) -> list[torch.Tensor]:
        self.wait()
        return self._outputs

    def synchronize(self) -> None:
        self.wait()

    def source_rank(self) -> int:
        """For a receive from any source: the group rank the message came from."""
        self.wait()
        return self._source

    def _source_rank(self) -> int:
        return self.source_rank()

    def __repr__(self) -> str:
        state = "failed" if self._exc else "done" if self._done else "pending"
        return f"<pyxccl.torch.Work {self.what} {state}>"


class GroupedWork(Work):
    """The Work of several calls (coalesced calls, ``_end_coalescing``): done when all are."""

    def __init__(self, what: str, works: list[Work]):
        outputs = [t for w in works for t in w._outputs]
        super().__init__(what, outputs)
        self._works = works
        if not works:
            self._finish()
            return
        self._left = len(works)
        self._count_lock = threading.Lock()
        for w in works:
            w.get_future().add_done_callback(self._one_done)

    def wait(self, timeout: Any = None) -> bool:
        for w in self._works:  # lets each run on this thread when its lane is idle
            if not w._done and w._lane is not None:
                w._lane.help(w)
        return super().wait(timeout)

    def _one_done(self, fut: torch.futures.Future) -> None:
        with self._count_lock:
            self._left -= 1
            last = self._left == 0
        if last:
            exc = next((w._exc for w in self._works if w._exc is not None), None)
            self._finish(exc)


class Lane:
    """The ordered queue of one process group's calls, with a lazily started worker thread.

    One call runs at a time (``_running``), on the worker thread, inline on a blocking
    caller's thread, or on a thread waiting for a queued call (:meth:`help`). A call's Work
    is completed after the lane is released, so that completion callbacks (futures' ``then``,
    DDP communication hooks) may issue and even wait for further calls of the same group.
    """

    def __init__(self, name: str):
        self._name = name
        self._cv = threading.Condition(threading.Lock())
        self._queue: deque[tuple[Callable[[], None], Work]] = deque()
        self._running = False
        self._thread: threading.Thread | None = None
        self._closed: BaseException | None = None
        self._sleepers = 0  # threads waiting on the condition (the worker, drain())

    def submit(self, fn: Callable[[], None], work: Work) -> Work:
        """Queue ``fn`` behind everything queued; ``work`` completes with it."""
        with self._cv:
            if self._closed is not None:
                closed = self._closed
            else:
                closed = None
                work._lane = self
                self._queue.append((fn, work))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                    self._thread.start()
                self._cv.notify_all()
        if closed is not None:
            work._finish(closed)
        return work

    def run(self, fn: Callable[[], None], what: str) -> None:
        """Run ``fn`` after everything queued and return when it is done; raise its error.

        Inline on this thread when the lane is idle (no Work, no thread hand-off): the path of
        every blocking torch.distributed call.
        """
        cv = self._cv
        with cv:
            if self._closed is not None:
                raise self._closed
            inline = not self._queue and not self._running
            if inline:
                self._running = True
        if not inline:
            work = Work(what)
            self.submit(fn, work)
            work.wait()
            return
        try:
            fn()
        except BaseException as exc:
            err = wrap_error(exc, what)
            if err is exc:
                raise
            raise err from exc
        finally:
            self._release()

    def _release(self) -> None:
        with self._cv:
            self._running = False
            if self._sleepers:
                self._cv.notify_all()

    def _execute(self, fn: Callable[[], None], work: Work) -> None:
        """Run one call (the lane is held), release the lane, then complete its Work."""
        work._lane = None
        exc = None
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiter
            exc = wrap_error(e, work.what)
        finally:
            self._release()
        work._finish(exc)

    def _take(self, until: Work | None = None) -> tuple[Callable[[], None], Work] | None:
        """The next queued call, the lane now held; None when busy (or ``until`` no longer queued)."""
        with self._cv:
            if self._running or not self._queue:
                return None
            if until is not None and not any(w is until for _, w in self._queue):
                return None
            self._running = True
            return self._queue.popleft()

    def help(self, work: Work) -> None:
        """Run the queue up to ``work`` on this thread while the lane is idle.

        ``dist.all_reduce(t, async_op=True).wait()`` then costs no thread hand-off, and a call
        made from a completion callback on the worker thread cannot wait for itself.
        """
        while not work._done:
            item = self._take(until=work)
            if item is None:
                return
            self._execute(*item)

    def _loop(self) -> None:
        cv = self._cv
        while True:
            with cv:
                while not self._queue or self._running:
                    if self._closed is not None and not self._queue:
                        self._thread = None
                        return
                    self._sleepers += 1
                    cv.wait(0.5)
                    self._sleepers -= 1
                fn, work = self._queue.popleft()
                self._running = True
            self._execute(fn, work)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running."""
        with self._cv:
            self._sleepers += 1
            try:
                return self._cv.wait_for(lambda: not self._queue and not self._running, timeout)
            finally:
                self._sleepers -= 1

    def close(self, exc: BaseException) -> None:
        """Refuse new calls; fail the queued ones with ``exc``."""
        with self._cv:
            self._closed = exc
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for _, work in pending:
            work._finish(exc)


def completed() -> Work:
    """The Work handed back for blocking calls, which have completed before they return."""
    return _DONE


_DONE = Work("a completed blocking call")
_DONE._done = True
