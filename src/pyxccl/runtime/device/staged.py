"""Element-wise collectives of device buffers over host memory, pipelined piece by piece.

Peers on other hosts are reached over sockets, so a device call goes through host memory. An
all-reduce, broadcast or reduce works element by element: piece ``k`` of the buffer is a call of
its own. :func:`run_pieces` copies every piece of the input to page-locked host memory on the
staging stream (after the caller's stream and the communicator's last call), and for each piece,
once its copy is done, runs the host collective on it (``run_host``: the socket transport's
slices on the wire) and queues its copy back to the device: piece ``k + 1`` comes off the device
while piece ``k`` is on the wire, and piece ``k`` goes back while ``k + 1`` is. The caller's
stream then waits for the last copy back; the host returns without waiting for it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...errors import CollectiveTimeout
from ...memory import DeviceArray
from . import end_call
from .resources import DeviceResources


def run_pieces(res: DeviceResources, caller_stream: int, inp: Any, out: Any, count: int, dtype: np.dtype,
               piece: int, run_host: Callable[[Any, Any, int, int], None], timeout: float) -> Any:
    """Run ``run_host(host_in, host_out, start, end)`` on every piece of ``piece`` elements (see the module
    docstring); ``inp``/``out``: DeviceArrays (staged) or host arrays (used as they are, e.g. a
    non-root's placeholder); the same DeviceArray twice: in place. The event that ends the call."""
    dev, isz = res.device, dtype.itemsize
    user = dev.external_stream(caller_stream)
    st = res.staging_stream()
    start_ev = res.event()
    dev.record(start_ev, user)
    dev.wait_event(st, start_ev)
    if res.last is not None:
        dev.wait_event(st, res.last)
    staged: dict[str, tuple[int, np.ndarray]] = {}  # "in"/"out" -> (pinned address, its elements)
    for name, arr in (("in", inp), ("out", out)):
        if isinstance(arr, DeviceArray):
            if name == "out" and isinstance(inp, DeviceArray) and inp.address == arr.address:
                staged["out"] = staged["in"]
                continue
            address = res.host_space(f"staged-{name}", count * isz)
            staged[name] = (address, np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * (count * isz))
                                                           .from_address(address)).view(dtype))
    pieces = [(a, min(count, a + piece)) for a in range(0, count, piece)]
    arrived = []
    for a, b in pieces:
        if "in" in staged:
            dev.copy(staged["in"][0] + a * isz, inp.address + a * isz, (b - a) * isz, st)
        ev = res.event()
        dev.record(ev, st)
        arrived.append(ev)
    try:
        for (a, b), ev in zip(pieces, arrived):
            if not dev.event_synchronize(ev, timeout):
                raise CollectiveTimeout(f"copying a device buffer to the host took over {timeout:.0f} s "
                                        f"(is the caller's stream blocked?)")
            run_host(staged["in"][1][a:b] if "in" in staged else inp[a:b],
                     staged["out"][1][a:b] if "out" in staged else out[a:b], a, b)
            if "out" in staged:
                dev.copy(out.address + a * isz, staged["out"][0] + a * isz, (b - a) * isz, st)
    finally:
        end = res.event()
        dev.record(end, st)
        dev.wait_event(user, end)
        done = [start_ev, end] + arrived + ([res.last] if res.last is not None else [])
    return end_call(res, user, done, caller_stream)
