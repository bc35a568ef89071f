"""The contract of a device: what the GPU path asks of ``cuda:N``, whoever serves it.

Two implementations keep it: :mod:`.driver` (a real GPU through NVIDIA's cuda-python) and
:mod:`.emulated` (host memory posing as device memory, streams as threads: the GPU path's
lowering runs, and is tested, on machines without a GPU; ``PYXCCL_DEVICE_BACKEND=emulated``).
Everything above this layer (the cuda_ipc transport, the device executor, the kernels) speaks
only this contract, so both run the same code.

Addresses are ints (device pointers); streams and events are opaque handles the device made
(``stream()``, ``event()``, or ``external_stream(int)`` for a caller's stream). Every enqueued
operation runs in stream order; ``wait_value`` waits until the 32-bit word at ``address`` is
at or past ``value`` (wrap-aware: ``(int32)(word - value) >= 0``), as ``cuStreamWaitValue32``
with ``CU_STREAM_WAIT_VALUE_GEQ`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol


@dataclass
class SharedBlock:
    """Device memory another process of this host may map: ``nbytes`` at ``address``, exported as
    the POSIX file descriptor ``fd`` (owned by the block until :meth:`Device.free`; -1 once
    closed or for an imported block), ``handle`` the device's own."""

    address: int
    nbytes: int
    fd: int
    handle: Any
    imported: bool = False


class Device(Protocol):
    """One device (``name`` = "cuda:N") as the GPU path uses it."""

    name: str
    index: int
    arch: int
    """compute capability as major*10+minor (90 for an H100/H200); 0 when emulated"""
    emulated: bool

    # ---- streams and events
    def stream(self) -> Any: ...
    def external_stream(self, handle: int) -> Any:
        """A caller's stream (a ``cudaStream_t`` as an int; 0: the legacy default stream)."""
    def event(self) -> Any: ...
    def record(self, event: Any, stream: Any) -> None: ...
    def wait_event(self, stream: Any, event: Any) -> None: ...
    def event_done(self, event: Any) -> bool: ...
    def event_synchronize(self, event: Any, timeout: float | None = None) -> bool:
        """Block the host until ``event`` completed; False when ``timeout`` seconds passed first."""
    def synchronize(self, stream: Any = None) -> None:
        """Block the host until ``stream`` (None: the whole device) drained."""
    def is_capturing(self, stream: Any) -> bool:
        """Whether ``stream`` is being captured into a CUDA graph (its work is recorded, not run)."""
    def begin_capture(self, stream: Any) -> None:
        """Real GPUs only: capture ``stream``'s work (and the streams that join it) into a graph."""
    def end_capture(self, stream: Any) -> Any:
        """The captured work as an executable graph."""
    def launch_graph(self, graph: Any, stream: Any) -> None: ...
    def destroy_graph(self, graph: Any) -> None: ...

    # ---- stream-ordered operations
    def copy(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        """Copy by the copy engines (device to device, also into a peer's mapped memory)."""
    def write_value(self, address: int, value: int, stream: Any) -> None:
        """Store the 32-bit ``value`` at ``address`` once the stream's earlier work is done."""
    def wait_value(self, address: int, value: int, stream: Any) -> None:
        """The stream's later work waits until the word at ``address`` reaches ``value`` (GEQ)."""
    def memset(self, address: int, nbytes: int, stream: Any) -> None:
        """Zero ``nbytes`` at ``address``."""

    # ---- the host's view (set-up, tests, releasing abandoned waits)
    def host_write_value(self, address: int, value: int) -> None:
        """Store the 32-bit ``value`` at ``address`` now, from the host."""
    def read(self, address: int, nbytes: int) -> bytes:
        """Copy ``nbytes`` at ``address`` to the host (synchronous)."""
    def write(self, address: int, data: bytes) -> None:
        """Copy ``data`` from the host to ``address`` (synchronous)."""

    # ---- memory
    def alloc(self, nbytes: int) -> int:
        """Plain device memory (not shareable); free with :meth:`free_plain`."""
    def free_plain(self, address: int) -> None: ...
    def host_alloc(self, nbytes: int) -> int:
        """Page-locked host memory the device copies to and from asynchronously (``cuMemHostAlloc``);
        free with :meth:`free_host`."""
    def free_host(self, address: int) -> None: ...
    def alloc_shared(self, nbytes: int) -> SharedBlock:
        """Shareable memory (VMM ``cuMemCreate`` with a POSIX fd), mapped here, zeroed."""
    def import_shared(self, fd: int, nbytes: int) -> SharedBlock:
        """Map another process's block from its fd (the fd is consumed)."""
    def free(self, block: SharedBlock) -> None: ...
    def export_ipc(self, address: int) -> "tuple[bytes, int] | None":
        """A handle another process of this host may open to reach the allocation holding ``address``,
        and ``address``'s offset in it; None when that memory cannot be shared this way."""
    def open_ipc(self, handle: bytes) -> int:
        """The base address in this process of a peer's allocation (opened once, then remembered)."""

    # ---- kernels
    def load_module(self, image: bytes) -> Any:
        """Load a compiled module (cubin); the emulated device has none."""
    def function(self, module: Any, name: str) -> Any: ...
    def launch(self, func: Any, grid: int, block: int, args: tuple, types: tuple, stream: Any) -> None:
        """Launch ``func`` on ``grid`` x ``block`` threads with ``args`` of ctypes ``types``."""
    def run(self, stream: Any, fn: Callable[[], None]) -> None:
        """Emulated only: run the host function ``fn`` in stream order (its "kernel")."""
    def view(self, address: int, nbytes: int) -> Any:
        """Emulated only: a writable uint8 numpy view of ``nbytes`` at ``address``."""
