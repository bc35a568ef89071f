"""The pRPC master: the registry of one RPC namespace (``pyxccl-master``, or :class:`Master`).

Every node (:class:`~pyxccl.rpc.service.RpcService`) keeps one control connection to the
master. The flow, as in pRPC:

1. The node connects, answers the challenge (HMAC of the namespace secret) and sends
   ``REGISTER {host, port, services, pid, hostname, token}``.
2. The master gives it the next node rank (never reused), answers
   ``WELCOME {rank, nodes}`` with the global view (every node's rank, data address and
   services) and broadcasts ``JOIN {node}`` to every other node.
3. ``UPDATE {services}`` from a node (a server created or closed) is stored and broadcast
   as ``UPDATE {node}`` to every node, the sender included.
4. ``BYE``, or the control connection breaking (process killed), removes the node; the
   master broadcasts ``LEAVE {rank}``.

The master holds one lock while it changes the view and writes the broadcast, so every
node sees the changes in the same order. A node that does not read its control
connection for :data:`SEND_TIMEOUT` seconds is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from typing import Any

from .. import config, log
from ..bootstrap import net
from ..errors import CollectiveTimeout, ConfigError, PeerLostError
from . import wire
from .errors import ProtocolError

SEND_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0


def _node_info(body: dict[str, Any], rank: int) -> dict[str, Any]:
    """The validated node record from a REGISTER body; ProtocolError when malformed."""
    host, port = body.get("host"), body.get("port")
    services, token = body.get("services", []), body.get("token")
    if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ProtocolError("REGISTER lacks a valid host/port")
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise ProtocolError("REGISTER services must be a list of strings")
    if not isinstance(token, bytes) or len(token) != wire.TOKEN_BYTES:
        raise ProtocolError("REGISTER lacks a valid node token")
    pid = body.get("pid", 0)
    hostname = body.get("hostname", "")
    return {"rank": rank, "host": host, "port": port, "services": sorted(set(services)),
            "pid": pid if isinstance(pid, int) else 0,
            "hostname": hostname if isinstance(hostname, str) else "", "token": token}


class Master:
    """A running master: ``Master(host="127.0.0.1", port=0, secret=b"")``.

    ``secret`` authenticates every node (the same bytes must be given to each RpcService);
    the empty secret admits anyone who can reach the port, so the default binds loopback.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret: bytes = b"") -> None:
        self.secret = bytes(secret)
        self._lock = threading.Lock()
        self._nodes: dict[int, dict[str, Any]] = {}
        self._conns: dict[int, socket.socket] = {}
        self._next_rank = 0
        self._closed = False
        lsock = net.listen(host, port)
        self.address: tuple[str, int] = (host, int(lsock.getsockname()[1]))
        """``(host, port)`` the master listens on."""
        self._listener = net.Listener(lsock, self._serve, "pyxccl-rpc-master")
        log.info("pRPC master listening on %s", self.address_str)

    @property
    def address_str(self) -> str:
        """``host:port`` (the value for PYXCCL_RPC_MASTER)."""
        return net.fmt_addr(*self.address)

    def nodes(self) -> dict[int, dict[str, Any]]:
        """A snapshot of the global view: node rank -> node record."""
        with self._lock:
            return {r: dict(n) for r, n in self._nodes.items()}

    # ------------------------------------------------------------ per node
    def _send(self, rank: int, frame: bytes) -> None:
        conn = self._conns.get(rank)
        if conn is None:
            return
        try:
            conn.sendall(frame)
        except OSError as exc:
            log.warn("pRPC master: node %d does not take its control messages (%s); dropped",
                     rank, exc)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # its reader sees EOF and removes the node

    def _broadcast(self, frame: bytes, skip: int = -1) -> None:
        for r in list(self._conns):
            if r != skip:
                self._send(r, frame)

    def _serve(self, conn: socket.socket, peer: str) -> None:
        rank = -1
        try:
            dl = net.Deadline(HANDSHAKE_TIMEOUT)
            if not net.auth_accept(conn, self.secret, wire.MASTER_LABEL, dl, f"node at {peer}"):
                log.warn("pRPC master: connection from %s failed authentication (wrong secret)",
                         peer)
                return
            ctype, body = wire.read_control(conn, dl, f"node at {peer}")
            if ctype != wire.C_REGISTER:
                raise ProtocolError(f"expected REGISTER, got control type {ctype}")
            conn.settimeout(None)
            wire.set_send_timeout(conn, SEND_TIMEOUT)
            with self._lock:
                if self._closed:
                    return
                rank = self._next_rank
                self._next_rank += 1
                info = _node_info(body, rank)
                self._nodes[rank] = info
                self._conns[rank] = conn
                self._send(rank, wire.control_bytes(wire.C_WELCOME, {
                    "rank": rank, "nodes": list(self._nodes.values())}))
                self._broadcast(wire.control_bytes(wire.C_JOIN, {"node": info}), skip=rank)
            log.info("pRPC master: node %d joined from %s:%d (pid %d) serving %s", rank,
                     info["host"], info["port"], info["pid"], info["services"])
            self._loop(conn, rank, peer)
        except (PeerLostError, CollectiveTimeout, ProtocolError, OSError) as exc:
            if not self._closed:
                log.info("pRPC master: connection from %s (node %d) ended: %s", peer, rank, exc)
        finally:
            if rank >= 0:
                with self._lock:
                    self._conns.pop(rank, None)
                    if self._nodes.pop(rank, None) is not None and not self._closed:
                        self._broadcast(wire.control_bytes(wire.C_LEAVE, {"rank": rank}))
                log.info("pRPC master: node %d left", rank)
            net.close_quietly(conn)

    def _loop(self, conn: socket.socket, rank: int, peer: str) -> None:
        while True:
            ctype, body = wire.read_control(conn, None, f"node {rank} at {peer}")
            if ctype == wire.C_BYE:
                return
            if ctype != wire.C_UPDATE:
                raise ProtocolError(f"node {rank} sent unexpected control type {ctype}")
            services = body.get("services")
            if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
                raise ProtocolError(f"node {rank} sent an UPDATE without a services list")
            with self._lock:
                info = self._nodes.get(rank)
                if info is None:
                    return
                info["services"] = sorted(set(services))
                self._broadcast(wire.control_bytes(wire.C_UPDATE, {"node": info}))

    def close(self) -> None:
        """Stop: close every control connection (nodes keep their last view)."""
        with self._lock:
            self._closed = True
        self._listener.close()

    def __enter__(self) -> "Master":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """``pyxccl-master [--host H] [--port P] [--secret-file F]``: run a master until killed.

    Without --host/--port it binds PYXCCL_RPC_MASTER when that is set, else
    127.0.0.1 on an ephemeral port. It prints ``pyxccl-master listening on host:port``.
    """
    p = argparse.ArgumentParser(prog="pyxccl-master", description=main.__doc__)
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to bind (default ephemeral)")
    p.add_argument("--secret-file", default=None,
                   help="file whose bytes are the namespace secret (default: none, open)")
    args = p.parse_args(argv)
    host, port = "127.0.0.1", 0
    try:  # a bad PYXCCL_* value: one line and exit status 2, like the other tools
        if config.get().rpc_master:
            try:
                host, port = net.split_host_port(config.get().rpc_master)
            except ValueError as exc:
                raise ConfigError(f"PYXCCL_RPC_MASTER: {exc}") from None
    except ConfigError as exc:
        print(f"pyxccl-master: error: {exc}", file=sys.stderr)
        return 2
    host = args.host or host
    port = port if args.port is None else args.port
    secret = b""
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            secret = f.read().strip()
    master = Master(host, port, secret)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"pyxccl-master listening on {master.address_str}", flush=True)
    while not stop.wait(1.0):
        pass
    master.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
