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


# ---------------------------------------------------------------------- whole calls

ELEMENT_WISE = ("allreduce", "broadcast", "reduce")
"""collectives whose every piece of the buffer is a call of its own (staged piece by piece)"""


def pipelines(call: Any) -> bool:
    """Whether a device call may be staged piece by piece (:mod:`pyxccl.runtime.device.staged`): an
    element-wise collective whose input and output are the same buffer or do not overlap."""
    from ..memory import DeviceArray
    if call.collective not in ELEMENT_WISE or call.layout is not None:
        return False
    a, b = call.input, call.output
    if isinstance(a, DeviceArray) and isinstance(b, DeviceArray) and a.address != b.address:
        return a.address + a.nbytes <= b.address or b.address + b.nbytes <= a.address
    return True


class StagedCall:
    """A device call's arrays mirrored in host memory, for peers no device transport reaches (other
    hosts: the socket transport). Arrays that overlap (in-place calls) share one host copy, so the
    host path sees the same aliasing; :meth:`write_back` copies the results to the device."""

    def __init__(self, device_name: str, stream: int, arrays: list):
        from ..cuda import get_device
        from ..memory import DeviceArray
        self.dev = get_device(device_name)
        self.stream = stream
        self.dev.synchronize(self.dev.external_stream(stream))  # the inputs are written
        self.spans: list[tuple[int, int, np.ndarray, Any]] = []  # (start, end, host bytes, DeviceArray)
        for a in sorted((a for a in arrays if isinstance(a, DeviceArray)), key=lambda a: -a.nbytes):
            if self._find(a) is None:
                host = np.frombuffer(self.dev.read(a.address, a.nbytes), np.uint8).copy()
                self.spans.append((a.address, a.address + a.nbytes, host, a))

    def _find(self, a: Any) -> "np.ndarray | None":
        for start, end, host, _ in self.spans:
            if start <= a.address and a.address + a.nbytes <= end:
                off = a.address - start
                return host[off:off + a.nbytes].view(a.dtype)
        return None

    def host(self, a: Any) -> Any:
        """The host view standing for ``a`` (a DeviceArray of this call); anything else as it is."""
        from ..memory import DeviceArray
        if not isinstance(a, DeviceArray):
            return a
        view = self._find(a)
        assert view is not None, "every DeviceArray of the call was staged"
        return view

    def write_back(self) -> None:
        """Copy every staged span back to the device (ordered before the caller's later work: the
        copy is synchronous)."""
        for start, _, host, _ in self.spans:
            self.dev.write(start, host.tobytes())
