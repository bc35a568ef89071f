"""Transports behind one contract (:mod:`.base`): shm, socket, local, and cuda_ipc for device memory.

Each transport is a folder with the same file set: ``__init__`` (re-exports its Transport),
``transport`` (the Transport: setup_recv / connect_send / close), ``connectors`` (its
connectors), and private extras (shm: ``files``, ``cma``; socket: ``progress``, ``wire``).
What they share: :mod:`.ring` (the slot ring of shm and local), :mod:`.doorbell`.

:func:`choose` picks the transport for a peer from the peers' host identity. The host-side
resources every communicator has whatever its peers (its doorbell, shared with the ranks of
its host, and the removal of files crashed processes left) are made here too, so nothing
outside ``transport/`` knows where shared memory lives.
"""

from __future__ import annotations

from .base import Capability, PeerInfo, RecvConnector, SendConnector, Transport, TransportContext
from .doorbell import Doorbell, attach_shared, create_shared
from .shm.files import pid_alive, pid_namespace
from .socket.wire import tune as tune_socket


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


def open_doorbell(comm_tag: str, rank: int, spin_us: float) -> tuple[Doorbell, str]:
    """This rank's doorbell, in memory the ranks of its host can map, and its name (for
    :class:`PeerInfo`: peers attach with :func:`attach_doorbell`). Files crashed processes
    left are removed first."""
    from .shm import files
    files.sweep_stale()
    name = files.doorbell_path(comm_tag, rank)
    return create_shared(name, spin_us=spin_us), name


def attach_doorbell(name: str, writer: int) -> Doorbell:
    """Another rank's doorbell of this host (by the name :func:`open_doorbell` gave), to ring it."""
    return attach_shared(name, writer=writer)


def close_doorbell(name: str) -> None:
    """Remove this rank's doorbell (its mappings stay valid until unmapped)."""
    from .shm import files
    files.remove(name)


def sweep_stale(min_age: float = 1.0) -> list[str]:
    """Remove the shared files of processes that no longer exist (after a peer was lost)."""
    from .shm import files
    return files.sweep_stale(min_age=min_age)


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


def create_device(name: str, ctx: TransportContext, device: object, slot_bytes: int, nslots: int) -> Transport:
    """Instantiate the device-memory transport ``name`` ("cuda_ipc") on ``device`` (:mod:`pyxccl.cuda`)."""
    if name == "cuda_ipc":
        from .cuda_ipc import CudaIpcTransport
        return CudaIpcTransport(ctx, device, slot_bytes, nslots)
    raise ValueError(f"unknown device transport {name!r}")


__all__ = ["Capability", "Doorbell", "PeerInfo", "RecvConnector", "SendConnector", "Transport", "TransportContext",
           "attach_doorbell", "choose", "close_doorbell", "create", "create_device", "open_doorbell", "pid_alive", "pid_namespace",
           "sweep_stale", "tune_socket"]
