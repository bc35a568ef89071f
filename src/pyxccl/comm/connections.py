"""A communicator's peers and the connectors towards them.

At init every rank allgathers its peer info over the bootstrap (:func:`meet_peers`:
host identity, pid and pid namespace, doorbell, slot geometry, a topology summary),
which fixes the transport per peer (local, shm, socket). :class:`Connections` then
makes the connectors a call needs, lazily, the first time they are needed: per
(peer, channel) the receiving side sets up its connector and sends the connect info
over the bootstrap; the sending side waits for it and attaches.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import topo
from ..bootstrap import Bootstrap
from ..config import Config
from ..errors import CollectiveTimeout, PeerLostError, TransportError
from ..transport import PeerInfo, TransportContext, choose, create, pid_namespace
from .liveness import Liveness

#: bootstrap tags for connector set-up: + channel (host buffers; device buffers' connectors)
TAG_CONNECT = 1 << 20
TAG_DEVICE_CONNECT = (1 << 20) + (1 << 19)
#: bootstrap tag of the per-call swap of device buffer handles (single copy on a device)
TAG_DEVICE_BUFFERS = 1 << 23
#: bootstrap tag of the swap of registered buffers' descriptors (Communicator.register)
TAG_DEVICE_WINDOWS = (1 << 23) + 1

ConnKey = tuple[int, int, str]  # (peer, channel, "send" | "recv")


@dataclass(frozen=True)
class Peers:
    """What the ranks told each other at init, and what follows from it."""

    infos: list[PeerInfo]
    kinds: list[str]
    """the transport towards each rank ("self" for this one)"""
    watch: dict[int, int]
    """rank -> pid of the peers whose processes this rank can watch (same host and pid namespace)"""
    layout: topo.HostLayout
    system: Any
    """this host's topology"""
    slot_bytes: int
    nslots: int

    @property
    def hosts(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(h) for h in self.layout.hosts)


def meet_peers(bootstrap: Bootstrap, rank: int, cfg: Config, bell_path: str) -> Peers:
    """Allgather this rank's peer info; choose a transport per peer (collective over the ranks)."""
    system = topo.local_system(cfg, dump=rank == 0, rank=rank)
    me = {"rank": rank, "host": topo.host_hash(cfg), "pid": os.getpid(), "doorbell": bell_path,
          "hostname": socket.gethostname(), "slot_bytes": cfg.slot_bytes, "nslots": cfg.nslots,
          "topo": topo.summarize(system), "pidns": pid_namespace()}
    infos = [json.loads(b) for b in bootstrap.allgather(json.dumps(me).encode())]
    peers = [PeerInfo(i["rank"], i["host"], i["pid"], i["doorbell"], i["hostname"]) for i in infos]
    mine = peers[rank]
    kinds = [choose(mine, p, cfg.transport) if p.rank != rank else "self" for p in peers]
    watch = {p.rank: p.pid for p, i in zip(peers, infos)  # same host and pid namespace: pidfds
             if p.rank != rank and p.host == mine.host and i.get("pidns") == infos[rank]["pidns"]}
    # the slot geometry must agree on every rank: rank 0's settings win
    return Peers(peers, kinds, watch, topo.host_layout([i["host"] for i in infos]), system,
                 int(infos[0]["slot_bytes"]), int(infos[0]["nslots"]))


