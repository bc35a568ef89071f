"""Network plumbing of the bootstrap: interfaces, address packing, sockets, deadlines, auth.

* :func:`list_interfaces` / :func:`select_address`: the IPv4 interfaces of *this* network
  namespace (``socket.if_nameindex`` + ``ioctl``) and NCCL's ``NCCL_SOCKET_IFNAME`` syntax.
* :func:`pack_addr` / :func:`unpack_addr`: a compact binary ``(host, port)`` (IPv4, IPv6
  or a host name), used by the unique id and the rendezvous.
* :class:`Deadline`, :func:`connect`, :func:`listen`, :func:`recv_exact`: sockets whose every
  blocking step is bounded; a passed deadline raises ``CollectiveTimeout`` naming the wait.
* :func:`auth_accept` / :func:`auth_connect`: an HMAC-SHA256 challenge-response proving
  knowledge of the unique id's secret without sending it.
* :class:`Listener`: an accept thread plus one thread per connection, closed and joined as one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import config
from ..errors import CollectiveTimeout, ConfigError, PeerLostError, TransportError

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8

_CHALLENGE_MAGIC = b"PXCH"
_NONCE_BYTES = 16
MAC_BYTES = 32
MAX_NAME = 250  # host name bytes in a packed address; the whole address then fits in 255


@dataclass(frozen=True)
class Interface:
    """One network interface with an IPv4 address."""

    name: str
    address: str
    up: bool
    loopback: bool


def list_interfaces() -> list[Interface]:
    """The interfaces of this network namespace that have an IPv4 address, in index order."""
    out: list[Interface] = []
    names = [name for _, name in socket.if_nameindex()]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            req = struct.pack("256s", name.encode()[:15])
            try:
                addr = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:
                continue  # no IPv4 address on this interface
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req), 16)[0]
            except OSError:
                flags = _IFF_UP
            out.append(Interface(name, socket.inet_ntoa(addr[20:24]),
                                 bool(flags & _IFF_UP), bool(flags & _IFF_LOOPBACK)))
    return out


def select_address(spec: str = "", interfaces: list[Interface] | None = None) -> str:
    """The IPv4 address to listen on and advertise, chosen by an NCCL_SOCKET_IFNAME-style spec.

    ``spec`` is a comma list of interface-name prefixes (``eth,ib``); a leading ``^`` excludes
    them instead (``^docker,lo``); a ``=`` (after any ``^``) asks for exact names (``=eth0``).
    The empty spec prefers the first non-loopback, non-docker interface that is up, else the
    loopback address. A spec that matches nothing raises ConfigError.
    """
    ifs = [i for i in (list_interfaces() if interfaces is None else interfaces) if i.up]
    spec = spec.strip()
    if not spec:
        for i in ifs:
            if not i.loopback and not i.name.startswith("docker"):
                return i.address
        for i in ifs:
            if i.loopback:
                return i.address
        return "127.0.0.1"
    body = spec
    exclude = body.startswith("^")
    body = body[1:] if exclude else body
    exact = body.startswith("=")
    body = body[1:] if exact else body
    prefixes = [p.strip() for p in body.split(",") if p.strip()]
    for i in ifs:
        if any(i.name == p if exact else i.name.startswith(p) for p in prefixes) != exclude:
            return i.address
    have = ", ".join(f"{i.name}={i.address}" for i in ifs) or "none"
    raise ConfigError(f"PYXCCL_SOCKET_IFNAME={spec!r} matches no interface that is up with an "
                      f"IPv4 address (have: {have}); set it to one of those names")


def route_address(target: str) -> str:
    """This host's address on the route to ``target`` (no packet is sent: a UDP connect picks it).

    A rank that reaches the root over loopback advertises loopback; a rank in a network
    namespace advertises that namespace's address towards the root.
    """
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


# ---------------------------------------------------------------- addresses

def pack_addr(host: str, port: int) -> bytes:
    """``(host, port)`` as bytes: family (4, 6 or 0 for a name), address, big-endian port."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range 0..65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("utf-8")
        if not 0 < len(name) <= MAX_NAME:
            raise ValueError(f"host name {host[:64]!r} must be 1..{MAX_NAME} bytes") from None
        return bytes([0, len(name)]) + name + struct.pack("!H", port)
    return bytes([ip.version]) + ip.packed + struct.pack("!H", port)


