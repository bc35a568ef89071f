"""The bootstrap ring (NCCL's ``bootstrapInit`` / ``bootstrapSend`` / ``bootstrapAllGather``).

Each rank listens on this namespace's interface address, tells the root (:mod:`.root`) its
address, learns its successor's, then ring-allgathers every rank's address. After that any
rank can send small tagged messages to any other.

Wire format of a connection (big-endian): the listener sends a challenge and the connector
answers HMAC-SHA256(secret, ``pyxccl-ring`` + nonce) followed by its rank (``!i``); then
frames ``!IiqQ`` (magic, source rank, tag, length) + payload, length <= 1 GiB. A listener
thread accepts; one reader thread per incoming connection files frames into mailboxes keyed
by (source, tag), FIFO; what a rank sent before it went is still delivered. Send connections are cached per peer, one lock each, and kept
alive with TCP keep-alive probes (a peer host that vanished is noticed within ~10 s).

Peer loss: the end of an incoming connection marks its rank lost, and a ``TAG_LOST``
frame from any rank marks the rank it names lost; both call :attr:`Bootstrap.on_lost`
(the communicator's :mod:`pyxccl.reliability.health`), and a wait on a lost rank raises PeerLostError.
"""

from __future__ import annotations

import collections
import socket
from typing import Callable
import struct
import threading
import time

from .. import config, log
from ..errors import Aborted, CollectiveTimeout, InvalidArgument, PeerLostError, TransportError
from . import net
from .patience import Patience
from .root import MAX_NRANKS, rendezvous
from .uid import UniqueId

RING_LABEL = b"pyxccl-ring"
FRAME = struct.Struct("!IiqQ")
FRAME_MAGIC = 0x50584246  # "PXBF"
RANK = struct.Struct("!i")
MAX_MESSAGE = 1 << 30
MAX_TAG = (1 << 62) - 1
TAG_ADDRS, TAG_ALLGATHER, TAG_BCAST, TAG_BARRIER = -1, -2, -3, -4
TAG_LOST = -5  # control frame: "rank R is lost: why" (payload RANK + utf-8 reason), never filed as mail
MAX_NOTICE = 4096
_SMALL = 64 * 1024
_HANDSHAKE_SECONDS = 10.0
_RECONNECT_SECONDS = 3.0  # how long a known listener may refuse before its rank counts as lost
_DRAIN_SECONDS = 1.0  # how long a wait on a lost rank still takes the frames its open connection brings


