"""Key-value stores for rendezvous: :class:`TCPStore`, :class:`FileStore`, :class:`PrefixStore`.

TCPStore wire protocol (big-endian). Request ``!BIII`` (op, wait timeout in ms, key length,
value length) + key (UTF-8, <= 65535 bytes) + value (<= 256 MiB). Response ``!BI`` (status,
length) + payload; status 0 ok, 1 timed out (payload: the missing keys), 2 error (payload:
UTF-8 message). Ops: 1 set, 2 get, 3 add (value ``!q``), 5 wait (NUL-separated keys in the
value; check is a wait of 0 ms), 6 delete. Counters are ASCII decimal, like torch's stores.

With a ``secret`` (optional; the same bytes on the server and every client) each connection
first proves it knows it, like every bootstrap connection (:func:`.net.auth_accept`): the
server sends a challenge (``PXCH`` + fresh 16-byte nonce) and reads exactly 32 bytes,
HMAC-SHA256(secret, ``pyxccl-store`` + NUL + nonce), within :data:`HANDSHAKE_SECONDS`, before
it reads any request; a wrong answer or garbage is logged at WARN and the connection closed.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import os
import socket
import struct
import tempfile
import threading
import time
from typing import Iterable, Iterator

from .. import config, log
from ..errors import CollectiveTimeout, InvalidArgument, PeerLostError, TransportError
from . import net

REQ, RESP = struct.Struct("!BIII"), struct.Struct("!BI")
OP_SET, OP_GET, OP_ADD, OP_WAIT, OP_DELETE = 1, 2, 3, 5, 6
ST_OK, ST_TIMEOUT, ST_ERROR = 0, 1, 2
MAX_KEY, MAX_VALUE = 0xFFFF, 256 << 20
STORE_LABEL = b"pyxccl-store"
HANDSHAKE_SECONDS = 10.0
_INT64 = 1 << 63


class Store(abc.ABC):
    """A key-value store shared by the ranks of a job; keys are str, values bytes.

    Waits default to the ``timeout`` given at construction (default PYXCCL_TIMEOUT) and raise
    CollectiveTimeout naming the keys waited for. Subclasses implement the ``_`` primitives
    (arguments already validated; ``_get``/``_wait`` report a timeout as None / missing keys).
    """

    timeout: float
    where: str = "store"

    def set(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value`` (overwrites)."""
        self._set(_key(key), _value(value))

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """The value of ``key``, waiting at most ``timeout`` seconds until it exists."""
        wait = self.timeout if timeout is None else float(timeout)
        value = self._get(_key(key), wait)
        if value is None:
            raise self._timed_out([key], wait)
        return value

    def wait(self, keys: Iterable[str], timeout: float | None = None) -> None:
        """Wait at most ``timeout`` seconds until every key of ``keys`` exists."""
        wait = self.timeout if timeout is None else float(timeout)
        missing = self._wait(_keys(keys), wait)
        if missing:
            raise self._timed_out(missing, wait)

    def check(self, keys: Iterable[str]) -> bool:
        """Whether every key of ``keys`` exists now."""
        return not self._wait(_keys(keys), 0.0)

    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the integer counter ``key`` (missing: 0); the new value."""
        if isinstance(amount, bool) or not isinstance(amount, int) or abs(amount) >= 1 << 63:
            raise InvalidArgument(f"add amount must be a 64-bit int, got {amount!r}")
        return self._add(_key(key), amount)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        return self._delete(_key(key))

    def close(self) -> None:
        """Release the store's resources (idempotent)."""

    def _timed_out(self, keys: list[str], wait: float) -> CollectiveTimeout:
        return CollectiveTimeout(f"timed out after {wait:g}s waiting for key(s) {keys} "
                                 f"in {self.where}")

    @abc.abstractmethod
    def _set(self, key: str, value: bytes) -> None: ...

    @abc.abstractmethod
    def _get(self, key: str, wait: float) -> bytes | None: ...

    @abc.abstractmethod
    def _wait(self, keys: list[str], wait: float) -> list[str]: ...

    @abc.abstractmethod
    def _add(self, key: str, amount: int) -> int: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> bool: ...

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise InvalidArgument(f"store key must be str, got {type(key).__name__}")
    if not key or "\0" in key or len(key.encode("utf-8")) > MAX_KEY:
        raise InvalidArgument(f"store key must be 1..{MAX_KEY} UTF-8 bytes, no NUL: {key[:80]!r}")
    return key


