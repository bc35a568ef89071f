"""Dealers: what :meth:`RpcService.create_server` and :meth:`RpcService.create_client` return.

Server side::

    server = svc.create_server("echo")
    req = server.recv_request(timeout=1.0)   # Request: .id, .payload, .client, .service
    server.send_response(req, {"echo": req.payload})

    server.serve(lambda payload: payload, nthreads=2)   # or: handler threads

Client side::

    client = svc.create_client("echo")
    client.wait_servers(2, timeout=10)
    value = client.call({"x": 1}, timeout=5)          # raises NoSuchServer, RpcTimeout, ...
    rid = client.send_request(np.arange(10))         # asynchronous
    resp = client.recv_response(timeout=5)           # Response: .request_id, .payload, .error

Every request gets exactly one response: the server's, or an error response
(NoSuchServer at once when no server is left, ServerLost when the connection broke
after sending, RpcTimeout when the call's timeout passed first).

A dealer reaches its node only through :class:`ServerBackend` / :class:`ClientBackend`
(what :class:`~pyxccl.rpc.service.RpcService` provides); the messages are
:mod:`.messages`, a server's queue is its :class:`~pyxccl.rpc.channel.Channel`.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Protocol

from ..errors import InvalidArgument
from . import errors as E
from .channel import WAKE, Channel
from .errors import RpcClosed
from .messages import Request, Response


class ServerBackend(Protocol):
    """What a :class:`ServerDealer` needs of its node's server side."""

    def close_server(self, dealer: "ServerDealer") -> None:
        """Forget ``dealer``; the last one of its id on the node closes the channel."""


class ClientBackend(Protocol):
    """What a :class:`ClientDealer` needs of its node's client side."""

    def dealer_send(self, dealer: "ClientDealer", payload: Any, timeout: float) -> int:
        """File and route a request whose response goes to ``dealer.deliver``; its id."""

    def dealer_call(self, dealer: "ClientDealer", payload: Any, timeout: float) -> Response:
        """File and route a request and wait for its response (or the timeout's error)."""

    def wait_servers(self, service: str, count: int = 1,
                     timeout: float | None = None) -> list[int]:
        """Wait until ``count`` servers of ``service`` are known; their node ranks."""

    def servers_of(self, service: str) -> list[int]:
        """Node ranks of the live servers of ``service``."""


