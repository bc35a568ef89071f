"""What a communicator keeps on its device between calls: streams, events, scratch space, and the
event that ends its last call.

Calls of one communicator run one after the other on the device, as NCCL's do on their
stream: every thread block's stream of a call first waits for the end of the previous call
(:attr:`DeviceResources.last`), so connector counters, slots and scratch space are never used by
two calls at once, whichever streams the callers pass.
"""

from __future__ import annotations

from typing import Any

from ... import log


class DeviceResources:
    """Streams (one per thread block index), a pool of events and named scratch spaces on ``device``."""

    def __init__(self, device: Any):
        self.device = device
        self.streams: list[Any] = []
        self._events: list[Any] = []
        self._spaces: dict[str, tuple[int, int]] = {}
        self.last: Any = None
        """the event recorded at the end of the last call (None before the first)"""
        self.last_stream: "int | None" = None
        """the caller's stream the last call ended on (a call on the same stream is ordered after it)"""
        self._graphs: dict[tuple, tuple[Any, Any]] = {}  # repeated calls captured: key -> (program, graph)
        self._seen: dict[tuple, Any] = {}  # calls run once: key -> program
        self._capture: Any = None
        self._staging: Any = None
        self._host_spaces: dict[str, tuple[int, int]] = {}
        self.direct_calls = 0
        """calls where this rank's sends went by single copy (the peers read its buffers)"""

    #: streams that still get a hardware queue of their own (CUDA_DEVICE_MAX_CONNECTIONS is at most
    #: 32; the caller's and the host's streams take some): past it, a stream waiting on a flag may
    #: hold up another thread block's work queued behind it
    MAX_OWN_QUEUES = 28

    def streams_for(self, n: int) -> list[Any]:
        """Streams for ``n`` thread blocks (made on first need, kept)."""
        if n > self.MAX_OWN_QUEUES and len(self.streams) <= self.MAX_OWN_QUEUES:
            log.warn("a device call has %d thread blocks: past %d, their streams share the GPU's hardware "
                     "queues and a waiting one can hold up another (use fewer channels)", n, self.MAX_OWN_QUEUES)
        while len(self.streams) < n:
            self.streams.append(self.device.stream())
        return self.streams[:n]

    def event(self) -> Any:
        """An event to record (back to the pool with :meth:`give_back` once the call is enqueued:
        a wait enqueued on an event keeps the state it had then, so re-recording it later is safe)."""
        return self._events.pop() if self._events else self.device.event()

    def give_back(self, events: list[Any]) -> None:
        self._events.extend(events)

    # ---- repeated calls as CUDA graphs (:func:`pyxccl.runtime.device.launch`)
    MAX_GRAPHS = 64

    def graph(self, key: tuple, program: Any) -> Any:
        hit = self._graphs.get(key)
        return hit[1] if hit is not None and hit[0] is program else None

    def seen(self, key: tuple, program: Any) -> bool:
        """Whether this call ran before (remembered now if not)."""
        if self._seen.get(key) is program:
            return True
        if len(self._seen) >= 4 * self.MAX_GRAPHS:
            self._seen.clear()
        self._seen[key] = program
        return False

    def keep_graph(self, key: tuple, program: Any, graph: Any) -> None:
        if len(self._graphs) >= self.MAX_GRAPHS:
            old = next(iter(self._graphs))
            self.device.destroy_graph(self._graphs.pop(old)[1])
        self._graphs[key] = (program, graph)

    def drop_graphs(self) -> None:
        """Forget every captured call (their addresses of scratch space are about to go)."""
        for _, graph in self._graphs.values():
            self.device.destroy_graph(graph)
        self._graphs.clear()
        self._seen.clear()

    def capture_stream(self) -> Any:
        if self._capture is None:
            self._capture = self.device.stream()
        return self._capture

    def space(self, name: str, nbytes: int) -> int:
        """The address of scratch space ``name`` of at least ``nbytes`` (grown when too small: the
        device drains first, since earlier calls may still use the old space)."""
        return self._grow(self._spaces, name, nbytes, self.device.alloc, self.device.free_plain)

    def host_space(self, name: str, nbytes: int) -> int:
        """The address of page-locked host memory ``name`` of at least ``nbytes`` (staging through the
        host; grown like :meth:`space`)."""
        return self._grow(self._host_spaces, name, nbytes, self.device.host_alloc, self.device.free_host)

    def _grow(self, table: dict, name: str, nbytes: int, alloc: Any, free: Any) -> int:
        have = table.get(name)
        if have is not None and have[1] >= nbytes:
            return have[0]
        if have is not None:
            self.device.synchronize()
            self.drop_graphs()  # captured calls hold the old address
            free(have[0])
        size = max(nbytes, 2 * have[1] if have else 0, 1 << 20)
        table[name] = (alloc(size), size)
        return table[name][0]

    def staging_stream(self) -> Any:
        """The stream of copies between device and host memory (staging)."""
        if self._staging is None:
            self._staging = self.device.stream()
        return self._staging

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
        self.drop_graphs()
        for address, _ in self._spaces.values():
            dev.free_plain(address)
        self._spaces.clear()
        for address, _ in self._host_spaces.values():
            dev.free_host(address)
        self._host_spaces.clear()
        for s in ([self._staging] if self._staging is not None else []) + ([self._capture] if self._capture is not None else []):
            dev.destroy_stream(s)
        self._staging = self._capture = None
        for s in self.streams:
            dev.destroy_stream(s)
        for e in self._events:
            dev.destroy_event(e)
        self.streams, self._events = [], []
        return True