def unpack_addr(buf: bytes, offset: int = 0) -> tuple[str, int, int]:
    """Inverse of :func:`pack_addr`: ``(host, port, next offset)``; malformed: ValueError."""
    if offset >= len(buf):
        raise ValueError("address truncated: no family byte")
    fam = buf[offset]
    pos = offset + 1
    if fam == 4:
        n = 4
    elif fam == 6:
        n = 16
    elif fam == 0:
        if pos >= len(buf):
            raise ValueError("address truncated: no name length")
        n = buf[pos]
        pos += 1
        if n == 0:
            raise ValueError("empty host name")
    else:
        raise ValueError(f"unknown address family byte {fam}")
    if pos + n + 2 > len(buf):
        raise ValueError("address truncated")
    raw = bytes(buf[pos:pos + n])
    if fam == 0:
        try:
            host = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("host name is not UTF-8") from None
        if not host.isprintable():
            raise ValueError("host name has unprintable characters")
    else:
        host = str(ipaddress.ip_address(raw))
    (port,) = struct.unpack_from("!H", buf, pos + n)
    return host, port, pos + n + 2


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into ``(host, port)``; malformed raises ValueError."""
    host, sep, port_s = text.strip().rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"port {port} out of range 1..65535")
    return host, port


def fmt_addr(host: str, port: int) -> str:
    """``host:port`` (``[v6]:port`` for IPv6) for messages."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- sockets

