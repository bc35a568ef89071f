"""Typed errors of :mod:`pyxccl.rpc`, each with the pRPC-style code it travels under.

A response carries a status byte; :func:`from_status` turns a non-OK status and its
message back into the exception the caller sees, so a client gets the same typed error
whether it was raised locally (no server left, timeout) or reported by a server.

========================  ==============  ===============================================
exception                 code            meaning
========================  ==============  ===============================================
:class:`NoSuchServer`     ENOSUCHSERVER   no live server of the service id is left
:class:`ServerLost`       EPIPE           the connection broke while the request was out
:class:`RpcTimeout`       ETIMEDOUT       no response within the call's timeout
:class:`RemoteError`      EREMOTE         the server answered with an error
:class:`ProtocolError`    EPROTO          a peer sent bytes that are not pRPC frames
:class:`RpcClosed`        ESHUTDOWN       the dealer or service was closed
========================  ==============  ===============================================
"""

from __future__ import annotations

from ..errors import CollectiveTimeout, PeerLostError, PyxcclError, TransportError

OK = 0
ENOSUCHSERVER = 1
EPIPE = 2
ETIMEDOUT = 3
EREMOTE = 4
EPROTO = 5
ESHUTDOWN = 6


class RpcError(PyxcclError):
    """Base class of every RPC error; ``code`` names it (``"ENOSUCHSERVER"``, ...)."""

    code = "EIO"
    status = EREMOTE


class NoSuchServer(RpcError):
    """No live server of the service id is left (pRPC's ``ENOSUCHSERVER``)."""

    code = "ENOSUCHSERVER"
    status = ENOSUCHSERVER


class ServerLost(RpcError, PeerLostError):
    """The connection to the server broke after the request went out (``EPIPE``).

    The server may or may not have run the request; it is not resent unless the client
    was created with ``idempotent=True``.
    """

    code = "EPIPE"
    status = EPIPE


class RpcTimeout(RpcError, CollectiveTimeout):
    """No response within the call's timeout (``ETIMEDOUT``)."""

    code = "ETIMEDOUT"
    status = ETIMEDOUT


class RemoteError(RpcError):
    """The server answered with an error (``send_error``, or its handler raised)."""

    code = "EREMOTE"
    status = EREMOTE


class ProtocolError(RpcError, TransportError):
    """A peer sent something that is not a well-formed pRPC frame or payload (``EPROTO``)."""

    code = "EPROTO"
    status = EPROTO


class RpcClosed(RpcError):
    """The dealer or the RpcService was closed (``ESHUTDOWN``)."""

    code = "ESHUTDOWN"
    status = ESHUTDOWN


_BY_STATUS: dict[int, type[RpcError]] = {
    cls.status: cls for cls in (NoSuchServer, ServerLost, RpcTimeout, RemoteError, ProtocolError,
                                RpcClosed)}


def from_status(status: int, message: str) -> RpcError:
    """The exception for a response's non-OK ``status`` (unknown statuses: RemoteError)."""
    return _BY_STATUS.get(status, RemoteError)(message)
