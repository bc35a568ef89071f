"""``Work`` handles for torch.distributed.

A group's calls run on its pyxccl communicator's call queue (an ordered queue of calls):
a blocking call (torch's ``async_op=False``) runs inline on the caller's thread when
nothing is queued, so a synchronous ``dist.all_reduce`` costs no thread hand-off; an
asynchronous call (``async_op=True``, and every call DDP's C++ reducer makes) is queued
to the queue's worker thread so that it overlaps with the caller's computation, and
``wait()`` on a call still queued behind an idle queue runs it on the waiting thread.
Its :class:`CallWork` follows pyxccl's ``Work`` of the call: the torch future is completed
from pyxccl's completion callback (after the call's outputs were copied back, which is
part of the queued call), on the thread that ran the call, after the queue moved on.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

import pyxccl

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

    # ---------------------------------------------------------------- completion
    def _finish(self, exc: BaseException | None = None) -> None:
        """Complete the Work (the first call counts): wake waiters, complete the future."""
        with Work._guard:
            if self._done:
                return
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


class CallWork(Work):
    """The Work of a call queued on the group communicator's call queue: it follows pyxccl's ``Work``.

    Nothing is added to pyxccl's Work unless someone asks for the future: ``wait`` and
    ``is_completed`` read pyxccl's Work (and mirror its outcome here), ``get_future`` registers a
    completion callback on it that completes the torch future.
    """

    def __init__(self, what: str, outputs: list[torch.Tensor], pw: pyxccl.Work):
        super().__init__(what, outputs)
        self._pw = pw

    def _sync(self, pw: pyxccl.Work | None = None) -> None:
        """pyxccl's Work finished: complete this one with its (torch-typed) outcome."""
        if not self._done:
            exc = self._pw.exception()
            self._finish(wrap_error(exc, self.what) if exc is not None else None)

    def wait(self, timeout: Any = None) -> bool:
        if not self._done:
            secs = _seconds(timeout)
            if not self._pw._await(secs):  # without a timeout, runs the call here if the queue is idle
                raise PyxcclBackendError(f"pyxccl backend: {self.what} did not complete within {secs} s "
                                         "(Work.wait)")
            self._sync()
        if self._exc is not None:
            raise self._exc
        return True

    def is_completed(self) -> bool:
        if not self._done and self._pw.is_completed():
            self._sync()
        return self._done

    def is_success(self) -> bool:
        return self.is_completed() and self._exc is None

    def exception(self) -> BaseException | None:
        return self._exc if self.is_completed() else None

    def get_future(self) -> torch.futures.Future:
        with Work._guard:
            fut = self._future
            if fut is not None:
                return fut
            fut = self._future = torch.futures.Future()
            done = self._done
        if done:
            self._complete_future(fut)
        else:
            self._pw.add_done_callback(self._sync)  # at once if pyxccl's Work already finished
        return fut


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
        if not self._done and _seconds(timeout) is None:
            for w in self._works:  # lets each run on this thread when the queue is idle
                if not w._done:
                    try:
                        w.wait()
                    except BaseException:  # noqa: BLE001, S110 - raised below, as the group's error
                        pass
        return super().wait(timeout)

    def _one_done(self, fut: torch.futures.Future) -> None:
        with self._count_lock:
            self._left -= 1
            last = self._left == 0
        if last:
            exc = next((w._exc for w in self._works if w._exc is not None), None)
            self._finish(exc)


def completed() -> Work:
    """The Work handed back for blocking calls, which have completed before they return."""
    return _DONE


_DONE = Work("a completed blocking call")
_DONE._done = True
