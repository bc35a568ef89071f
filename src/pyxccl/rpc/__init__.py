"""pRPC in pyxccl: an RPC framework for ML workloads (parameter sync, metrics, control).

A *master* (``pyxccl-master`` or :class:`Master`) is the registry of one namespace.
Each process runs one node, an :class:`RpcService`, that registers with it and gets the
global view. Servers and clients are *dealers*::

    from pyxccl import rpc
    rpc.init("127.0.0.1:29600")                    # or PYXCCL_RPC_MASTER
    server = rpc.create_server("params")           # on some nodes
    server.serve(lambda msg: {"ok": True, "n": len(msg["grad"])})
    client = rpc.create_client("params")           # on others
    client.wait_servers(1)
    client.call({"grad": np.zeros(1 << 20, np.float32)}, timeout=5)

Payloads are bytes, numbers, strings, lists, dicts and numpy arrays (:mod:`.codec`);
large arrays go zero-copy. Several servers may share a service id: the client spreads
requests over them and fails over when one dies (:mod:`.service`). The
:class:`Accumulator` aggregates values written on many nodes (:mod:`.accumulator`).
See docs/rpc.md for the flows.
"""

from __future__ import annotations

import threading
from typing import Any

from .accumulator import (AVG, MAX, MIN, SUM, Accumulator, AccumulatorServer, Aggregator, Avg,
                          Max, Min, Sum, serve_accumulators)
from .dealer import ClientDealer, Request, Response, ServerDealer
from .errors import (NoSuchServer, ProtocolError, RemoteError, RpcClosed, RpcError, RpcTimeout,
                     ServerLost)
from .master import Master
from .service import RpcService
from .view import NodeInfo

_default: RpcService | None = None
_default_lock = threading.Lock()


def init(master: str | tuple[str, int] | None = None, *, secret: bytes = b"",
         timeout: float | None = None) -> RpcService:
    """This process's node (created on the first call; later calls return it)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = RpcService(master, secret=secret, timeout=timeout)
        return _default


def get_service() -> RpcService:
    """This process's node (:func:`init` with the defaults if there is none yet)."""
    return _default if _default is not None else init()


def create_server(service_id: str | int) -> ServerDealer:
    """A server of ``service_id`` on this process's node."""
    return get_service().create_server(service_id)


def create_client(service_id: str | int, **kwargs: Any) -> ClientDealer:
    """A client of ``service_id`` (keywords: timeout, idempotent, policy)."""
    return get_service().create_client(service_id, **kwargs)


def shutdown() -> None:
    """Close this process's node, if any."""
    global _default
    with _default_lock:
        svc, _default = _default, None
    if svc is not None:
        svc.close()


__all__ = [
    "AVG", "Accumulator", "AccumulatorServer", "Aggregator", "Avg", "ClientDealer", "MAX", "MIN",
    "Master", "Max", "Min", "NoSuchServer", "NodeInfo", "ProtocolError", "RemoteError", "Request",
    "Response", "RpcClosed", "RpcError", "RpcService", "RpcTimeout", "SUM", "ServerDealer",
    "ServerLost", "Sum", "create_client", "create_server", "init", "serve_accumulators",
    "get_service", "shutdown",
]
