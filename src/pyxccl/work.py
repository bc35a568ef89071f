"""``Work``: the handle of an asynchronous call, and the communicator's ordered stream.

Calls on one communicator complete in issue order: they run on its :class:`Stream`,
either inline on the caller's thread (a blocking call when nothing is queued: no
thread hand-off, which costs tens of µs on these VMs) or on the stream's worker
thread (``async_op=True``, or a blocking call behind queued work).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

from .errors import Aborted, CollectiveTimeout


class Work:
    """The handle of one call: ``wait(timeout)``, ``is_completed()``, ``exception()``, ``result()``."""

    def __init__(self, what: str):
        self.what = what
        self._event = threading.Event()
        self._exc: BaseException | None = None
        self._result: Any = None

    def _finish(self, result: Any = None, exc: BaseException | None = None) -> None:
        self._result, self._exc = result, exc
        self._event.set()

    def is_completed(self) -> bool:
        """True once the call finished, successfully or not."""
        return self._event.is_set()

    def exception(self) -> BaseException | None:
        """The error the call failed with, or None (also None while it runs)."""
        return self._exc if self._event.is_set() else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for completion; re-raise the call's error. CollectiveTimeout if ``timeout`` s pass first."""
        if not self._event.wait(timeout):
            raise CollectiveTimeout(f"Work.wait: {self.what} did not complete within {timeout} s")
        if self._exc is not None:
            raise self._exc
        return True

    def result(self, timeout: float | None = None) -> Any:
        """Wait, then return what the blocking call would have returned (the output buffer)."""
        self.wait(timeout)
        return self._result

    def __repr__(self) -> str:
        state = "failed" if self._exc else "done" if self._event.is_set() else "pending"
        return f"<Work {self.what} {state}>"


class BatchWork(Work):
    """The Work of a batch of calls run as one (grouped send/recv): finishing it finishes each call."""

    def __init__(self, what: str, works: list[Work], results: list[Any]):
        super().__init__(what)
        self._works, self._results = works, results

    def _finish(self, result: Any = None, exc: BaseException | None = None) -> None:
        for work, res in zip(self._works, self._results):
            work._finish(res, exc)
        super()._finish(result, exc)


class Stream:
    """An ordered queue of calls for one communicator, with a lazily started worker thread."""

    def __init__(self, name: str):
        self._name = name
        self._cv = threading.Condition()
        self._queue: deque[tuple[Callable[[], Any], Work]] = deque()
        self._running = False
        self._thread: threading.Thread | None = None
        self._closed: BaseException | None = None

    def submit(self, fn: Callable[[], Any], work: Work) -> Work:
        """Queue ``fn``; ``work`` completes with its result or error."""
        with self._cv:
            if self._closed is not None:
                work._finish(exc=self._closed)
                return work
            self._queue.append((fn, work))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return work

    def run(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn`` after everything queued, blocking; inline when the stream is idle."""
        with self._cv:
            if self._closed is not None:
                raise self._closed
            inline = not self._queue and not self._running
            if inline:
                self._running = True
        if not inline:
            return self.submit(fn, Work(what)).result()
        try:
            return fn()
        finally:
            with self._cv:
                self._running = False
                self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue or self._running:
                    if self._closed is not None and not self._queue:
                        self._thread = None
                        return
                    self._cv.wait(0.5)
                fn, work = self._queue.popleft()
                self._running = True
            try:
                work._finish(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                work._finish(exc=exc)
            finally:
                with self._cv:
                    self._running = False
                    self._cv.notify_all()

    def close(self, exc: BaseException | None = None, timeout: float = 5.0) -> None:
        """Stop accepting calls; fail what is still queued with ``exc`` (default Aborted)."""
        with self._cv:
            self._closed = exc or Aborted(f"{self._name}: the communicator was closed")
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
            thread = self._thread
        for _, work in pending:
            work._finish(exc=self._closed)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def drain(self, deadline: float) -> bool:
        """Wait until nothing is queued or running; False when ``deadline`` (monotonic) passed."""
        with self._cv:
            while self._queue or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
        return True