class Connections:
    """The transports (one per kind) and connectors (per peer, channel, direction) of one communicator.

    Safe to use from several threads (the call queue's and the point-to-point lanes'):
    transports and connectors are made under a lock, the waits for a peer's connect info
    happen outside it.
    """

    def __init__(self, rank: int, kinds: list[str], ctx: TransportContext, bootstrap: Bootstrap,
                 liveness: Liveness, timeout: float, make_transport: Any = None, tag: int = TAG_CONNECT):
        """``make_transport(kind)``: a transport of that kind (default :func:`pyxccl.transport.create`);
        ``tag``: the bootstrap tag of connect info, + channel (device connectors have their own)."""
        self.rank, self.kinds, self.ctx, self.bootstrap = rank, kinds, ctx, bootstrap
        self.make_transport = make_transport or (lambda kind: create(kind, ctx))
        self.tag = tag
        self.liveness, self.timeout = liveness, timeout
        self.conns: dict[ConnKey, Any] = {}
        """every connector made so far (read freely; only this object adds to it)"""
        self.transports: dict[str, Any] = {}
        self._lock = threading.RLock()

    def transport(self, peer: int) -> Any:
        """The transport towards ``peer`` (made on first use)."""
        kind = self.kinds[peer]
        with self._lock:
            t = self.transports.get(kind)
            if t is None:
                t = self.transports[kind] = self.make_transport(kind)
            return t

    def get(self, needed: Iterable[ConnKey], what: str = "connecting",
            timeout: float | None = None) -> dict[ConnKey, Any]:
        """The connectors ``needed`` (made the first time they are needed), as a dict that holds them.

        ``timeout``: the running call's own (default the communicator's), for the connect info.
        """
        conns = self.conns
        if all(k in conns for k in needed):
            return conns
        try:
            self._connect_missing(needed, timeout or self.timeout)
        except PeerLostError as exc:
            raise self.liveness.lost_error(exc, what) from exc
        except (TransportError, CollectiveTimeout) as exc:  # e.g. a peer's listener went away with the peer
            err = self.liveness.wait_error(what)
            if err is not None:
                raise err from exc
            if isinstance(exc, CollectiveTimeout):  # name the call, not only the message it waited for
                raise CollectiveTimeout(f"rank {self.rank}: {what} timed out before its first step, while "
                                        f"connecting: {exc}") from None
            raise
        return conns

    def _connect_missing(self, needed: Iterable[ConnKey], timeout: float) -> None:
        missing = sorted(k for k in needed if k not in self.conns)
        for peer, ch, direction in missing:
            if direction == "recv":
                self.open_recv(peer, ch)
        for peer, ch, direction in missing:
            if direction == "send":
                try:
                    info = self.bootstrap.recv(peer, self.tag + ch, timeout=timeout, any_loss=True)
                except CollectiveTimeout:
                    raise CollectiveTimeout(f"channel {ch}: waited for rank {peer}'s connect info (has rank "
                                            f"{peer} issued this call?)") from None
                self.attach_send(peer, ch, info)

    def open_recv(self, peer: int, ch: int) -> Any:
        """Set up the receiving connector from ``peer`` on channel ``ch`` and send ``peer`` its connect info."""
        with self._lock:
            conn = self.conns.get((peer, ch, "recv"))
            if conn is None:
                conn, info = self.transport(peer).setup_recv(peer, ch)
                self.conns[(peer, ch, "recv")] = conn
                self.bootstrap.send(peer, self.tag + ch, info)
            return conn

    def attach_send(self, peer: int, ch: int, info: bytes) -> Any:
        """Attach the sending connector towards ``peer`` on channel ``ch`` with the ``info`` it sent."""
        with self._lock:
            conn = self.conns.get((peer, ch, "send"))
            if conn is None:
                conn = self.conns[(peer, ch, "send")] = self.transport(peer).connect_send(peer, ch, info)
            return conn

    def poll_send(self, peer: int, ch: int) -> Any:
        """The sending connector towards ``peer`` on channel ``ch`` if its connect info has come (attached
        now), else None; never waits."""
        conn = self.conns.get((peer, ch, "send"))
        if conn is not None:
            return conn
        try:
            info = self.bootstrap.recv(peer, self.tag + ch, timeout=0)
        except CollectiveTimeout:
            return None
        return self.attach_send(peer, ch, info)

    def towards(self, peers: "Iterable[int] | None" = None) -> list[Any]:
        """The connectors made so far towards ``peers`` (None: every peer), both directions."""
        with self._lock:
            conns = list(self.conns.items())
        return [c for (peer, _, _), c in conns if peers is None or peer in peers]

    def close(self) -> None:
        """Close every connector and transport (best effort; idempotent)."""
        with self._lock:
            conns, transports = list(self.conns.values()), list(self.transports.values())
            self.conns.clear()
            self.transports.clear()
        for item in conns + transports:
            try:
                item.close()
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
