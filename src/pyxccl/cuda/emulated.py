"""An emulated device: host memory posing as device memory, each stream a thread.

It keeps the contract of :mod:`.device` so that the GPU path (the cuda_ipc transport, the device
executor, stream semantics) runs, and is tested, on machines without a GPU
(``PYXCCL_DEVICE_BACKEND=emulated``). What it emulates faithfully: stream order (each stream
runs its operations in order on its own thread, concurrently with the others and with the
host), events, ``wait_value``'s wrap-aware GEQ on a 32-bit word, memory shared between
processes by a file descriptor passed over a Unix socket (``memfd_create`` for ``cuMemCreate``),
sticky errors (a failed operation fails the stream; ``synchronize`` raises it). Kernels are
host functions (``run``) over numpy views (``view``). It is not fast, and is not meant to be.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from .device import SharedBlock
from .driver import CudaError

_PAGE = 4096
_GRAVEYARD: list = []  # freed shared mappings: a stream still polling one must not fault (bounded by tests)


class _Stream:
    """A queue of operations run in order by one thread; ``done`` counts those finished."""

    def __init__(self, name: str):
        self.name = name
        self.ops: "queue.SimpleQueue[Callable[[], None] | None]" = queue.SimpleQueue()
        self.enqueued = 0
        self.done = 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"emulated-{name}", daemon=True)
        self.thread.start()

    def put(self, op: Callable[[], None]) -> int:
        with self.cond:
            self.enqueued += 1
            n = self.enqueued
        self.ops.put(op)
        return n

    def _loop(self) -> None:
        while True:
            op = self.ops.get()
            if op is None:
                return
            if self.error is None:
                try:
                    op()
                except BaseException as exc:  # noqa: BLE001 - sticky, raised at synchronize
                    self.error = exc
            with self.cond:
                self.done += 1
                self.cond.notify_all()

    def wait_for(self, n: int, timeout: float | None = None) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.done >= n, timeout)


class _Event:
    __slots__ = ("stream", "seq")

    def __init__(self) -> None:
        self.stream: _Stream | None = None
        self.seq = 0


def _word(address: int) -> ctypes.c_uint32:
    return ctypes.c_uint32.from_address(address)


def _reached(address: int, value: int) -> bool:
    diff = (_word(address).value - value) & 0xFFFFFFFF
    return diff < 0x80000000  # (int32)(word - value) >= 0


class EmulatedDevice:
    """Device ``index`` emulated in host memory (see the module docstring)."""

    emulated = True
    arch = 0

    def __init__(self, index: int):
        self.index, self.name = index, f"cuda:{index}"
        self.uuid = f"emulated-{index}"
        self.sms = 1
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._plain: dict[int, tuple] = {}  # address -> (mapping, memfd, size, serial)
        self._opened: dict[bytes, int] = {}  # peers' allocations mapped here, by handle
        self._lock = threading.Lock()

    # ---- streams and events
    def stream(self) -> _Stream:
        return _Stream(f"{self.name}-{next(self._ids)}")

    def external_stream(self, handle: int) -> _Stream:
        with self._lock:
            s = self._streams.get(handle)
            if s is None:
                s = self._streams[handle] = _Stream(f"{self.name}-external-{handle}")
            return s

    def event(self) -> _Event:
        return _Event()

    def record(self, event: _Event, stream: _Stream) -> None:
        event.stream, event.seq = stream, stream.put(lambda: None)

    def wait_event(self, stream: _Stream, event: _Event) -> None:
        src, seq = event.stream, event.seq
        if src is None or src is stream:
            return
        stream.put(lambda: self._wait_stream(src, seq))

    def _wait_stream(self, src: _Stream, seq: int) -> None:
        while not src.wait_for(seq, 0.5):
            if src.closed:
                return

    def event_done(self, event: _Event) -> bool:
        return event.stream is None or event.stream.done >= event.seq

    def event_synchronize(self, event: _Event, timeout: float | None = None) -> bool:
        if event.stream is None:
            return True
        ok = event.stream.wait_for(event.seq, timeout)
        self._raise(event.stream)
        return ok

    def synchronize(self, stream: _Stream | None = None) -> None:
        streams = [stream] if stream is not None else list(self._streams.values())
        for s in streams:
            s.wait_for(s.enqueued)
            self._raise(s)

    def is_capturing(self, stream: _Stream) -> bool:
        return False  # the emulated device has no graphs

    @staticmethod
    def _raise(stream: _Stream) -> None:
        if stream.error is not None:
            raise CudaError(f"emulated {stream.name}: an operation failed: {stream.error!r}") from stream.error

    def destroy_stream(self, stream: _Stream) -> None:
        stream.closed = True
        stream.ops.put(None)

    def destroy_event(self, event: _Event) -> None:
        pass

    # ---- stream-ordered operations
    def copy(self, dst: int, src: int, nbytes: int, stream: _Stream) -> None:
        if nbytes:
            stream.put(lambda: ctypes.memmove(dst, src, nbytes))

    def write_value(self, address: int, value: int, stream: _Stream) -> None:
        v = value & 0xFFFFFFFF
        stream.put(lambda: setattr(_word(address), "value", v))

    def wait_value(self, address: int, value: int, stream: _Stream) -> None:
        v = value & 0xFFFFFFFF

        def wait() -> None:
            pause = 0.0
            while not _reached(address, v):
                if stream.closed:
                    return
                time.sleep(pause)
                pause = min(pause + 2e-5, 1e-3)
        stream.put(wait)

    def memset(self, address: int, nbytes: int, stream: _Stream) -> None:
        if nbytes:
            stream.put(lambda: ctypes.memset(address, 0, nbytes))

    # ---- the host's view
    def host_write_value(self, address: int, value: int) -> None:
        _word(address).value = value & 0xFFFFFFFF

    def read(self, address: int, nbytes: int) -> bytes:
        return ctypes.string_at(address, nbytes)

    def write(self, address: int, data: bytes) -> None:
        ctypes.memmove(address, bytes(data), len(data))

    # ---- memory
    def alloc(self, nbytes: int) -> int:
        size = -(-max(nbytes, 1) // _PAGE) * _PAGE
        fd = os.memfd_create("pyxccl-emulated-plain", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        mem = mmap.mmap(fd, size)
        address = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        with self._lock:
            self._plain[address] = (mem, fd, size, next(self._ids))
        return address

    def free_plain(self, address: int) -> None:
        with self._lock:
            entry = self._plain.pop(address, None)
        if entry is not None:
            os.close(entry[1])  # the mapping goes with its last view

    def host_alloc(self, nbytes: int) -> int:
        return self.alloc(nbytes)  # host memory is all the emulated device has

    def free_host(self, address: int) -> None:
        self.free_plain(address)

    def export_ipc(self, address: int) -> "tuple[bytes, int] | None":
        """(pid and fd of the memfd holding ``address``, offset): a peer opens /proc/<pid>/fd/<fd>."""
        with self._lock:
            for base, (_, fd, size, serial) in self._plain.items():
                if base <= address < base + size:  # the serial: an fd number is reused, a handle never
                    return f"{os.getpid()}:{fd}:{size}:{serial}".encode(), address - base
        return None

    def open_ipc(self, handle: bytes) -> int:
        with self._lock:
            opened = self._opened.get(handle)
        if opened is not None:
            return opened
        pid, fd, size, _ = (int(v) for v in handle.decode().split(":"))
        if pid == os.getpid():
            with self._lock:
                for base, (_, own, _, _) in self._plain.items():
                    if own == fd:
                        return base
        local = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
        try:
            mem = mmap.mmap(local, size)
        finally:
            os.close(local)
        base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        with self._lock:
            self._opened[handle] = base
            _GRAVEYARD.append(mem)
        return base

    def alloc_shared(self, nbytes: int) -> SharedBlock:
        size = -(-max(nbytes, 1) // _PAGE) * _PAGE
        fd = os.memfd_create("pyxccl-emulated", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        mem = mmap.mmap(fd, size)
        return SharedBlock(ctypes.addressof(ctypes.c_char.from_buffer(mem)), size, fd, mem)

    def import_shared(self, fd: int, nbytes: int) -> SharedBlock:
        try:
            mem = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        return SharedBlock(ctypes.addressof(ctypes.c_char.from_buffer(mem)), nbytes, -1, mem, imported=True)

    def free(self, block: SharedBlock) -> None:
        if block.fd >= 0:
            os.close(block.fd)
            block.fd = -1
        _GRAVEYARD.append(block.handle)
        block.handle = None

    # ---- kernels
    def load_module(self, image: bytes) -> Any:
        raise CudaError("the emulated device runs host functions, not compiled modules")

    def function(self, module: Any, name: str) -> Any:
        raise CudaError("the emulated device runs host functions, not compiled modules")

    def launch(self, func: Any, grid: int, block: int, args: tuple, types: tuple, stream: Any) -> None:
        raise CudaError("the emulated device runs host functions, not compiled modules")

    def run(self, stream: _Stream, fn: Callable[[], None]) -> None:
        stream.put(fn)

    def view(self, address: int, nbytes: int) -> np.ndarray:
        if nbytes == 0:
            return np.empty(0, np.uint8)
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address))