class ServerDealer:
    """A server of ``service`` on this node (several may share one id, on one or many nodes)."""

    def __init__(self, svc: ServerBackend, service: str, channel: Channel) -> None:
        self.service = service
        self._svc = svc
        self._chan = channel
        self._closed = False
        self._threads: list[threading.Thread] = []

    def recv_request(self, timeout: float | None = None) -> Request:
        """The next request; waits at most ``timeout`` seconds (None: until one comes or close).

        Raises RpcTimeout when the wait passes, RpcClosed once this dealer is closed (a
        thread blocked here wakes at once when the service's last server on this node
        closes; when other servers of the id remain, within its timeout).
        """
        chan = self._chan
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise RpcClosed(f"server of {self.service!r} is closed")
            try:
                item = chan.queue.get(timeout=None if end is None
                                      else max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise E.RpcTimeout(f"no request for {self.service!r} within {timeout:g}s") \
                    from None
            if item is WAKE:
                if not chan.open:
                    chan.wake()  # wake the next waiter too
                    raise RpcClosed(f"server of {self.service!r} is closed")
                continue  # a wake-up for another (closed) dealer of this channel
            if not self._closed:
                return item
            with chan.lock:  # closed while waiting: hand the request back
                back = chan.open
                if back:
                    chan.queue.put(item)
            if not back:
                item.answer(E.ENOSUCHSERVER, None, f"service {self.service!r} closed")

    def send_response(self, request: Request, payload: Any = None) -> None:
        """Answer ``request`` with ``payload`` (arrays go zero-copy: leave them unchanged)."""
        request.answer(E.OK, payload)

    def send_error(self, request: Request, message: str) -> None:
        """Answer ``request`` with an error; the client gets RemoteError(message)."""
        request.answer(E.EREMOTE, None, str(message))

    def serve(self, handler: Callable[[Any], Any], nthreads: int = 1) -> "ServerDealer":
        """Answer every request with ``handler(payload)`` in ``nthreads`` background threads.

        An exception in the handler becomes a RemoteError at the client. Stops at close().
        """
        for i in range(nthreads):
            t = threading.Thread(target=self._serve_loop, args=(handler,), daemon=True,
                                 name=f"pyxccl-rpc-serve-{self.service}-{i}")
            self._threads.append(t)
            t.start()
        return self

    def _serve_loop(self, handler: Callable[[Any], Any]) -> None:
        while not self._closed:
            try:
                req = self.recv_request(timeout=0.5)
            except E.RpcTimeout:
                continue
            except RpcClosed:
                return
            try:
                result = handler(req.payload)
            except Exception as exc:  # noqa: BLE001 - a handler error answers the request
                self.send_error(req, f"{type(exc).__name__}: {exc}")
                continue
            try:
                self.send_response(req, result)
            except InvalidArgument as exc:
                self.send_error(req, f"handler result cannot be sent: {exc}")

    def close(self) -> None:
        """Stop serving; the last server of the id on this node unregisters it (idempotent).

        Requests still queued are answered ENOSUCHSERVER, so their clients forward them.
        """
        if self._closed:
            return
        self._closed = True
        self._svc.close_server(self)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5.0)

    def __enter__(self) -> "ServerDealer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClientDealer:
    """A client of ``service``: spreads requests over its servers, one message at a time."""

    def __init__(self, svc: ClientBackend, service: str, timeout: float, idempotent: bool,
                 policy: str) -> None:
        self.service = service
        self.timeout = timeout
        """default timeout of every request, seconds"""
        self.idempotent = idempotent
        self.policy = policy
        self._svc = svc
        self._responses: queue.SimpleQueue[Response | None] = queue.SimpleQueue()
        self._rr = 0
        self._closed = False

    def _check(self, timeout: float | None) -> float:
        if self._closed:
            raise RpcClosed(f"client of {self.service!r} is closed")
        t = self.timeout if timeout is None else float(timeout)
        if not t > 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout!r}")
        return t

    def send_request(self, payload: Any, timeout: float | None = None) -> int:
        """Send ``payload`` to one server; returns the request id. Its Response (or error
        response within ``timeout`` seconds) comes from :meth:`recv_response`."""
        return self._svc.dealer_send(self, payload, self._check(timeout))

    def recv_response(self, timeout: float | None = None) -> Response:
        """The next Response to a :meth:`send_request`, in completion order.

        Waits at most ``timeout`` seconds (default: this client's request timeout plus one
        second, by when every request sent before has its response); RpcTimeout if none.
        """
        wait = self.timeout + 1.0 if timeout is None else timeout
        try:
            item = self._responses.get(timeout=wait)
        except queue.Empty:
            raise E.RpcTimeout(f"no response for {self.service!r} within {wait:g}s") from None
        if item is None:
            self._responses.put(None)
            raise RpcClosed(f"client of {self.service!r} is closed")
        return item

    def call(self, payload: Any, timeout: float | None = None) -> Any:
        """Send ``payload`` and wait for its response; returns the payload or raises the
        typed error (NoSuchServer, ServerLost, RpcTimeout, RemoteError, ...)."""
        return self._svc.dealer_call(self, payload, self._check(timeout)).result()

    def wait_servers(self, count: int = 1, timeout: float | None = None) -> list[int]:
        """Wait until at least ``count`` servers of the service are known; their node ranks."""
        return self._svc.wait_servers(self.service, count, timeout)

    def servers(self) -> list[int]:
        """Node ranks of the live servers of the service, as this node sees them now."""
        return self._svc.servers_of(self.service)

    def close(self) -> None:
        """Stop accepting requests; wake a thread blocked in recv_response (idempotent)."""
        if not self._closed:
            self._closed = True
            self._responses.put(None)

    def deliver(self, resp: Response) -> None:
        """Queue ``resp`` for :meth:`recv_response` (the node's client side calls this once
        per :meth:`send_request`)."""
        self._responses.put(resp)

    def next_turn(self) -> int:
        """Advance this client's round-robin counter and return it (the node's client side
        sends the request to server ``turn % count``; called under the node lock)."""
        self._rr += 1
        return self._rr

    def __enter__(self) -> "ClientDealer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ClientBackend", "ClientDealer", "Request", "Response", "ServerBackend", "ServerDealer"]