def _value(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) > MAX_VALUE:
        raise InvalidArgument(f"store value must be bytes of at most {MAX_VALUE}, got "
                              f"{type(value).__name__}")
    return bytes(value)


def _keys(keys: Iterable[str]) -> list[str]:
    return [_key(k) for k in ([keys] if isinstance(keys, str) else keys)]


def pack_keys(keys: list[str]) -> bytes:
    """Keys as NUL-separated UTF-8."""
    return b"\0".join(k.encode("utf-8") for k in keys)


def unpack_keys(buf: bytes) -> list[str]:
    """Inverse of :func:`pack_keys`."""
    return [k.decode("utf-8", "replace") for k in buf.split(b"\0")] if buf else []


def _counter(old: bytes | None, amount: int, key: str) -> int:
    try:
        return int((old or b"0").decode("ascii")) + amount
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument(f"store key {key!r} does not hold an integer counter") from None


class _Server:
    """The TCPStore server; closing shuts connections for reading only, so replies finish."""

    def __init__(self, port: int, ipv6: bool, secret: bytes | None = None) -> None:
        lsock = net.listen("::" if ipv6 else "0.0.0.0", port)
        self.port = int(lsock.getsockname()[1])
        self.secret = secret
        self.data: dict[str, bytes] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.listener = net.Listener(lsock, self.serve, f"pyxccl-store-{self.port}", socket.SHUT_RD)

    def serve(self, conn: socket.socket, peer: str) -> None:
        """Answer one client's requests until it disconnects (after the handshake, if any)."""
        try:
            if self.secret is not None:
                try:
                    ok = net.auth_accept(conn, self.secret, STORE_LABEL,
                                         net.Deadline(HANDSHAKE_SECONDS), f"connection from {peer}")
                except (PeerLostError, CollectiveTimeout, OSError) as exc:
                    if not self.closed:
                        log.warn("store server :%d: dropped connection from %s before it "
                                 "authenticated: %s", self.port, peer, exc)
                    return
                if not ok:
                    log.warn("store server :%d: connection from %s failed authentication (wrong "
                             "store secret); dropped", self.port, peer)
                    return
                conn.settimeout(None)
            while True:
                op, tmo, klen, vlen = REQ.unpack(net.recv_exact(conn, REQ.size, None, peer))
                if klen > MAX_KEY or vlen > MAX_VALUE:
                    log.warn("store server :%d: request from %s with key %d / value %d bytes "
                             "exceeds the limits; client dropped", self.port, peer, klen, vlen)
                    return
                key = bytes(net.recv_exact(conn, klen, None, peer)).decode("utf-8", "replace")
                value = bytes(net.recv_exact(conn, vlen, None, peer))
                try:
                    status, payload = self.handle(op, tmo / 1000.0, key, value)
                except (ValueError, struct.error, InvalidArgument) as exc:
                    if op not in (OP_SET, OP_GET, OP_ADD, OP_WAIT, OP_DELETE):
                        log.warn("store server :%d: request from %s has unknown op %d", self.port,
                                 peer, op)
                    status, payload = ST_ERROR, str(exc).encode()
                conn.sendall(RESP.pack(status, len(payload)) + payload)
        except (PeerLostError, OSError):
            pass
        finally:
            net.close_quietly(conn)

    def handle(self, op: int, wait: float, key: str, value: bytes) -> tuple[int, bytes]:
        """One request under the lock: ``(status, payload)``."""
        data = self.data
        with self.cond:
            if op == OP_ADD:
                new = _counter(data.get(key), struct.unpack("!q", value)[0], key)
                if not -_INT64 <= new < _INT64:
                    raise InvalidArgument(f"store counter {key!r} would overflow 64 bits")
                value = str(new).encode()
            if op in (OP_SET, OP_ADD):
                data[key] = value
                self.cond.notify_all()
                return ST_OK, struct.pack("!q", int(value)) if op == OP_ADD else b""
            if op == OP_GET:
                self.cond.wait_for(lambda: key in data or self.closed, wait)
                return (ST_OK, data[key]) if key in data else self._missing([key])
            if op == OP_WAIT:
                keys = unpack_keys(value)
                self.cond.wait_for(lambda: self.closed or all(k in data for k in keys), wait)
                missing = [k for k in keys if k not in data]
                return self._missing(missing) if missing else (ST_OK, b"")
            if op == OP_DELETE:
                return ST_OK, bytes([data.pop(key, None) is not None])
        raise ValueError(f"unknown store op {op}")

    def _missing(self, keys: list[str]) -> tuple[int, bytes]:
        return (ST_ERROR, b"store server is shutting down") if self.closed else \
            (ST_TIMEOUT, pack_keys(keys))

    def close(self) -> None:
        """Stop accepting, let in-flight replies finish, end every handler thread."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.listener.close()


class TCPStore(Store):
    """A store served over TCP by the process constructed with ``is_server=True``.

    The server listens on every interface at ``port`` (0 picks a free one: see :attr:`port`)
    and is a client of itself; clients connect to ``host:port``, retrying until ``timeout``.
    Thread-safe: a pool of connections, so a blocked ``get`` never holds up another ``set``.

    ``secret`` (keyword, optional: bytes, e.g. a unique id's ``secret``) makes the server admit
    only connections that prove they know it (challenge-response, the secret is never sent);
    give the same bytes to the server and every client. Without it the store is open to
    anyone who can reach the port, like torch's TCPStore.
    """

    def __init__(self, host: str, port: int, is_server: bool = False,
                 timeout: float | None = None, *, secret: bytes | None = None) -> None:
        self.timeout = float(config.get().timeout if timeout is None else timeout)
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF or (port == 0 and not is_server):
            raise InvalidArgument(f"TCPStore port must be 1..65535 (0: server picks), got {port!r}")
        if secret is not None:
            if not isinstance(secret, (bytes, bytearray, memoryview)) or not len(secret):
                raise InvalidArgument("TCPStore secret must be non-empty bytes (or None)")
            secret = bytes(secret)
        self._secret = secret
        self.host = host
        self._pool: list[socket.socket] = []
        self._all: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._server: _Server | None = _Server(port, ":" in host, secret) if is_server else None
        self.port: int = self._server.port if self._server else port
        self.where = f"TCP store {net.fmt_addr(host, self.port)}"
        try:
            self._release(self._connect())
        except BaseException:
            self.close()
            raise

    def _connect(self) -> socket.socket:
        sock = net.connect(self.host, self.port, net.Deadline(self.timeout), self.where)
        if self._secret is not None:
            dl = net.Deadline(min(self.timeout, HANDSHAKE_SECONDS))
            try:
                nonce = net.read_challenge(sock, dl, self.where)
                sock.settimeout(max(0.001, dl.remaining()))
                sock.sendall(net.answer(self._secret, STORE_LABEL, nonce))
            except CollectiveTimeout:
                net.close_quietly(sock)
                raise CollectiveTimeout(f"{self.where} sent no challenge within {dl.seconds:g}s "
                                        "(a server without a secret?)") from None
            except (OSError, TransportError) as exc:
                net.close_quietly(sock)
                raise TransportError(f"{self.where}: handshake failed: {exc}") from None
        with self._lock:
            self._all.add(sock)
        return sock

    def _release(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed:
                return self._pool.append(sock)
        net.close_quietly(sock)

    def _request(self, op: int, key: str, value: bytes = b"", wait: float = 0.0
                 ) -> tuple[int, bytes]:
        raw = key.encode("utf-8")
        with self._lock:
            if self._closed:
                raise InvalidArgument(f"{self.where} is closed")
            sock = self._pool.pop() if self._pool else None
        sock = sock or self._connect()
        try:
            dl = net.Deadline(wait + self.timeout)
            sock.settimeout(wait + self.timeout)
            head = REQ.pack(op, int(min(max(wait, 0.0), 4e6) * 1000), len(raw), len(value))
            sock.sendall(head + raw + value)
            head = net.recv_exact(sock, RESP.size, dl, self.where)
            if head[:4] == b"PXCH" and self._secret is None:
                raise TransportError(f"{self.where} asks for a secret (pass TCPStore(..., "
                                     "secret=...) the server's)")
            status, n = RESP.unpack(head)
            if n > MAX_VALUE or status not in (ST_OK, ST_TIMEOUT, ST_ERROR):
                raise TransportError(f"{self.where} sent a bad reply (status {status}, {n} bytes)")
            payload = bytes(net.recv_exact(sock, n, dl, self.where))
        except (OSError, PeerLostError, CollectiveTimeout, TransportError) as exc:
            with self._lock:
                self._all.discard(sock)
            net.close_quietly(sock)
            if isinstance(exc, OSError):
                raise PeerLostError(f"{self.where}: {exc}") from None
            raise
        self._release(sock)
        if status == ST_ERROR:
            raise InvalidArgument(f"{self.where}: {payload.decode('utf-8', 'replace')}")
        return status, payload

    def _set(self, key: str, value: bytes) -> None:
        self._request(OP_SET, key, value)

    def _get(self, key: str, wait: float) -> bytes | None:
        status, payload = self._request(OP_GET, key, wait=wait)
        return payload if status == ST_OK else None

    def _wait(self, keys: list[str], wait: float) -> list[str]:
        status, payload = self._request(OP_WAIT, "", pack_keys(keys), wait=wait)
        return [] if status == ST_OK else unpack_keys(payload)

    def _add(self, key: str, amount: int) -> int:
        payload = self._request(OP_ADD, key, struct.pack("!q", amount))[1]
        if len(payload) != 8:
            raise TransportError(f"{self.where} sent a {len(payload)}-byte counter")
        return int(struct.unpack("!q", payload)[0])

    def _delete(self, key: str) -> bool:
        return self._request(OP_DELETE, key)[1] == b"\x01"

    def close(self) -> None:
        """Close this client's connections; on the server process, stop the server too."""
        with self._lock:
            self._closed = True
            socks, self._all, self._pool = list(self._all), set(), []
        for s in socks:
            net.close_quietly(s)
        if self._server is not None:
            self._server.close()


class FileStore(Store):
    """A store in a shared directory: one file per key (named by SHA-256 of the key).

    Values are written to a temporary name and renamed into place (readers never see a
    partial value); ``add`` and ``delete`` hold an ``fcntl`` lock on ``<path>/.lock``.
    Waiting polls the directory.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = None) -> None:
        self.timeout = float(config.get().timeout if timeout is None else timeout)
        self.path = os.fspath(path)
        self.where = f"file store {self.path}"
        os.makedirs(self.path, exist_ok=True)

    def _file(self, key: str) -> str:
        return os.path.join(self.path, hashlib.sha256(key.encode("utf-8")).hexdigest())

    def _set(self, key: str, value: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            os.replace(tmp, self._file(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _read(self, key: str) -> bytes | None:
        try:
            with open(self._file(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _get(self, key: str, wait: float) -> bytes | None:
        return None if self._wait([key], wait) else self._read(key)

    def _wait(self, keys: list[str], wait: float) -> list[str]:
        dl, delay = net.Deadline(wait), 0.001
        while True:
            missing = [k for k in keys if not os.path.exists(self._file(k))]
            if not missing or dl.expired():
                return missing
            time.sleep(min(delay, dl.remaining()))
            delay = min(delay * 2, 0.05)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.path, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _add(self, key: str, amount: int) -> int:
        with self._locked():
            new = _counter(self._read(key), amount, key)
            self._set(key, str(new).encode())
        return new

    def _delete(self, key: str) -> bool:
        with self._locked(), contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(key))
            return True
        return False


class PrefixStore(Store):
    """A view of ``store`` whose keys are ``prefix + "/" + key``; closing it is a no-op."""

    def __init__(self, prefix: str, store: Store) -> None:
        self.prefix, self.store = prefix, store
        self.timeout = store.timeout
        self.where = store.where

    def _k(self, key: str) -> str:
        return _key(f"{self.prefix}/{key}")

    def _set(self, key: str, value: bytes) -> None:
        self.store._set(self._k(key), value)

    def _get(self, key: str, wait: float) -> bytes | None:
        return self.store._get(self._k(key), wait)

    def _wait(self, keys: list[str], wait: float) -> list[str]:
        missing = self.store._wait([self._k(k) for k in keys], wait)
        return [k[len(self.prefix) + 1:] for k in missing]

    def _add(self, key: str, amount: int) -> int:
        return self.store._add(self._k(key), amount)

    def _delete(self, key: str) -> bool:
        return self.store._delete(self._k(key))
