"""Transports behind one contract (:mod:`.base`): shm, socket, local.

:func:`choose` picks the transport for a peer from the peers' host identity.
"""

from __future__ import annotations

from .base import PeerInfo, RecvConnector, SendConnector, Transport, TransportContext


def choose(me: PeerInfo, peer: PeerInfo, forced: str = "auto") -> str:
    """The transport name for ``peer``: local (same process), shm (same host) or socket.

    ``forced`` (PYXCCL_TRANSPORT) other than ``auto`` applies to every peer that can use it;
    socket works for every peer, shm and local only where they reach.
    """
    same_host = me.host == peer.host
    same_proc = same_host and me.pid == peer.pid
    if forced == "socket":
        return "socket"
    if forced == "local" and same_proc:
        return "local"
    if forced in ("shm", "local", "auto") and same_host:
        return "local" if same_proc else "shm"
    return "socket"


def create(name: str, ctx: TransportContext) -> Transport:
    """Instantiate transport ``name`` for a communicator."""
    if name == "shm":
        from .shm import ShmTransport
        return ShmTransport(ctx)
    if name == "local":
        from .local import LocalTransport
        return LocalTransport(ctx)
    if name == "socket":
        from .socket import SocketTransport
        return SocketTransport(ctx)
    raise ValueError(f"unknown transport {name!r}")


__all__ = ["PeerInfo", "RecvConnector", "SendConnector", "Transport", "TransportContext", "choose", "create"]
