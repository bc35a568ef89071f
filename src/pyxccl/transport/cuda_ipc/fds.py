"""File descriptors handed between the processes of one host over a Unix socket (``SCM_RIGHTS``).

The receiving side of a cuda_ipc connection exports its memory as a file descriptor (VMM's
POSIX handle); its :class:`FdServer` (one per transport: a listening socket in the abstract
namespace and a thread) hands a duplicate to whoever asks with the right token, and
:func:`fetch` asks. The token is random and known only through the bootstrap, so another
process of the host cannot fetch a communicator's memory by guessing.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading

from ...errors import TransportError


class FdServer:
    """Serves registered file descriptors by token on an abstract Unix socket."""

    def __init__(self, label: str):
        self.name = f"\0pyxccl-fd-{label}-{os.getpid()}-{secrets.token_hex(6)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.name)
        self._sock.listen(64)
        self._fds: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="pyxccl-fd-server", daemon=True)
        self._thread.start()

    def offer(self, fd: int) -> bytes:
        """Register ``fd`` (the caller keeps owning it); the token a peer fetches it with."""
        token = secrets.token_hex(16).encode()
        with self._lock:
            self._fds[token] = fd
        return token

    def withdraw(self, token: bytes) -> None:
        with self._lock:
            self._fds.pop(token, None)

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5.0)
                    token = conn.recv(64)
                    with self._lock:
                        fd = self._fds.get(token)
                    if fd is None:
                        conn.sendall(b"?")
                    else:
                        socket.send_fds(conn, [b"!"], [fd])
                except OSError:
                    continue

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            self._fds.clear()


def fetch(name: str, token: bytes, timeout: float = 10.0) -> int:
    """The file descriptor registered under ``token`` at the server ``name`` (a new fd of this process)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(name)
            s.sendall(token)
            msg, fds, _, _ = socket.recv_fds(s, 1, 1)
        except OSError as exc:
            raise TransportError(f"cuda_ipc: cannot fetch a peer's memory handle over its Unix socket: {exc}") from exc
    if msg != b"!" or not fds:
        for fd in fds:
            os.close(fd)
        raise TransportError("cuda_ipc: the peer does not know the memory handle asked for (stale connect info?)")
    return fds[0]
