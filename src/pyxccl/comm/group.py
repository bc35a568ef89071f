"""``with pyxccl.group():`` — NCCL's group semantics for batching calls.

Inside a group, calls are recorded instead of run; when the outermost group ends,
each communicator queues its recorded collectives in issue order on its call queue,
and starts its point-to-point calls (consecutive ones as one batch), which progress
all at once beside the queue (so every rank may send and receive inside one group
without deadlock; they do not wait for the group's collectives). Blocking calls
made inside the group are complete when the group ends; ``async_op=True`` calls
return a Work to wait on. A communicator is known here by its read-only
:class:`~pyxccl.comm.context.CommContext` (``submit``, ``launch_p2p``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .call_queue import Work

if TYPE_CHECKING:
    from .context import CommContext

_state = threading.local()


def active() -> bool:
    """True inside ``with group():`` on this thread."""
    return getattr(_state, "depth", 0) > 0


def record(ctx: CommContext, kind: str, payload: Any, work: Work, blocking: bool) -> Work:
    """Remember one call of the communicator ``ctx`` (kind "p2p": an op for ``ctx.launch_p2p``, or
    "call": a function for ``ctx.submit``) until the group ends."""
    _state.calls.append((ctx, kind, payload, work, blocking))
    return work


@contextmanager
def group() -> Iterator[None]:
    """Batch the calls made inside (NCCL's ncclGroupStart / ncclGroupEnd)."""
    depth = getattr(_state, "depth", 0)
    if depth == 0:
        _state.calls = []
    _state.depth = depth + 1
    try:
        yield
    except BaseException:
        if depth == 0:
            for _, _, _, work, _ in _state.calls:
                work._finish(exc=RuntimeError("the group was left by an exception; its calls did not run"))
            _state.calls = []
        raise
    finally:
        _state.depth = depth
    if depth == 0:
        calls, _state.calls = _state.calls, []
        _flush(calls)


def _flush(calls: list) -> None:
    comms: dict[int, CommContext] = {}
    for ctx, *_ in calls:
        comms.setdefault(id(ctx), ctx)
    blocking: list[Work] = []
    for ctx in comms.values():
        mine = [c for c in calls if c[0] is ctx]
        batch: list = []
        for item in mine + [None]:
            if item is not None and item[1] == "p2p":
                batch.append(item)
                continue
            if batch:
                ctx.launch_p2p([b[2] for b in batch], [b[3] for b in batch])
                blocking += [b[3] for b in batch if b[4]]
                batch = []
            if item is not None:
                fn: Callable[[], Any] = item[2]
                ctx.submit(fn, item[3])
                if item[4]:
                    blocking.append(item[3])
    for work in blocking:
        work.wait()
