"""The socket transport: ranks on different hosts; slots carried over TCP with credit flow control.

The receiver listens (one socket per transport, on ``ctx.address``), makes a receive
connector with ``nslots`` local slots and a random token, and returns
``(address, port, token)`` as connect info. The sender connects one or more TCP
connections, its lanes (``PYXCCL_SOCKET_NSTREAMS``); the listener opens each with a challenge (a fresh
nonce) and the sender answers with a hello that carries the token, authenticated with an
HMAC of the communicator's secret and the nonce (a recorded hello cannot be replayed), so
the receiver binds the lanes to the right connector whatever order connections arrive
in. Strangers, garbage, replays and wrong tokens are logged at WARN and dropped.

Flow control: the sender starts with ``nslots`` credits; each posted slot is written
(header + payload, split across the lanes when large) by the transport's progress
thread straight from the staging slot (small slots on an idle socket by ``post`` itself,
one non-blocking send); the receiver's progress thread reads it
straight into a local slot; ``release()`` returns one credit (one byte on the reverse
direction of lane 0). At most ``nslots`` slots are in flight, and TCP back-pressure
bounds everything else. Executor calls never block. A connection's EOF or reset fails
its connector: ``ready()`` then raises :class:`~pyxccl.errors.PeerLostError` (a receiver
first delivers the slots it completed before the loss).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

from ... import config as _config
from ...bootstrap import net
from ...errors import PyxcclError, TransportError
from ..base import RecvConnector, SendConnector, Transport, TransportContext
from ..doorbell import PROGRESS_WRITER
from .connectors import SocketRecvConnector, SocketSendConnector
from .progress import Progress
from .wire import decode_info, encode_info, make_hello, new_token, tune

HELLO_TIMEOUT = 30.0
"""seconds an accepted connection may take to send its hello (bounded by ctx.timeout)"""


class SocketTransport(Transport):
    """TCP connectors between ranks on different hosts, driven by one progress thread."""

    name = "socket"

    def __init__(self, ctx: TransportContext):
        super().__init__(ctx)
        cfg = ctx.config if ctx.config is not None else _config.get()
        self.nlanes = max(1, int(getattr(cfg, "socket_nstreams", 1) or 1))
        self._bufbytes = min(max(ctx.nslots * ctx.slot_bytes, 1 << 20), 16 << 20)
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._listener: socket.socket | None = None
        self._port = 0
        self._advertise = ctx.address
        self._conns: list[SocketSendConnector | SocketRecvConnector] = []
        self._closed = False

    def _who(self, peer: int, channel: int, direction: str) -> str:
        peers = self.ctx.peers
        host = peers[peer].hostname if 0 <= peer < len(peers) else ""
        where = f" on {host}" if host else ""
        return f"rank {peer}{where}, channel {channel}, {direction}"

    def _start(self) -> Progress:
        with self._lock:
            if self._closed:
                raise TransportError("socket: the transport is closed")
            if self._progress is None:
                ctx = self.ctx
                self._progress = Progress(ctx.rank, ctx.doorbell.handle(PROGRESS_WRITER), ctx.secret, self._bufbytes,
                                          min(HELLO_TIMEOUT, ctx.timeout))
            return self._progress

    def _listen(self, progress: Progress) -> int:
        with self._lock:
            if self._listener is None:
                try:  # an ephemeral port, or one of PYXCCL_PORT_RANGE; accepted connections
                    # inherit the buffer sizes tune() sets before the bind
                    sock = net.listen(self.ctx.address, 0, socket.SOMAXCONN, lambda s: tune(s, self._bufbytes))
                except TransportError as exc:
                    raise TransportError(f"socket: {exc}; check PYXCCL_SOCKET_IFNAME") from exc
                sock.setblocking(False)
                host, self._port = sock.getsockname()[:2]
                if ipaddress.ip_address(host).is_unspecified:
                    sock.close()
                    raise TransportError(f"socket: cannot advertise the wildcard address {host}; "
                                         "the communicator must pass this rank's own IP")
                self._listener, self._advertise = sock, host
                progress.submit(("listen", sock))
            return self._port

    def setup_recv(self, peer: int, channel: int) -> tuple[RecvConnector, bytes]:
        """Create the receive connector for (``peer``, ``channel``); info = (address, port, token)."""
        progress = self._start()
        port = self._listen(progress)
        ctx = self.ctx
        conn = SocketRecvConnector(peer, channel, ctx.slot_bytes, ctx.nslots, progress,
                                   self._who(peer, channel, "recv"))
        token = new_token()
        progress.tokens[token] = conn
        self._conns.append(conn)
        return conn, encode_info(self._advertise, port, token)

    def connect_send(self, peer: int, channel: int, info: bytes) -> SendConnector:
        """Connect ``nlanes`` TCP lanes to the receiver ``info`` names (retrying until ctx.timeout)."""
        progress = self._start()
        ctx = self.ctx
        who = self._who(peer, channel, "send")
        try:
            address, port, token = decode_info(info)
        except ValueError as exc:
            raise TransportError(f"socket: {who}: {exc}") from exc
        deadline = time.monotonic() + ctx.timeout
        socks: list[socket.socket] = []
        try:
            for j in range(self.nlanes):
                sock = self._connect(address, port, deadline, who)
                socks.append(sock)
                try:
                    sock.settimeout(max(0.1, deadline - time.monotonic()))
                    nonce = net.read_challenge(sock, net.Deadline(max(0.1, deadline - time.monotonic())),
                                               f"{address}:{port}")
                    sock.sendall(make_hello(token, j, self.nlanes, ctx.slot_bytes, ctx.nslots, ctx.secret,
                                            nonce))
                    sock.setblocking(False)
                except (OSError, PyxcclError) as exc:
                    raise TransportError(f"socket: {who}: handshake with {address}:{port} failed: {exc}") from exc
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        conn = SocketSendConnector(peer, channel, ctx.slot_bytes, ctx.nslots, progress, who, self.nlanes)
        self._conns.append(conn)
        progress.submit(("attach", conn, socks))
        return conn

    def _connect(self, address: str, port: int, deadline: float, who: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        delay = 0.005
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                tune(sock, self._bufbytes)
                sock.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
                sock.connect((address, port))
                return sock
            except OSError as exc:  # refused, unreachable, timed out: the peer may not be up yet
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise TransportError(f"socket: {who}: cannot connect to {address}:{port} within "
                                         f"{self.ctx.timeout:g} s: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def close(self, flush_timeout: float | None = None) -> None:
        """Flush, stop the progress thread and close every socket (idempotent, bounded time).

        Flushing waits (at most ``flush_timeout`` s, default ``min(ctx.timeout, 10)``; 0 for
        an abort) until the receivers have released every slot this rank posted on connectors
        not closed already, since a posted slot may still be queued in this process (unlike
        shm, where it is already in the peer's reach).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            progress, self._progress = self._progress, None
            listener, self._listener = self._listener, None
        if progress is not None:
            self._flush(min(self.ctx.timeout, 10.0) if flush_timeout is None else flush_timeout)
            progress.stop()
        if listener is not None:
            listener.close()
        for conn in self._conns:
            conn.closed = True
            if conn.failure is None:
                conn.failure = TransportError(f"socket: {conn.who}: the transport was closed")
        self._conns.clear()

    def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        senders = [c for c in self._conns if isinstance(c, SocketSendConnector) and not c.closed]
        while any(c.failure is None and c.posted != c.credited for c in senders):
            if time.monotonic() >= deadline:
                return
            time.sleep(0.001)

