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
requests over them and fails over when one dies (:mod:`.client`). The
:class:`Accumulator` aggregates values written on many nodes (:mod:`.accumulator`).
See docs/rpc.md for the flows.
"""

from __future__ import annotations

from .accumulator import (AVG, MAX, MIN, SUM, Accumulator, AccumulatorServer, Aggregator, Avg,
                          Max, Min, Sum, serve_accumulators)
from .dealer import ClientDealer, ServerDealer
from .default import create_client, create_server, get_service, init, shutdown
from .errors import (NoSuchServer, ProtocolError, RemoteError, RpcClosed, RpcError, RpcTimeout,
                     ServerLost)
from .master import Master
from .messages import Request, Response
from .service import RpcService
from .view import NodeInfo

__all__ = [
    "AVG", "Accumulator", "AccumulatorServer", "Aggregator", "Avg", "ClientDealer", "MAX", "MIN",
    "Master", "Max", "Min", "NoSuchServer", "NodeInfo", "ProtocolError", "RemoteError", "Request",
    "Response", "RpcClosed", "RpcError", "RpcService", "RpcTimeout", "SUM", "ServerDealer",
    "ServerLost", "Sum", "create_client", "create_server", "init", "serve_accumulators",
    "get_service", "shutdown",
]
