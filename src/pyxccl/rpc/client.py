"""The client side of a node: the pending-request table, routing, failover, deadlines.

* :meth:`ClientDealer.call` / ``send_request`` files the request under a new id, picks a
  server of its service (round robin, or the first live one) and hands the request to
  that node's :class:`~pyxccl.rpc.frontend.FrontEnd` (created on first use, connected on
  first send), or straight into the channel when the server is on this node (no
  network, no encoding). Responses come back on the link's reader threads; the one that
  pops the id from the pending table (under the node lock) delivers it, so every
  request completes exactly once.
* A FrontEnd that fails marks its node broken for :data:`RETRY_AFTER` seconds; the
  requests it never wrote are forwarded to another server of their service, those it
  may have written fail with ServerLost (forwarded too when the client is
  ``idempotent``); a server answering ENOSUCHSERVER (its service closed) forwards too.
  With no server left a request fails at once with NoSuchServer. A node the master
  reports gone loses its FrontEnd; a node that (re)joins is used by the next request.
* Every request has a deadline: ``call`` waits on its own lock with that timeout; the
  asynchronous ones sit in a heap that a timer thread expires with RpcTimeout.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import Any

from .. import log
from ..errors import InvalidArgument
from . import codec, wire
from . import errors as E
from .channel import Channel
from .dealer import ClientDealer
from .frontend import FrontEnd
from .link import Link
from .messages import Request, Response, service_id, warn_late
from .view import View

RETRY_AFTER = 1.0
"""seconds a node whose link failed is skipped before a new link is tried"""
POLICIES = ("round_robin", "first")


class PendingCall:
    """One pending request: its payload (kept for forwarding), deadline and where it went.

    Lives in the node's pending table (``RpcService._calls``) from
    :meth:`ClientSide.dealer_send` / :meth:`ClientSide.dealer_call` until whoever pops it
    there completes it, exactly once.
    """

    __slots__ = ("rid", "sid", "payload", "frame", "deadline", "dealer", "waiter", "response",
                 "tried", "node", "link", "idempotent")

    def __init__(self, rid: int, dealer: ClientDealer, payload: Any, timeout: float,
                 sync: bool) -> None:
        self.rid = rid
        self.sid = dealer.service
        self.payload = payload
        self.frame: tuple[list[Any], int] | None = None
        self.deadline = time.monotonic() + timeout
        self.dealer = dealer
        self.waiter: Any = None
        if sync:
            self.waiter = threading.Lock()
            self.waiter.acquire()
        self.response: Response | None = None
        self.tried: set[int] = set()
        self.node = -1
        self.link: Link | None = None
        self.idempotent = dealer.idempotent

    def encoded(self) -> tuple[list[Any], int]:
        if self.frame is None:
            meta, bufs = codec.encode(self.payload)
            self.frame = wire.frame_parts(wire.KIND_REQUEST, 0, self.rid, self.sid.encode(),
                                          meta, bufs)
        return self.frame


class ClientSide(View):
    """The client half of :class:`~pyxccl.rpc.service.RpcService` (a mixin)."""

    timeout: float
    secret: bytes
    token: bytes
    _lock: threading.Lock
    _timer_cond: threading.Condition
    _calls: dict[int, PendingCall]
    _heap: list[tuple[float, int]]
    _next_rid: int
    _fes: dict[int, FrontEnd]
    _broken: dict[int, float]
    _channels: dict[str, Channel]

    def create_client(self, service: str | int, *, timeout: float | None = None,
                      idempotent: bool = False, policy: str = "round_robin") -> ClientDealer:
        """A client of ``service``. ``timeout``: default per-request timeout (seconds);
        ``idempotent``: requests lost with a broken connection are resent to another server
        instead of failing with ServerLost; ``policy``: ``round_robin`` over the servers, or
        ``first`` (always the lowest-ranked live one)."""
        sid = service_id(service)
        if policy not in POLICIES:
            raise InvalidArgument(f"policy must be one of {POLICIES}, got {policy!r}")
        t = self.timeout if timeout is None else float(timeout)
        if not t > 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout!r}")
        if self._closed:
            raise E.RpcClosed("RpcService is closed")
        return ClientDealer(self, sid, t, idempotent, policy)

    def dealer_send(self, dealer: ClientDealer, payload: Any, timeout: float) -> int:
        """File and route a request of ``dealer``; its response (or error response within
        ``timeout`` seconds) goes to :meth:`ClientDealer.deliver`. The request id."""
        return self._submit(dealer, payload, timeout, False).rid

    def dealer_call(self, dealer: ClientDealer, payload: Any, timeout: float) -> Response:
        """File and route a request of ``dealer`` and wait for its response; an RpcTimeout
        response when none came within ``timeout`` seconds."""
        return self._wait(self._submit(dealer, payload, timeout, True), timeout)

    def _submit(self, dealer: ClientDealer, payload: Any, timeout: float,
                sync: bool) -> PendingCall:
        with self._lock:
            if self._closed:
                raise E.RpcClosed("RpcService is closed")
            rid = self._next_rid
            self._next_rid += 1
            call = PendingCall(rid, dealer, payload, timeout, sync)
            self._calls[rid] = call
            if not sync:
                heap = self._heap
                heapq.heappush(heap, (call.deadline, rid))
                if heap[0][1] == rid:
                    self._timer_cond.notify()
        self._route(call, first=True)
        return call

    def _pick(self, call: PendingCall) -> int | None:
        """The node for ``call`` (under the lock), None when no server is left."""
        remote = self.targets.get(call.sid, ())
        local = call.sid in self._channels and self.rank not in call.tried
        if call.tried or self._broken:
            now = time.monotonic()
            for n, until in list(self._broken.items()):
                if until <= now:
                    del self._broken[n]
            cands = [n for n in remote if n not in call.tried and n not in self._broken]
        else:
            cands = list(remote)
        if local:
            cands.append(self.rank)
        if not cands:
            return None
        if call.dealer.policy == "first":
            return min(cands)
        return cands[call.dealer.next_turn() % len(cands)]

    def _route(self, call: PendingCall, first: bool = False) -> None:
        """Hand ``call`` to a server; InvalidArgument (payload) raises only on the first try."""
        try:
            self._route_once(call)
        except InvalidArgument as exc:
            with self._lock:
                mine = self._calls.pop(call.rid, None) is call
            if first:
                raise
            if mine:
                self._finish(call, E.RpcError(f"payload cannot be sent: {exc}"))

    def _route_once(self, call: PendingCall) -> None:
        rid = call.rid
        while True:
            chan = fe = None
            with self._lock:
                if self._calls.get(rid) is not call:
                    return
                node = self._pick(call)
                if node is None:
                    del self._calls[rid]
                else:
                    call.tried.add(node)
                    call.node = node
                    if node == self.rank:
                        chan = self._channels.get(call.sid)
                    else:
                        fe = self._fes.get(node)
                        if fe is None:
                            info = self.nodes[node]
                            fe = self._fes[node] = FrontEnd(
                                self, node, (info.host, info.port), self._on_response_frame,
                                self._on_frontend_fail)
            if node is None:
                n = len(call.tried)
                self._finish(call, E.NoSuchServer(
                    f"no server of service {call.sid!r} is left" +
                    (f" (tried {n} node{'s' * (n > 1)})" if n else "")))
                return
            if chan is not None:
                codec.check(call.payload)
                if chan.put(Request(rid, call.sid, call.payload, self, self.rank)):
                    return
                continue
            if fe is not None:
                parts, nbytes = call.encoded()
                call.link = fe
                if fe.send(rid, parts, nbytes):
                    return

    def _finish(self, call: PendingCall, error: E.RpcError | None, payload: Any = None,
                server: int | None = None) -> None:
        """Deliver the response of a call already removed from the pending table."""
        resp = Response(call.rid, payload, error, server)
        if call.waiter is not None:
            call.response = resp
            call.waiter.release()
        else:
            call.dealer.deliver(resp)

    def _settle(self, rid: int, error: E.RpcError | None, payload: Any = None,
                server: int | None = None) -> bool:
        with self._lock:
            call = self._calls.pop(rid, None)
        if call is None:
            return False
        self._finish(call, error, payload, server)
        return True

    def _wait(self, call: PendingCall, timeout: float) -> Response:
        if not call.waiter.acquire(timeout=max(0.0, call.deadline - time.monotonic())):
            with self._lock:
                mine = self._calls.pop(call.rid, None) is call
            if mine:
                if call.link is not None:
                    call.link.in_flight.discard(call.rid)
                return Response(call.rid, None, E.RpcTimeout(
                    f"no response to request {call.rid} of service {call.sid!r} within "
                    f"{timeout:g}s (sent to node {call.node})"))
            call.waiter.acquire()
        assert call.response is not None
        return call.response

    def respond(self, rid: int, status: int, payload: Any = None, message: str = "") -> None:
        """The origin of same-node requests: a local server's answer completes the call."""
        if status == E.OK:
            codec.check(payload)
            if not self._settle(rid, None, payload, self.rank):
                warn_late(rid, "local response")
        elif status == E.ENOSUCHSERVER:
            with self._lock:
                call = self._calls.get(rid)
            if call is not None:
                self._route(call)
        else:
            self._settle(rid, E.from_status(status, message), None, self.rank)

    def _on_response_frame(self, link: Link, frame: wire.Frame) -> None:
        rid = frame.rid
        link.in_flight.discard(rid)
        node = link.node  # type: ignore[attr-defined]
        if frame.kind != wire.KIND_RESPONSE:
            raise E.ProtocolError(f"node {node} sent a request on a client link")
        if frame.status == E.ENOSUCHSERVER:
            with self._lock:
                call = self._calls.get(rid)
            if call is not None:
                self._route(call)  # the node is in call.tried: another server, or NoSuchServer
            return
        if frame.status != E.OK:
            error: E.RpcError | None = E.from_status(frame.status, frame.message())
            payload = None
        else:
            try:
                payload, error = frame.payload(), None
            except E.ProtocolError as exc:
                payload, error = None, exc
        if not self._settle(rid, error, payload, node):
            warn_late(rid, "response")

    def _on_frontend_fail(self, link: Link, unsent: list[int], exc: BaseException) -> None:
        fe: FrontEnd = link  # type: ignore[assignment]
        lost: list[PendingCall] = []
        again: list[PendingCall] = []
        with self._lock:
            if self._fes.get(fe.node) is fe:
                del self._fes[fe.node]
            if not self._closed and fe.node in self.nodes:
                self._broken[fe.node] = time.monotonic() + RETRY_AFTER
            for rid in unsent:
                call = self._calls.get(rid)
                if call is not None:
                    again.append(call)
            for rid in list(fe.in_flight):
                call = self._calls.get(rid)
                if call is None or call in again:
                    continue
                if call.idempotent:
                    again.append(call)
                else:
                    del self._calls[rid]
                    lost.append(call)
        if not self._closed and (lost or again or fe.node in self.nodes):
            log.warn("pRPC node %d: link to node %d failed (%s: %s); %d request(s) forwarded, "
                     "%d lost in flight", self.rank, fe.node, type(exc).__name__, exc, len(again),
                     len(lost), rank=self.rank)
        for call in lost:
            self._finish(call, E.ServerLost(
                f"connection to node {fe.node} broke after request {call.rid} of service "
                f"{call.sid!r} was sent ({type(exc).__name__}: {exc})"))
        for call in again:
            self._route(call)

    def _timer_loop(self) -> None:
        while True:
            expired: list[PendingCall] = []
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                heap = self._heap
                while heap and heap[0][0] <= now:
                    _, rid = heapq.heappop(heap)
                    call = self._calls.pop(rid, None)
                    if call is not None:
                        expired.append(call)
                if len(heap) > 4096 and len(heap) > 4 * len(self._calls):
                    self._heap = heap = [(c.deadline, r) for r, c in self._calls.items()
                                         if c.waiter is None]
                    heapq.heapify(heap)
                if not expired:
                    self._timer_cond.wait(min(1.0, heap[0][0] - now) if heap else 1.0)
            for call in expired:
                if call.link is not None:
                    call.link.in_flight.discard(call.rid)
                self._finish(call, E.RpcTimeout(
                    f"no response to request {call.rid} of service {call.sid!r} within the "
                    f"timeout (sent to node {call.node})"))
