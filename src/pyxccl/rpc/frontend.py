"""The two ends of a link: :class:`FrontEnd` (client side, one per remote server node) and
:class:`ServerLink` (server side, one per connected client node's link).

A FrontEnd connects lazily: nothing happens at construction; the first thread that
has to write on it connects both lanes (TCP connect, answer the listener's HMAC
challenge, hello), starts one reader thread per lane, then writes. A refused or
timed-out connect fails the link at once, and its queued requests are forwarded to
another server of their service (see :mod:`pyxccl.rpc.client`).

Neither end knows the node's sides: a FrontEnd gets the node's credentials as a
:class:`NodeCredentials` and both ends get their frame and failure handlers as callables.
"""

from __future__ import annotations

import itertools
import socket
import threading
from typing import Any, Protocol

from ..bootstrap import net
from ..transport import tune_socket
from . import wire
from .link import Link, OnFail, OnFrame

CONNECT_TIMEOUT = 5.0
BULK_SOCKBUF = 4 << 20
_link_ids = itertools.count(1)


def _tune_lane(sock: socket.socket, lane: int, send_timeout: float) -> None:
    sock.settimeout(None)
    net.tune(sock)
    if lane == 1:
        tune_socket(sock, BULK_SOCKBUF)
    wire.set_send_timeout(sock, send_timeout)


class NodeCredentials(Protocol):
    """What a FrontEnd presents when it connects: the client node's rank, its token and
    the namespace secret, and the node's timeout (connect and send timeouts)."""

    rank: int
    token: bytes
    secret: bytes
    timeout: float


class FrontEnd(Link):
    """The client side of a link to server node ``node`` at ``address``.

    ``on_frame`` gets the responses, ``on_fail`` the ids of the requests never written
    (the rest are in :attr:`in_flight`) when the link fails.
    """

    def __init__(self, node_keys: NodeCredentials, node: int, address: tuple[str, int],
                 on_frame: OnFrame, on_fail: OnFail) -> None:
        super().__init__(f"pyxccl-rpc-fe{node_keys.rank}-{node}", on_frame, on_fail, track=True)
        self.node_keys = node_keys
        self.node = node
        self.address = address
        self.link_id = next(_link_ids)
        self._connect_lock = threading.Lock()

    def prepare(self, lane: int) -> socket.socket:
        sock = self.socks[lane]
        if sock is not None:
            return sock
        with self._connect_lock:
            if self.failed is not None:
                raise self.failed
            if self.socks[lane] is None:
                self._connect()
        sock = self.socks[lane]
        assert sock is not None
        return sock

    def _connect(self) -> None:
        keys = self.node_keys
        what = f"pRPC node {self.node} at {net.fmt_addr(*self.address)}"
        socks = []
        try:
            for lane in (0, 1):
                dl = net.Deadline(min(CONNECT_TIMEOUT, keys.timeout))
                s = socket.create_connection(self.address, timeout=max(0.05, dl.remaining()))
                socks.append(s)
                answer = net.auth_connect(s, keys.secret, wire.DATA_LABEL, dl, what)
                s.sendall(answer + wire.make_hello(lane, keys.rank, keys.token, self.link_id))
                _tune_lane(s, lane, keys.timeout)
        except BaseException:
            for s in socks:
                net.close_quietly(s)
            raise
        self.socks[0], self.socks[1] = socks
        for lane in (0, 1):
            self.start_reader(lane, socks[lane], what)
        if self.failed is not None:  # failed while connecting: make sure nothing stays open
            for s in socks:
                net.close_quietly(s)


class ServerLink(Link):
    """The server side of one client link; requests arrive here, responses leave from here."""

    def __init__(self, key: tuple[bytes, int], client: int,
                 on_frame: OnFrame, on_fail: OnFail) -> None:
        super().__init__(f"pyxccl-rpc-srv-{client}-{key[1]}", on_frame, on_fail, track=False)
        self.key = key
        self.client = client

    def bulk_ready(self) -> bool:
        return self.socks[1] is not None

    def respond(self, rid: int, status: int, payload: Any = None, message: str = "") -> None:
        """Send a response (dropped when the link has failed: the client sees it fail)."""
        parts, nbytes = wire.response_parts(rid, status, payload, message)
        self.send(rid, parts, nbytes)

    @staticmethod
    def tune(sock: socket.socket, lane: int, send_timeout: float) -> None:
        """Socket options of an accepted lane."""
        _tune_lane(sock, lane, send_timeout)