class Bootstrap:
    """One rank's bootstrap network: tagged send/recv, allgather, broadcast, barrier.

    ``Bootstrap(uid, rank, nranks, timeout=None)`` blocks until the ring is up (every rank
    constructed its Bootstrap with the same uid and nranks). ``timeout`` (default
    PYXCCL_TIMEOUT) bounds the setup and is the default of every later wait.
    """

    def __init__(self, uid: UniqueId, rank: int, nranks: int, timeout: float | None = None) -> None:
        if not isinstance(uid, UniqueId):
            raise InvalidArgument(f"uid must be a UniqueId, got {type(uid).__name__}")
        if isinstance(nranks, bool) or not isinstance(nranks, int) or not 0 < nranks <= MAX_NRANKS:
            raise InvalidArgument(f"nranks must be an int in 1..{MAX_NRANKS}, got {nranks!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < nranks:
            raise InvalidArgument(f"rank must be in 0..{nranks - 1}, got {rank!r}")
        self._rank, self._nranks = rank, nranks
        self._uid = uid
        self.timeout = float(config.get().timeout if timeout is None else timeout)
        if self.timeout <= 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout!r}")
        self._cond = threading.Condition()
        self._mail: dict[tuple[int, int], collections.deque[bytes]] = {}
        self._lost: dict[int, str] = {}
        self.on_lost: "Callable[[int, str, int], None] | None" = None
        """Called as ``on_lost(rank, why, seen_by)`` when this bootstrap learns a rank is lost."""
        self._live: dict[int, int] = {}
        self._closed = False
        self._send_socks: dict[int, socket.socket] = {}
        self._send_locks: dict[int, threading.Lock] = {}
        self._addrs: list[tuple[str, int] | None] = [None] * nranks
        ifname = config.get().socket_ifname
        host = net.select_address(ifname) if ifname else net.route_address(uid.host)
        lsock = net.listen(host, 0)
        self.address: tuple[str, int] = (host, int(lsock.getsockname()[1]))
        """This rank's listen address ``(host, port)``."""
        self._addrs[rank] = self.address
        self._listener = net.Listener(lsock, self._reader, f"pyxccl-bootstrap-{rank}")
        try:
            self._setup(net.Deadline(self.timeout))
        except BaseException:
            self.close()
            raise

    def _setup(self, deadline: net.Deadline) -> None:
        me = net.pack_addr(*self.address)
        nxt = rendezvous(self._uid.secret, self._uid.host, self._uid.port, self._rank,
                         self._nranks, me, deadline)
        n = self._nranks
        self._addrs[(self._rank + 1) % n] = nxt
        # ring allgather of listen addresses: step i forwards the address of rank (rank - i)
        cur = me

        def waiting(elapsed: float) -> str:
            return (f"rank {self._rank}: after {elapsed:.0f} s still exchanging addresses over the bootstrap ring "
                    f"(every rank joined the root): waiting for its predecessor rank {self.prev} to send, and "
                    f"for its successor rank {self.next} at {net.fmt_addr(*nxt)} to take; giving up in "
                    f"{deadline.remaining():.0f} s")

        with Patience(waiting, rank=self._rank, name="pyxccl-ring-patience"):
            for i in range(n - 1):
                self._send(self.next, TAG_ADDRS, cur, deadline)
                cur = self._recv(self.prev, TAG_ADDRS, deadline)
                self._file_address(cur, i)
        log.info("bootstrap rank %d/%d up, listening on %s", self._rank, n,
                 net.fmt_addr(*self.address), rank=self._rank)

    def _file_address(self, cur: bytes, i: int) -> None:
        """Keep the address step ``i`` of the ring allgather brought (that of rank - i - 1)."""
        src = (self._rank - i - 1) % self._nranks
        try:
            host, port, end = net.unpack_addr(cur)
            if end != len(cur):
                raise ValueError("trailing bytes")
        except ValueError as exc:
            raise TransportError(f"rank {self._rank}: bad address of rank {src} from rank "
                                 f"{self.prev}: {exc}") from None
        if self._addrs[src] is None:
            self._addrs[src] = (host, port)

    # ------------------------------------------------------------ properties
    @property
    def rank(self) -> int:
        """This rank."""
        return self._rank

    @property
    def nranks(self) -> int:
        """Number of ranks."""
        return self._nranks

    @property
    def next(self) -> int:
        """Ring successor."""
        return (self._rank + 1) % self._nranks

    @property
    def prev(self) -> int:
        """Ring predecessor."""
        return (self._rank - 1) % self._nranks

    def peer_addresses(self) -> list[tuple[str, int]]:
        """Every rank's bootstrap listen address, by rank."""
        return [a for a in self._addrs if a is not None]

    # ------------------------------------------------------------ listener side
    def _reader(self, conn: socket.socket, where: str) -> None:
        src = -1
        try:
            dl = net.Deadline(min(_HANDSHAKE_SECONDS, self.timeout))
            ok = net.auth_accept(conn, self._uid.secret, RING_LABEL, dl, f"connection from {where}")
            if ok:
                (src,) = RANK.unpack(net.recv_exact(conn, RANK.size, dl, where))
            if not ok or not 0 <= src < self._nranks:
                log.warn("bootstrap rank %d: connection from %s failed authentication "
                         "(wrong unique id secret or bad rank); closed", self._rank, where,
                         rank=self._rank)
                return
            conn.settimeout(None)
            keepalive(conn)
            with self._cond:
                self._lost.pop(src, None)
                self._live[src] = self._live.get(src, 0) + 1
            what = f"rank {src}"
            while True:
                magic, frm, tag, length = FRAME.unpack(net.recv_exact(conn, FRAME.size, None, what))
                if magic != FRAME_MAGIC or frm != src or length > MAX_MESSAGE:
                    log.warn("bootstrap rank %d: bad frame from rank %d (magic %#x, src %d, "
                             "length %d); connection closed", self._rank, src, magic, frm, length,
                             rank=self._rank)
                    self._mark_lost(src, f"rank {src} sent a bad frame")
                    return
                if tag == TAG_LOST and length > MAX_NOTICE:
                    log.warn("bootstrap rank %d: oversized lost notice from rank %d; connection closed",
                             self._rank, src, rank=self._rank)
                    self._mark_lost(src, f"rank {src} sent a bad frame")
                    return
                data = bytes(net.recv_exact(conn, length, None, what)) if length else b""
                if tag == TAG_LOST:
                    self._notice(src, data)
                    continue
                with self._cond:
                    self._mail.setdefault((src, tag), collections.deque()).append(data)
                    self._cond.notify_all()
        except (PeerLostError, CollectiveTimeout, OSError) as exc:
            if src >= 0:
                self._mark_lost(src, str(exc))
            elif not self._closed:
                log.warn("bootstrap rank %d: dropped connection from %s: %s", self._rank, where,
                         exc, rank=self._rank)
        finally:
            net.close_quietly(conn)

    def _mark_lost(self, src: int, why: str) -> None:
        with self._cond:
            self._live[src] = self._live.get(src, 1) - 1
            self._cond.notify_all()  # a wait draining src's last frames (see _recv)
            if self._closed or self._live[src] > 0:
                return
        self.mark_lost(src, f"its bootstrap connection ended: {why}", self._rank)

    def _notice(self, src: int, data: bytes) -> None:
        if len(data) < RANK.size:
            log.warn("bootstrap rank %d: short lost notice from rank %d; ignored", self._rank, src, rank=self._rank)
            return
        (lost,) = RANK.unpack_from(data)
        if not 0 <= lost < self._nranks or lost == self._rank:
            log.warn("bootstrap rank %d: lost notice from rank %d names rank %d; ignored", self._rank, src,
                     lost, rank=self._rank)
            return
        self.mark_lost(lost, data[RANK.size:].decode("utf-8", "replace"), src)

    def mark_lost(self, peer: int, why: str, seen_by: int | None = None) -> None:
        """Record that ``peer`` is gone: waits on it raise PeerLostError; :attr:`on_lost` is told."""
        seen_by = self._rank if seen_by is None else seen_by
        with self._cond:
            if self._closed:
                return
            self._lost.setdefault(peer, why)
            self._cond.notify_all()
        callback = self.on_lost
        if callback is not None:
            callback(peer, why, seen_by)

    def notify_lost(self, peer: int, why: str, seconds: float = 2.0) -> None:
        """Tell every other live rank that ``peer`` is lost (best effort, ``seconds`` per rank)."""
        payload = RANK.pack(peer) + why.encode("utf-8", "replace")[:MAX_NOTICE - RANK.size]
        for r in range(self._nranks):
            if r in (self._rank, peer) or r in self._lost or self._closed:
                continue
            try:
                self._send(r, TAG_LOST, payload, net.Deadline(seconds))
            except (PeerLostError, CollectiveTimeout, TransportError, Aborted, OSError):
                pass

    # ------------------------------------------------------------ send / recv
    def _check_peer(self, peer: int) -> None:
        if isinstance(peer, bool) or not isinstance(peer, int) or not 0 <= peer < self._nranks:
            raise InvalidArgument(f"peer must be a rank in 0..{self._nranks - 1}, got {peer!r}")

    @staticmethod
    def _check_tag(tag: int) -> None:
        if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag <= MAX_TAG:
            raise InvalidArgument(f"tag must be an int in 0..2**62-1 (negative tags are the "
                                  f"bootstrap's own), got {tag!r}")

    def send(self, peer: int, tag: int, data: bytes) -> None:
        """Send ``data`` (at most 1 GiB) to ``peer`` under ``tag`` (>= 0); returns once written."""
        self._check_peer(peer)
        self._check_tag(tag)
        self._send(peer, tag, data, net.Deadline(self.timeout))

    def recv(self, peer: int, tag: int, timeout: float | None = None, *, any_loss: bool = False) -> bytes:
        """The oldest message from ``peer`` with ``tag``; waits at most ``timeout`` seconds.

        Raises PeerLostError when ``peer`` is lost, or with ``any_loss`` when any rank is.
        """
        self._check_peer(peer)
        self._check_tag(tag)
        return self._recv(peer, tag, net.Deadline(self.timeout if timeout is None else timeout), any_loss)

    def _send(self, peer: int, tag: int, data: bytes, deadline: net.Deadline) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"data must be bytes-like, got {type(data).__name__}")
        view = memoryview(data).cast("B")
        if view.nbytes > MAX_MESSAGE:
            raise InvalidArgument(f"message of {view.nbytes} bytes exceeds the bootstrap's 1 GiB")
        if self._closed:
            raise Aborted(f"bootstrap rank {self._rank} is closed; cannot send to rank {peer}")
        if peer == self._rank:
            with self._cond:
                self._mail.setdefault((peer, tag), collections.deque()).append(bytes(view))
                self._cond.notify_all()
            return
        header = FRAME.pack(FRAME_MAGIC, self._rank, tag, view.nbytes)
        with self._send_locks.setdefault(peer, threading.Lock()):
            try:
                sock = self._send_socks.get(peer) or self._connect(peer, deadline)
            except PeerLostError as exc:
                raise PeerLostError(f"rank {self._rank}: lost rank {peer} while connecting to send tag "
                                    f"{tag}: {exc}", rank=peer) from None
            try:
                sock.settimeout(max(0.001, deadline.remaining()))
                if view.nbytes <= _SMALL:
                    sock.sendall(header + view)
                else:
                    sock.sendall(header)
                    sock.sendall(view)
            except socket.timeout:
                self._drop_send(peer)
                raise CollectiveTimeout(f"rank {self._rank}: timed out after {deadline.seconds:g}s "
                                        f"sending tag {tag} to rank {peer}") from None
            except OSError as exc:
                self._drop_send(peer)
                if self._closed:
                    raise Aborted(f"bootstrap rank {self._rank} was closed while sending tag "
                                  f"{tag} to rank {peer}") from None
                raise PeerLostError(f"rank {self._rank}: lost rank {peer} while sending tag "
                                    f"{tag}: {exc}", rank=peer) from None

    def _drop_send(self, peer: int) -> None:
        net.close_quietly(self._send_socks.pop(peer, None))

    def _connect(self, peer: int, deadline: net.Deadline) -> socket.socket:
        addr = self._addrs[peer]
        if addr is None:
            raise TransportError(f"rank {self._rank}: address of rank {peer} not known yet")
        what = f"rank {peer}"
        try:  # its listener was up before its address was known: refusals mean it is gone
            sock = net.connect(addr[0], addr[1], net.Deadline(min(deadline.remaining(), _RECONNECT_SECONDS)), what)
        except CollectiveTimeout as exc:
            if deadline.remaining() <= 0:
                raise
            raise PeerLostError(f"rank {self._rank}: rank {peer}'s bootstrap listener does not accept "
                                f"connections ({exc}); its process is gone or closed", rank=peer) from None
        keepalive(sock)
        try:
            mac = net.auth_connect(sock, self._uid.secret, RING_LABEL, deadline, what)
            sock.sendall(mac + RANK.pack(self._rank))
        except BaseException:
            net.close_quietly(sock)
            raise
        with self._cond:
            if self._closed:
                net.close_quietly(sock)
                raise Aborted(f"bootstrap rank {self._rank} closed while connecting to {what}")
            self._send_socks[peer] = sock
        return sock

    def _recv(self, peer: int, tag: int, deadline: net.Deadline, any_loss: bool = False) -> bytes:
        key = (peer, tag)
        drain_end = None
        with self._cond:
            while True:
                box = self._mail.get(key)
                if box:
                    data = box.popleft()
                    if not box:
                        del self._mail[key]
                    return data
                if self._closed:
                    raise Aborted(f"bootstrap rank {self._rank} was closed while waiting for "
                                  f"rank {peer} tag {tag}")
                lost = peer if peer in self._lost else min(self._lost) if any_loss and self._lost else None
                if lost == peer and self._live.get(peer, 0) > 0:  # it may have sent this before it went
                    drain_end = drain_end or time.monotonic() + min(_DRAIN_SECONDS, deadline.remaining())
                    if time.monotonic() < drain_end:
                        self._cond.wait(drain_end - time.monotonic())
                        continue
                if lost is not None:
                    raise PeerLostError(f"rank {self._rank}: lost rank {lost} while waiting for rank "
                                        f"{peer}'s tag {tag}: {self._lost[lost]}", rank=lost)
                left = deadline.remaining()
                if left <= 0:
                    raise CollectiveTimeout(f"rank {self._rank}: timed out after "
                                            f"{deadline.seconds:g}s waiting for a message from "
                                            f"rank {peer} with tag {tag}")
                self._cond.wait(left)

    # ------------------------------------------------------------ collectives
    def allgather(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, by rank (ring algorithm: nranks-1 steps, sizes may differ)."""
        n, me = self._nranks, self._rank
        dl = net.Deadline(self.timeout)
        out: list[bytes] = [b""] * n
        out[me] = cur = bytes(data)
        for i in range(n - 1):
            self._send(self.next, TAG_ALLGATHER, cur, dl)
            cur = self._recv(self.prev, TAG_ALLGATHER, dl)
            out[(me - i - 1) % n] = cur
        return out

    def broadcast(self, data: bytes | None, root: int) -> bytes:
        """``root``'s ``data`` on every rank (root sends to each rank directly)."""
        self._check_peer(root)
        dl = net.Deadline(self.timeout)
        if self._rank == root:
            if data is None:
                raise InvalidArgument(f"broadcast root {root} must pass data")
            payload = bytes(data)
            for peer in range(self._nranks):
                if peer != root:
                    self._send(peer, TAG_BCAST, payload, dl)
            return payload
        return self._recv(root, TAG_BCAST, dl)

    def barrier(self, timeout: float | None = None) -> None:
        """Return once every rank entered the barrier (dissemination: ceil(log2 n) rounds).

        ``timeout``: seconds (default this bootstrap's timeout) before CollectiveTimeout.
        """
        n, me = self._nranks, self._rank
        dl = net.Deadline(self.timeout if timeout is None else timeout)
        k = 1
        while k < n:
            self._send((me + k) % n, TAG_BARRIER, b"", dl)
            self._recv((me - k) % n, TAG_BARRIER, dl)
            k <<= 1

    # ------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop the listener and readers, close every socket (idempotent, local)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            socks = list(self._send_socks.values())
            self._send_socks.clear()
        self._listener.close()
        for s in socks:
            net.close_quietly(s)

    def __enter__(self) -> "Bootstrap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Bootstrap(rank={self._rank}, nranks={self._nranks}, "
                f"address={net.fmt_addr(*self.address)})")


def keepalive(sock: socket.socket, idle: int = 5, interval: int = 1, count: int = 5) -> None:
    """TCP keep-alive probes: a peer host that vanished ends the connection in ~idle + interval*count s."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass
