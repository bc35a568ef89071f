"""The server side of a node: channels of requests, accepted links, dealers' registration.

:meth:`create_server` opens the service's channel (pRPC's RpcChannel) on this node and
tells the master (``UPDATE``), which broadcasts it. The listener accepts a client link's
lanes (HMAC challenge, hello); each lane's reader thread decodes requests and puts them
in their service's channel, where :meth:`ServerDealer.recv_request` takes them; a request
for a service this node does not (or no longer) serve is answered ENOSUCHSERVER, and the
client forwards it. When the last server of an id on this node closes, the requests
still queued are answered ENOSUCHSERVER the same way.
"""

from __future__ import annotations

import socket
import threading

from .. import log
from ..bootstrap import net
from ..errors import CollectiveTimeout, PeerLostError
from . import wire
from . import errors as E
from .channel import Channel
from .dealer import ServerDealer
from .frontend import ServerLink
from .link import Link
from .messages import Request, service_id
from .view import View


class ServerSide(View):
    """The server half of :class:`~pyxccl.rpc.service.RpcService` (a mixin)."""

    timeout: float
    secret: bytes
    _lock: threading.Lock
    _links: dict[tuple[bytes, int], ServerLink]
    _channels: dict[str, Channel]

    def _announce(self) -> None:  # pragma: no cover - provided by RpcService
        raise NotImplementedError

    def create_server(self, service: str | int) -> ServerDealer:
        """A server of ``service`` on this node; requests reach it once the master has told
        the clients (``wait_servers`` on the client side)."""
        sid = service_id(service)
        with self._lock:
            if self._closed:
                raise E.RpcClosed("RpcService is closed")
            chan = self._channels.get(sid)
            new = chan is None
            if chan is None:
                chan = self._channels[sid] = Channel(sid)
            chan.dealers += 1
            self.local_services.add(sid)
            self.view_cond.notify_all()
        if new:
            self._announce()
        return ServerDealer(self, sid, chan)

    def close_server(self, dealer: ServerDealer) -> None:
        """Forget ``dealer`` (its :meth:`~ServerDealer.close` calls this); the last server of
        the id on this node closes the channel, answers the requests still queued
        ENOSUCHSERVER and tells the master."""
        with self._lock:
            chan = self._channels[dealer.service]
            chan.dealers -= 1
            if chan.dealers > 0:
                chan.wake()
                return
            chan.shut()
            del self._channels[dealer.service]
            self.local_services.discard(dealer.service)
        left = chan.drain()
        chan.wake()
        for req in left:
            req.answer(E.ENOSUCHSERVER, None, f"service {dealer.service!r} closed on node "
                                              f"{self.rank}")
        if not self._closed:
            self._announce()

    def _accept_lane(self, conn: socket.socket, peer: str) -> None:
        link: ServerLink | None = None
        try:
            dl = net.Deadline(min(10.0, self.timeout))
            if not net.auth_accept(conn, self.secret, wire.DATA_LABEL, dl, f"client at {peer}"):
                log.warn("pRPC node %d: connection from %s failed authentication", self.rank,
                         peer, rank=self.rank)
                net.close_quietly(conn)
                return
            lane, client, token, link_id = wire.parse_hello(
                bytes(net.recv_exact(conn, wire.HELLO.size, dl, f"client at {peer}")))
            ServerLink.tune(conn, lane, self.timeout)
            with self._lock:
                if self._closed:
                    net.close_quietly(conn)
                    return
                key = (token, link_id)
                link = self._links.get(key)
                if link is None:
                    link = self._links[key] = ServerLink(key, client, self._on_request_frame,
                                                         self._on_server_link_fail)
                link.socks[lane] = conn
            if link.failed is not None:
                net.close_quietly(conn)
                return
        except (PeerLostError, CollectiveTimeout, E.ProtocolError, OSError) as exc:
            log.warn("pRPC node %d: dropped connection from %s: %s", self.rank, peer, exc,
                     rank=self.rank)
            net.close_quietly(conn)
            return
        link.read_loop(lane, conn, f"client node {client} at {peer}")

    def _on_server_link_fail(self, link: Link, unsent: list[int], exc: BaseException) -> None:
        with self._lock:
            if self._links.get(link.key) is link:  # type: ignore[attr-defined]
                del self._links[link.key]  # type: ignore[attr-defined]

    def _on_request_frame(self, link: Link, frame: wire.Frame) -> None:
        sl: ServerLink = link  # type: ignore[assignment]
        if frame.kind != wire.KIND_REQUEST:
            raise E.ProtocolError(f"client node {sl.client} sent a response on a server link")
        chan = self._channels.get(frame.sid)
        if chan is None:
            sl.respond(frame.rid, E.ENOSUCHSERVER, message=f"no server of {frame.sid!r} on node "
                                                           f"{self.rank}")
            return
        try:
            payload = frame.payload()
        except E.ProtocolError as exc:
            sl.respond(frame.rid, E.EPROTO, message=str(exc))
            return
        if not chan.put(Request(frame.rid, frame.sid, payload, sl, sl.client)):
            sl.respond(frame.rid, E.ENOSUCHSERVER, message=f"service {frame.sid!r} closed on "
                                                           f"node {self.rank}")
