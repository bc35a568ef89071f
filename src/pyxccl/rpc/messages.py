"""The messages both sides of a node share: :class:`Request`, :class:`Response`, service ids.

A :class:`Request` is what a server dealer takes from its channel; it remembers its
*origin* (a :class:`RequestOrigin`: the server link it came on, or this node's client
side for a same-node request), which carries the answer back. A :class:`Response` is
what a client dealer gets: the payload, or the typed error. This module imports no
other part of the node, so the dealers, the client side and the server side all build
on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .. import log
from ..errors import InvalidArgument
from .errors import RpcError


class RequestOrigin(Protocol):
    """Where a request came from, and so where its answer goes."""

    def respond(self, rid: int, status: int, payload: Any = None, message: str = "") -> None:
        """Send the answer to request ``rid``: a wire status (``errors.OK``, ...) and the
        payload or error message; raises InvalidArgument when the payload cannot be sent."""


@dataclass
class Response:
    """The answer to one request: ``payload`` when ``error`` is None, else the typed error."""

    request_id: int
    payload: Any = None
    error: RpcError | None = None
    server: int | None = None
    """node rank of the server that answered (None for errors raised on the client)"""

    @property
    def ok(self) -> bool:
        """Whether the server answered with a payload."""
        return self.error is None

    def result(self) -> Any:
        """The payload, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.payload


class Request:
    """One request as a server sees it."""

    __slots__ = ("id", "service", "payload", "client", "_origin", "_answered")

    def __init__(self, rid: int, service: str, payload: Any, origin: RequestOrigin,
                 client: int) -> None:
        self.id = rid
        self.service = service
        self.payload = payload
        self.client = client
        """node rank of the client"""
        self._origin = origin
        self._answered = False

    def answer(self, status: int, payload: Any = None, message: str = "") -> None:
        """Answer this request once with a wire status (``errors.OK``, ``EREMOTE``,
        ``ENOSUCHSERVER``) and the payload or error message.

        The node's own answer path: applications answer through
        :meth:`ServerDealer.send_response` and :meth:`ServerDealer.send_error`. Raises
        InvalidArgument when the request was already answered or the payload cannot be
        encoded (then it stays unanswered).
        """
        if self._answered:
            raise InvalidArgument(f"request {self.id} was already answered")
        self._origin.respond(self.id, status, payload, message)  # raises if it cannot encode
        self._answered = True

    def __repr__(self) -> str:
        return f"Request(id={self.id}, service={self.service!r}, client={self.client})"


def service_id(service: Any) -> str:
    """The service id as a str (ints are accepted); InvalidArgument when empty or not one."""
    if isinstance(service, bool) or not isinstance(service, (str, int)) or service == "":
        raise InvalidArgument(f"service id must be a non-empty str or an int, got {service!r}")
    return str(service)


def warn_late(rid: int, what: str) -> None:
    """Log a response that came after its request was settled (timed out or failed over)."""
    log.trace("pRPC: dropped a late %s for request %d", what, rid)


__all__ = ["Request", "RequestOrigin", "Response", "service_id", "warn_late"]
