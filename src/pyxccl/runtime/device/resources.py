"""What a communicator keeps on its device between calls: streams, events, scratch space, and the
event that ends its last call.

Calls of one communicator run one after the other on the device, as NCCL's do on their
stream: every thread block's stream of a call first waits for the end of the previous call
(:attr:`DeviceResources.last`), so connector counters, slots and scratch space are never used by
two calls at once, whichever streams the callers pass.
"""

from __future__ import annotations

from typing import Any


class DeviceResources:
    """Streams (one per thread block index), a pool of events and named scratch spaces on ``device``."""

    def __init__(self, device: Any):
        self.device = device
        self.streams: list[Any] = []
        self._events: list[Any] = []
        self._spaces: dict[str, tuple[int, int]] = {}
        self.last: Any = None
        """the event recorded at the end of the last call (None before the first)"""

    def streams_for(self, n: int) -> list[Any]:
        """Streams for ``n`` thread blocks (made on first need, kept)."""
        while len(self.streams) < n:
            self.streams.append(self.device.stream())
        return self.streams[:n]

    def event(self) -> Any:
        """An event to record (back to the pool with :meth:`give_back` once the call is enqueued:
        a wait enqueued on an event keeps the state it had then, so re-recording it later is safe)."""
        return self._events.pop() if self._events else self.device.event()

    def give_back(self, events: list[Any]) -> None:
        self._events.extend(events)

    def space(self, name: str, nbytes: int) -> int:
        """The address of scratch space ``name`` of at least ``nbytes`` (grown when too small: the
        device drains first, since earlier calls may still use the old space)."""
        have = self._spaces.get(name)
        if have is not None and have[1] >= nbytes:
            return have[0]
        if have is not None:
            self.device.synchronize()
            self.device.free_plain(have[0])
        size = max(nbytes, 2 * have[1] if have else 0, 1 << 20)
        address = self.device.alloc(size)
        self._spaces[name] = (address, size)
        return address

    def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the last call finished on the device; False if it did not."""
        if self.last is None:
            return True
        return self.device.event_synchronize(self.last, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Drain and free everything; False (nothing freed) when the device did not finish in
        ``timeout`` s: a stream may still wait on a peer that is gone, and must not find its
        memory unmapped."""
        dev = self.device
        try:
            if not self.drain(timeout):
                return False
        except Exception:  # noqa: BLE001 - teardown: a failed stream still holds nothing of ours
            pass
        for address, _ in self._spaces.values():
            dev.free_plain(address)
        self._spaces.clear()
        for s in self.streams:
            dev.destroy_stream(s)
        for e in self._events:
            dev.destroy_event(e)
        self.streams, self._events = [], []
        return True
