"""RpcService: one pRPC node (one per process as a rule), registered with the master.

Start: listen for data links; connect to the master, answer its challenge, ``REGISTER``;
get this node's rank and the global view; a thread then follows the master's ``JOIN`` /
``UPDATE`` / ``LEAVE`` broadcasts (a node reported gone loses its FrontEnd). The client
side (routing, failover, deadlines) is :mod:`.client`, the server side (channels,
accepted links) :mod:`.server`; the dealers reach the node through the two sides' public
methods (:class:`~pyxccl.rpc.dealer.ClientBackend`, :class:`~pyxccl.rpc.dealer.ServerBackend`);
docs/rpc.md has the flows.
"""

from __future__ import annotations

import os
import socket
import threading

from .. import config, log
from ..bootstrap import net
from ..errors import CollectiveTimeout, ConfigError, InvalidArgument, PeerLostError
from . import wire
from . import errors as E
from .channel import Channel
from .client import ClientSide, PendingCall
from .frontend import FrontEnd, ServerLink
from .server import ServerSide
from .view import View


class RpcService(ClientSide, ServerSide):
    """One node: ``RpcService(master="host:port", secret=b"", timeout=None)``.

    ``master`` defaults to PYXCCL_RPC_MASTER, ``timeout`` (the default request timeout,
    seconds) to PYXCCL_RPC_TIMEOUT. ``secret`` must be the master's.
    """

    def __init__(self, master: str | tuple[str, int] | None = None, *, secret: bytes = b"",
                 timeout: float | None = None) -> None:
        cfg = config.get()
        self.timeout = float(cfg.rpc_timeout if timeout is None else timeout)
        if not self.timeout > 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout!r}")
        master = master or cfg.rpc_master
        if not master:
            raise ConfigError("no pRPC master: pass master='host:port' or set PYXCCL_RPC_MASTER "
                              "(start one with pyxccl-master)")
        try:
            mhost, mport = net.split_host_port(master) if isinstance(master, str) else master
        except ValueError as exc:
            raise ConfigError(f"pRPC master address: {exc}") from None
        self.secret = bytes(secret)
        self.token = os.urandom(wire.TOKEN_BYTES)
        self._lock = threading.Lock()
        View.__init__(self, self._lock)
        self._timer_cond = threading.Condition(self._lock)
        self._calls: dict[int, PendingCall] = {}
        self._heap: list[tuple[float, int]] = []
        self._next_rid = 1
        self._fes: dict[int, FrontEnd] = {}
        self._broken: dict[int, float] = {}
        self._links: dict[tuple[bytes, int], ServerLink] = {}
        self._channels: dict[str, Channel] = {}
        self._closed = False
        self._master_lock = threading.Lock()
        host = net.select_address(cfg.socket_ifname) if cfg.socket_ifname \
            else net.route_address(mhost)
        lsock = net.listen(host, 0)
        self.address: tuple[str, int] = (host, int(lsock.getsockname()[1]))
        """this node's data listen address"""
        self._listener = net.Listener(lsock, self._accept_lane, "pyxccl-rpc-listen")
        try:
            self._msock = self._register(mhost, mport)
        except BaseException:
            self._listener.close()
            raise
        self._threads = [threading.Thread(target=self._master_loop, daemon=True,
                                          name=f"pyxccl-rpc-master-rx{self.rank}"),
                         threading.Thread(target=self._timer_loop, daemon=True,
                                          name=f"pyxccl-rpc-timer{self.rank}")]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------ master
    def _register(self, mhost: str, mport: int) -> socket.socket:
        what = f"pRPC master at {net.fmt_addr(mhost, mport)}"
        dl = net.Deadline(min(self.timeout, 30.0))
        s = net.connect(mhost, mport, dl, what)
        try:
            answer = net.auth_connect(s, self.secret, wire.MASTER_LABEL, dl, what)
            s.sendall(answer + wire.control_bytes(wire.C_REGISTER, {
                "host": self.address[0], "port": self.address[1], "services": [],
                "pid": os.getpid(), "hostname": socket.gethostname(), "token": self.token}))
            ctype, body = wire.read_control(s, dl, what)
            if ctype != wire.C_WELCOME:
                raise E.ProtocolError(f"{what} answered control type {ctype}, not WELCOME")
            self.welcome(body)
        except PeerLostError as exc:
            net.close_quietly(s)
            raise E.ProtocolError(f"{what} closed the connection during registration (wrong "
                                  f"secret?): {exc}") from None
        except BaseException:
            net.close_quietly(s)
            raise
        s.settimeout(None)
        wire.set_send_timeout(s, 5.0)
        log.info("pRPC node %d registered with %s, data on %s", self.rank, what,
                 net.fmt_addr(*self.address), rank=self.rank)
        return s

    def _master_loop(self) -> None:
        try:
            while True:
                ctype, body = wire.read_control(self._msock, None, "pRPC master")
                gone = self.apply(ctype, body)
                if gone is not None:
                    with self._lock:
                        fe = self._fes.pop(gone, None)
                        self._broken.pop(gone, None)
                    if fe is not None:
                        fe.fail(ConnectionAbortedError(f"the master reports node {gone} gone"), [])
        except (PeerLostError, CollectiveTimeout, E.ProtocolError, OSError) as exc:
            if not self._closed:
                log.warn("pRPC node %d lost the master (%s); keeping the last view", self.rank,
                         exc, rank=self.rank)

    def _announce(self) -> None:
        with self._lock:
            services = sorted(s for s, c in self._channels.items() if c.open)
        with self._master_lock:
            try:
                self._msock.sendall(wire.control_bytes(wire.C_UPDATE, {"services": services}))
            except OSError as exc:
                log.warn("pRPC node %d cannot tell the master its services: %s", self.rank, exc,
                         rank=self.rank)

    # ------------------------------------------------------------ life
    def close(self) -> None:
        """Leave the namespace: pending requests fail with RpcClosed, links and servers close,
        the master is told (BYE). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            calls = list(self._calls.values())
            self._calls.clear()
            fes = list(self._fes.values())
            links = list(self._links.values())
            chans = list(self._channels.values())
            self._timer_cond.notify_all()
            self.view_cond.notify_all()
        for call in calls:
            self._finish(call, E.RpcClosed(f"RpcService of node {self.rank} closed"))
        for chan in chans:
            chan.shut()
            chan.wake()
        with self._master_lock:
            try:
                self._msock.sendall(wire.control_bytes(wire.C_BYE, {}))
            except OSError:
                pass
        net.close_quietly(self._msock)
        for link in fes + links:
            link.close()
        self._listener.close()
        for t in self._threads:
            t.join(5.0)

    def __enter__(self) -> "RpcService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

