"""A doorbell: a 32-bit word in (shared) memory that one executor sleeps on.

Every event that may let a blocked executor progress (a peer posted a slot, a peer
freed a slot, a socket delivered data) rings the executor's doorbell. The executor
reads the value, checks its work, and if nothing could run waits until the value
changes: it spins for ``spin_us`` (cheap when the peer answers quickly), then sleeps
on a Linux futex (no core burnt while an oversubscribed peer needs it).

Several writers may ring one doorbell without atomic instructions: each handle writes
values unique to itself (writer id in the low bits, its own counter above), so any
ring after the waiter read the value leaves a different value behind. A writer wakes
the futex only when the waiter has said it sleeps; the waiter's sleeps are bounded
(a few ms) so an unlucky interleaving costs latency, never a hang.

:class:`PeerDoorbells` keeps one transport's handles on the doorbells of its peers (shm and
local ring them when they post or release a slot).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import time
from typing import Sequence

from ..errors import TransportError

_WRITER_BITS = 10
#: writer id reserved for a transport's progress thread (peers ring with their rank + 1)
PROGRESS_WRITER = (1 << _WRITER_BITS) - 1
_SLEEP_SLICE = 0.002  # seconds; bound of one futex sleep
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "s390x": 238}.get(platform.machine())

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
except (OSError, AttributeError):  # pragma: no cover - non-Linux
    _syscall = None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_yield = os.sched_yield

SIZE = 64  # bytes one doorbell occupies: value word, sleeping flag, padding


class Doorbell:
    """A handle on a doorbell living at ``offset`` in ``mem`` (an mmap); ``writer`` is unique per handle."""

    def __init__(self, mem: mmap.mmap, offset: int = 0, *, writer: int = 0, spin_us: float = 100.0):
        self._mem = mem
        self._value = ctypes.c_uint32.from_buffer(mem, offset)
        self._sleeping = ctypes.c_uint32.from_buffer(mem, offset + 4)
        self._addr = ctypes.addressof(self._value)
        self._writer = writer % (1 << _WRITER_BITS)
        self._n = 0
        self._spin = spin_us * 1e-6

    @classmethod
    def anonymous(cls, *, spin_us: float = 100.0) -> "Doorbell":
        """A doorbell in private memory, for threads of one process."""
        return cls(mmap.mmap(-1, mmap.PAGESIZE), writer=0, spin_us=spin_us)

    def handle(self, writer: int) -> "Doorbell":
        """Another handle on the same doorbell for another writer (e.g. a progress thread)."""
        return Doorbell(self._mem, _base_offset(self), writer=writer, spin_us=self._spin * 1e6)

    def spare(self) -> memoryview:
        """The rest of the doorbell's page after its :data:`SIZE` bytes (shared files: where the
        owner publishes to the peers that attach it, :mod:`pyxccl.runtime.host.path_board`)."""
        return memoryview(self._mem)[_base_offset(self) + SIZE:]

    def value(self) -> int:
        """The current value; pass it to :meth:`wait` after checking for work."""
        return self._value.value

    def ring(self) -> None:
        """Signal the owner that something changed."""
        self._n = (self._n + 1) & ((1 << (32 - _WRITER_BITS)) - 1)
        self._value.value = (self._n << _WRITER_BITS) | self._writer
        if self._sleeping.value and _syscall is not None and _SYS_FUTEX is not None:
            _syscall(_SYS_FUTEX, ctypes.c_void_p(self._addr), _FUTEX_WAKE, 1 << 30, None, None, 0)

    def wait(self, seen: int, deadline: float) -> bool:
        """Wait until the value differs from ``seen``; False when ``deadline`` (monotonic) passed first."""
        value = self._value
        if value.value != seen:
            return True
        now = time.monotonic()
        spin_end = now + self._spin
        while now < spin_end:  # yield while spinning: an oversubscribed peer gets the core
            if value.value != seen:
                return True
            _yield()
            now = time.monotonic()
        while True:
            if value.value != seen:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            self._sleep(seen, min(_SLEEP_SLICE, deadline - now))

    def _sleep(self, seen: int, seconds: float) -> None:
        if _syscall is None or _SYS_FUTEX is None:  # pragma: no cover - non-Linux fallback
            time.sleep(min(seconds, 0.0002))
            return
        ts = _Timespec(int(seconds), int((seconds % 1) * 1e9))
        self._sleeping.value = 1
        try:
            if self._value.value == seen:
                _syscall(_SYS_FUTEX, ctypes.c_void_p(self._addr), _FUTEX_WAIT, ctypes.c_uint32(seen),
                         ctypes.byref(ts), None, 0)
        finally:
            self._sleeping.value = 0


def _base_address(mem: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(mem))


def _base_offset(bell: Doorbell) -> int:
    return bell._addr - _base_address(bell._mem)


def create_shared(path: str, *, spin_us: float = 100.0) -> Doorbell:
    """Create a doorbell in a new shared-memory file at ``path`` (owner's handle, writer 0)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, mmap.PAGESIZE)
        mem = mmap.mmap(fd, mmap.PAGESIZE)
    finally:
        os.close(fd)
    return Doorbell(mem, writer=0, spin_us=spin_us)


def attach_shared(path: str, writer: int) -> Doorbell:
    """Open another process's doorbell to ring it; ``writer`` must be unique among its writers (>0)."""
    fd = os.open(path, os.O_RDWR)
    try:
        mem = mmap.mmap(fd, mmap.PAGESIZE)
    finally:
        os.close(fd)
    return Doorbell(mem, writer=writer)


class PeerDoorbells:
    """Handles on the doorbells of a communicator's peers on this host, opened once each.

    ``paths[peer]`` names ``peer``'s doorbell (its PeerInfo); this rank rings with writer id
    ``rank + 1`` (folded below :data:`PROGRESS_WRITER`); ``what`` names the transport in errors.
    """

    def __init__(self, paths: Sequence[str], rank: int, what: str):
        self._paths, self._what = paths, what
        self._writer = rank % (PROGRESS_WRITER - 1) + 1
        self._bells: dict[int, Doorbell] = {}

    def get(self, peer: int) -> Doorbell:
        """A handle on ``peer``'s doorbell (TransportError when it cannot be opened)."""
        bell = self._bells.get(peer)
        if bell is None:
            path = self._paths[peer]
            try:
                bell = attach_shared(path, writer=self._writer)
            except OSError as exc:
                raise TransportError(f"{self._what}: cannot open rank {peer}'s doorbell {path}: {exc}") from exc
            self._bells[peer] = bell
        return bell

    def clear(self) -> None:
        """Forget every handle (their mappings go with the last reference)."""
        self._bells.clear()