class Deadline:
    """A point in monotonic time; :meth:`remaining` is what is left of it (never negative)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, >= 0."""
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.end


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY (small control messages: latency over bandwidth)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def listen(host: str, port: int = 0, backlog: int = 128,
           prepare: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """A listening TCP socket bound to ``host:port``.

    Port 0 takes an ephemeral port, or the first free port of PYXCCL_PORT_RANGE when it is
    set (every listening socket pyxccl picks the port of goes through here). ``prepare``
    runs on the socket before it is bound (buffer sizes that accepted sockets inherit).
    """
    if port == 0 and config.get().port_range is not None:
        return _listen_in_range(host, backlog, prepare, config.get().port_range)
    try:
        return _bind_listen(host, port, backlog, prepare)
    except OSError as exc:
        raise TransportError(f"cannot listen on {fmt_addr(host, port)}: {exc}") from None


def _bind_listen(host: str, port: int, backlog: int,
                 prepare: Callable[[socket.socket], None] | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if prepare is not None:
            prepare(s)
        s.bind((host, port))
        s.listen(backlog)
    except BaseException:
        s.close()
        raise
    return s


def _listen_in_range(host: str, backlog: int, prepare: Callable[[socket.socket], None] | None,
                     span: tuple[int, int]) -> socket.socket:
    """The first port of ``span`` free on ``host`` (a port taken between bind and listen by a
    process racing for the same one is skipped too)."""
    lo, hi = span
    for port in range(lo, hi + 1):
        try:
            return _bind_listen(host, port, backlog, prepare)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise TransportError(f"cannot listen on {fmt_addr(host, port)}: {exc}") from None
    raise TransportError(f"cannot listen on {host}: every port of PYXCCL_PORT_RANGE={lo}-{hi} is in "
                         f"use ({hi - lo + 1} ports); widen the range (each rank needs about 2 per "
                         f"communicator, see docs/multihost.md)")


_RETRY_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                 errno.ENETUNREACH, errno.ECONNABORTED, errno.EAGAIN}


def connect(host: str, port: int, deadline: Deadline, what: str) -> socket.socket:
    """Connect to ``host:port``, retrying refused connections until ``deadline``.

    ``what`` names the peer for the CollectiveTimeout message.
    """
    delay = 0.005
    last: Exception | None = None
    while True:
        left = deadline.remaining()
        if left <= 0:
            raise CollectiveTimeout(f"timed out after {deadline.seconds:g}s connecting to {what} "
                                    f"at {fmt_addr(host, port)} (last error: {last})")
        try:
            s = socket.create_connection((host, port), timeout=max(0.05, min(left, 5.0)))
            tune(s)
            return s
        except socket.gaierror as exc:
            raise TransportError(f"cannot resolve {what} address {host!r}: {exc}") from None
        except (socket.timeout, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, socket.timeout) \
                    and exc.errno not in _RETRY_ERRNOS:
                raise TransportError(f"cannot connect to {what} at {fmt_addr(host, port)}: {exc}") \
                    from None
            last = exc
        time.sleep(min(delay, deadline.remaining()))
        delay = min(delay * 2, 0.2)


_SEGMENT = 4 << 20


def recv_exact(sock: socket.socket, n: int, deadline: Deadline | None = None,
               what: str = "peer") -> bytearray:
    """Read exactly ``n`` bytes; EOF/reset: PeerLostError, a passed deadline: CollectiveTimeout.

    Memory grows with the bytes that actually arrive (4 MiB segments), so a length field
    from an untrusted sender cannot make us allocate it up front.
    """
    if n > _SEGMENT:
        parts = []
        while n > 0:
            parts.append(recv_exact(sock, min(n, _SEGMENT), deadline, what))
            n -= len(parts[-1])
        return bytearray().join(parts)
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline.remaining()
            if left <= 0:
                raise CollectiveTimeout(f"timed out after {deadline.seconds:g}s reading from "
                                        f"{what}")
            sock.settimeout(left)
        try:
            k = sock.recv_into(view[got:], n - got)
        except socket.timeout:
            continue  # loop re-checks the deadline
        except OSError as exc:
            raise PeerLostError(f"connection to {what} failed: {exc}") from None
        if k == 0:
            raise PeerLostError(f"{what} closed the connection")
        got += k
    return buf


def wait_readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets of ``socks`` readable within ``timeout`` seconds (poll: no FD_SETSIZE limit)."""
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(int(max(0.0, timeout) * 1000))}
    return [s for s in socks if s.fileno() in ready]


def close_quietly(sock: socket.socket | None, how: int | None = socket.SHUT_RDWR) -> None:
    """Shut down (``how``) and close a socket, ignoring errors."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if how is not None:
            sock.shutdown(how)
    with contextlib.suppress(OSError):
        sock.close()


# ---------------------------------------------------------------- authentication

def _mac(secret: bytes, label: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, label + b"\0" + nonce, hashlib.sha256).digest()


CHALLENGE_BYTES = len(_CHALLENGE_MAGIC) + _NONCE_BYTES


def new_challenge() -> tuple[bytes, bytes]:
    """``(bytes to send, nonce)``: a challenge with a fresh random nonce (never reused, so an
    answer recorded from one connection proves nothing on another)."""
    nonce = os.urandom(_NONCE_BYTES)
    return _CHALLENGE_MAGIC + nonce, nonce


def answer(secret: bytes, label: bytes, nonce: bytes, body: bytes = b"") -> bytes:
    """The HMAC-SHA256 answer to ``nonce`` under ``label`` (binding ``body`` too, when given)."""
    return hmac.new(secret, label + b"\0" + nonce + body, hashlib.sha256).digest()


def auth_accept(sock: socket.socket, secret: bytes, label: bytes, deadline: Deadline,
                what: str = "connection") -> bool:
    """Server side: send a challenge, check the answer; True when it proves the secret.

    Reads exactly :data:`MAC_BYTES` (nothing else) before deciding; ``deadline`` bounds it.
    """
    challenge, nonce = new_challenge()
    sock.settimeout(max(0.001, deadline.remaining()))
    sock.sendall(challenge)
    got = recv_exact(sock, MAC_BYTES, deadline, what)
    return hmac.compare_digest(bytes(got), _mac(secret, label, nonce))


def read_challenge(sock: socket.socket, deadline: Deadline, what: str) -> bytes:
    """Client side: read a listener's challenge; its nonce (TransportError when it is none)."""
    challenge = recv_exact(sock, CHALLENGE_BYTES, deadline, what)
    if bytes(challenge[:4]) != _CHALLENGE_MAGIC:
        raise TransportError(f"{what} is not a pyxccl endpoint (bad challenge)")
    return bytes(challenge[4:])


def auth_connect(sock: socket.socket, secret: bytes, label: bytes, deadline: Deadline,
                 what: str) -> bytes:
    """Client side: read the challenge and return the answer to send (first bytes of the hello)."""
    return _mac(secret, label, read_challenge(sock, deadline, what))


class Listener:
    """An accept thread; each connection's ``handler(conn, peer)`` runs in its own thread.

    The handler owns ``conn``. :meth:`close` stops accepting, shuts down (``how``) the
    connections whose handler still runs, waking it with EOF, and joins every thread.
    """

    def __init__(self, lsock: socket.socket, handler: Callable[[socket.socket, str], None],
                 name: str, how: int = socket.SHUT_RDWR) -> None:
        self.lsock = lsock
        self.address: tuple[str, int] = tuple(lsock.getsockname()[:2])  # type: ignore[assignment]
        self.closed = False
        self._handler, self._name, self._how = handler, name, how
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, socket.socket] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=name)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            ready = wait_readable([self.lsock, self._wake_r], 3600.0)
            if self.closed or self._wake_r in ready:
                return
            try:
                conn, addr = self.lsock.accept()
            except OSError:
                continue
            tune(conn)
            t = threading.Thread(target=self._run, args=(conn, fmt_addr(addr[0], addr[1])),
                                 daemon=True, name=self._name + "-conn")
            with self._lock:
                if self.closed:
                    close_quietly(conn)
                    return
                self._live[t] = conn
            t.start()

    def keep(self) -> None:
        """Called by a handler whose connection outlives it: :meth:`close` leaves it alone."""
        with self._lock:
            self._live.pop(threading.current_thread(), None)

    def _run(self, conn: socket.socket, peer: str) -> None:
        try:
            self._handler(conn, peer)
        finally:
            with self._lock:
                self._live.pop(threading.current_thread(), None)

    def close(self) -> None:
        """Stop accepting, wake and join every handler thread (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            live = dict(self._live)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
        close_quietly(self.lsock, None)
        for s in live.values():
            with contextlib.suppress(OSError):
                s.shutdown(self._how)
        for t in live:
            if t is not threading.current_thread():
                t.join(5.0)
        close_quietly(self._wake_r, None)
        close_quietly(self._wake_w, None)
