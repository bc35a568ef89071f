"""Device buffers staged through host memory: send and recv of CUDA buffers.

Point-to-point calls match messages by (peer, tag) on the host (:mod:`.p2p`), so a device
buffer's bytes go through host memory: a send first waits for the work queued on the caller's
stream (the data must be there), copies the buffer to the host and sends that; a receive
receives into host memory and copies it into the device buffer before it returns, so later
work on the caller's stream sees it. Both complete before they return (``async_op=True`` gets
a completed :class:`~.call_queue.Work`); overlapping them with the device is later work.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..memory import Buffer, caller_stream


def _device(b: Buffer) -> Any:
    from ..cuda import get_device
    return get_device(b.device)


def to_host(b: Buffer) -> np.ndarray:
    """A host copy of ``b``'s elements, once the caller's stream has finished writing them."""
    dev = _device(b)
    dev.synchronize(dev.external_stream(caller_stream(b.owner, b.device)))
    return np.frombuffer(dev.read(b.address, b.nbytes), dtype=b.dtype.np).copy()


def from_host(b: Buffer, host: np.ndarray) -> None:
    """Copy ``host`` into ``b``'s device memory (after the caller's stream's earlier work)."""
    dev = _device(b)
    dev.synchronize(dev.external_stream(caller_stream(b.owner, b.device)))
    dev.write(b.address, host.tobytes())


def send(b: Buffer, run: Callable[[np.ndarray], Any]) -> np.ndarray:
    """Stage ``b`` and hand the host copy to ``run`` (a blocking host send); the copy."""
    host = to_host(b)
    run(host)
    return host


def recv(b: Buffer, run: Callable[[np.ndarray], Any]) -> None:
    """``run`` (a blocking host receive) fills a host buffer, which then goes into ``b``."""
    host = np.empty(b.count, dtype=b.dtype.np)
    run(host)
    from_host(b, host)
