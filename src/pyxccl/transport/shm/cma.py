"""Cross-memory attach: read (and write) another process's memory with ``process_vm_readv``/``writev`` (Linux >= 3.2).

The single-copy path of the shm transport uses it: a sender posts where its data lies
(address and length in its own memory) instead of copying it into a shared slot, and
the receiver copies it straight into its destination (Open MPI's smsc/cma does the
same). One call moves a whole list of (local address, remote address, length) pieces.

The kernel allows it where the reader may ptrace the target (same user without Yama
restrictions, or CAP_SYS_PTRACE); :func:`read` raises :class:`CMAError` (with the errno)
otherwise, and on a bad address, so a caller can fall back to copying through slots.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

#: pieces per system call (the kernel's UIO_MAXIOV is 1024)
IOV_MAX = 1024


class CMAError(OSError):
    """process_vm_readv failed (EPERM, ESRCH, EFAULT, ENOSYS, ...)."""


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _readv, _writev = _libc.process_vm_readv, _libc.process_vm_writev
    for _fn in (_readv, _writev):
        _fn.argtypes = [ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_ulong, ctypes.POINTER(_IOVec),
                        ctypes.c_ulong, ctypes.c_ulong]
        _fn.restype = ctypes.c_ssize_t
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _readv = _writev = None


def available() -> bool:
    """Whether this platform has process_vm_readv at all (not whether a given peer allows it)."""
    return _readv is not None


def read(pid: int, pieces: list[tuple[int, int, int]]) -> None:
    """Copy every (local address, remote address, length) piece from process ``pid`` into this one.

    Partial transfers (the kernel stops at the first remote piece it cannot read) are
    resumed where they stopped; a call that moves nothing raises :class:`CMAError`.
    """
    _transfer(_readv, "process_vm_readv", pid, pieces)


def write(pid: int, pieces: list[tuple[int, int, int]]) -> None:
    """Copy every (local address, remote address, length) piece from this process into process ``pid``
    (``process_vm_writev``; the same rules as :func:`read`)."""
    _transfer(_writev, "process_vm_writev", pid, pieces)


def _transfer(fn, name: str, pid: int, pieces: list[tuple[int, int, int]]) -> None:
    if fn is None:
        raise CMAError(_errno.ENOSYS, f"{name} is not available")
    todo = [p for p in pieces if p[2] > 0]
    while todo:
        batch, todo = todo[:IOV_MAX], todo[IOV_MAX:]
        while batch:
            k = len(batch)
            local, remote = (_IOVec * k)(), (_IOVec * k)()
            total = 0
            for i, (la, ra, n) in enumerate(batch):
                local[i].iov_base, local[i].iov_len = la, n
                remote[i].iov_base, remote[i].iov_len = ra, n
                total += n
            got = fn(pid, local, k, remote, k, 0)
            if got == total:
                break
            if got <= 0:
                err = ctypes.get_errno() if got < 0 else _errno.EFAULT
                raise CMAError(err, f"{name} with pid {pid}: {os.strerror(err)}")
            batch = _skip(batch, got)


def _skip(pieces: list[tuple[int, int, int]], nbytes: int) -> list[tuple[int, int, int]]:
    """``pieces`` without their first ``nbytes`` bytes."""
    for i, (la, ra, n) in enumerate(pieces):
        if nbytes < n:
            return [(la + nbytes, ra + nbytes, n - nbytes)] + pieces[i + 1:]
        nbytes -= n
    return []
