"""A node's copy of the global view: node ranks, data addresses, services per node.

The master sends the whole view in ``WELCOME`` and every change after it (``JOIN``,
``UPDATE``, ``LEAVE``) in one order to every node; :class:`View` applies them and keeps,
per service id, the ranks of the *other* nodes serving it (``targets``) for routing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import log
from ..errors import InvalidArgument
from . import wire
from .errors import ProtocolError, RpcTimeout


@dataclass(frozen=True)
class NodeInfo:
    """One node of the namespace as the master announced it."""

    rank: int
    host: str
    port: int
    services: tuple[str, ...]
    pid: int
    hostname: str


def _node(body: Any) -> NodeInfo:
    if not isinstance(body, dict):
        raise ProtocolError("the master sent a node record that is not a dict")
    try:
        return NodeInfo(int(body["rank"]), str(body["host"]), int(body["port"]),
                        tuple(str(s) for s in body["services"]), int(body.get("pid", 0)),
                        str(body.get("hostname", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"the master sent a malformed node record: {exc!r}") from None


class View:
    """The view and the condition that waiters for servers sleep on (shares the node lock)."""

    def __init__(self, lock: threading.Lock) -> None:
        self.rank = -1
        """this node's rank in the namespace"""
        self.nodes: dict[int, NodeInfo] = {}
        self.targets: dict[str, tuple[int, ...]] = {}
        self.local_services: set[str] = set()
        self.view_cond = threading.Condition(lock)
        self._view_lock = lock
        self._closed = False

    def _retarget(self) -> None:
        targets: dict[str, list[int]] = {}
        for r in sorted(self.nodes):
            if r != self.rank:
                for s in self.nodes[r].services:
                    targets.setdefault(s, []).append(r)
        self.targets = {s: tuple(v) for s, v in targets.items()}
        self.view_cond.notify_all()

    def welcome(self, body: dict[str, Any]) -> None:
        """Apply the master's WELCOME (this node's rank and the whole view)."""
        nodes = body.get("nodes")
        if not isinstance(body.get("rank"), int) or not isinstance(nodes, list):
            raise ProtocolError("the master's WELCOME lacks rank / nodes")
        with self._view_lock:
            self.rank = body["rank"]
            self.nodes = {n.rank: n for n in map(_node, nodes)}
            self._retarget()

    def apply(self, ctype: int, body: dict[str, Any]) -> int | None:
        """Apply one broadcast; returns the rank of a node that left, else None."""
        with self._view_lock:
            if ctype in (wire.C_JOIN, wire.C_UPDATE):
                n = _node(body.get("node"))
                self.nodes[n.rank] = n
                self._retarget()
                log.trace("pRPC node %d: node %d serves %s", self.rank, n.rank, n.services)
                return None
            if ctype == wire.C_LEAVE:
                r = body.get("rank")
                if isinstance(r, int) and self.nodes.pop(r, None) is not None:
                    self._retarget()
                    log.info("pRPC node %d: node %d left", self.rank, r, rank=self.rank)
                    return r
                return None
        raise ProtocolError(f"the master sent unexpected control type {ctype}")

    def view(self) -> dict[int, NodeInfo]:
        """A snapshot of the global view: node rank -> NodeInfo."""
        with self._view_lock:
            return dict(self.nodes)

    def servers_of(self, service: str | int) -> list[int]:
        """Node ranks serving ``service`` now (this node included when it serves it)."""
        sid = str(service)
        with self._view_lock:
            out = list(self.targets.get(sid, ()))
            if sid in self.local_services:
                out.append(self.rank)
        return sorted(out)

    def wait_servers(self, service: str | int, count: int = 1,
                     timeout: float | None = None) -> list[int]:
        """Wait until at least ``count`` nodes serve ``service``; RpcTimeout after ``timeout``
        seconds (default: the node's request timeout)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgument(f"count must be a positive int, got {count!r}")
        wait = getattr(self, "timeout", 30.0) if timeout is None else float(timeout)
        end = time.monotonic() + wait
        sid = str(service)
        with self.view_cond:
            while True:
                have = len(self.targets.get(sid, ())) + (sid in self.local_services)
                if have >= count or self._closed:
                    break
                left = end - time.monotonic()
                if left <= 0:
                    raise RpcTimeout(f"only {have} of {count} servers of {sid!r} appeared "
                                     f"within {wait:g}s")
                self.view_cond.wait(left)
        return self.servers_of(sid)
