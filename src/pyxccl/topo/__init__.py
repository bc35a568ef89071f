"""Topology: the system graph, detection, NCCL topology/graph XML, paths and channel search.

NCCL's init order (``initTransportsRank``): get the system (load ``PYXCCL_TOPO_FILE``
and/or detect; dump to ``PYXCCL_TOPO_DUMP_FILE``) → compute paths → search ring and
tree channels (dump to ``PYXCCL_GRAPH_DUMP_FILE``).

What the communicator uses (see ``docs/topology.md``):

* :func:`local_system` — this host's :class:`System`, paths computed;
* :func:`summarize` — a small JSON-able dict each rank allgathers (host, CPU, NUMA, GPUs, NICs);
* :func:`host_layout` / :func:`order_ranks` — hosts, local ranks, and the ring order in
  which the ranks of one host are contiguous;
* :func:`search` / :func:`dump_graphs` — the ring and tree graphs of a GPU system.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

from .. import config, log
from . import xml as txml
from .build import system_from_xml
from .detect import Detection, detect, host_hash
from .graph import Channel, Graph, Pattern
from .paths import compute_paths, path_matrix
from .search import compute, join_rings
from .system import LinkType, Node, NodeType, Path, PathType, System

__all__ = [
    "System", "Node", "Path", "NodeType", "LinkType", "PathType", "Graph", "Channel", "Pattern",
    "Detection", "detect", "host_hash", "system_from_xml", "compute_paths", "path_matrix", "compute",
    "join_rings", "local_system", "load_system", "summarize", "HostLayout", "host_layout", "order_ranks",
    "search", "dump_graphs",
]

_cache: dict[tuple[str, str, str], tuple[txml.Element, list[Any], list[str]]] = {}
_lock = threading.Lock()


def load_system(root: txml.Element, local_host: str = "local") -> System:
    """A :class:`System` from a topology XML tree, with paths computed."""
    system = system_from_xml(root, local_host)
    compute_paths(system)
    system.meta["xml"] = root
    return system


def local_system(cfg: config.Config | None = None, dump: bool = True, rank: int | None = None) -> System:
    """This host's topology: detected, merged into ``PYXCCL_TOPO_FILE`` when set; paths computed.

    Detection runs once per process (its result is cached per file/interface/host settings).
    What detection had to assume is logged once as a WARN; with ``dump`` and
    ``PYXCCL_TOPO_DUMP_FILE`` set, the XML is written there (the communicator passes
    ``dump=(rank == 0)``, as NCCL dumps on one rank). Never raises for missing /sys parts;
    an unreadable or malformed ``PYXCCL_TOPO_FILE`` raises ConfigError.
    """
    cfg = cfg or config.get()
    key = (cfg.topo_file, cfg.socket_ifname, cfg.hostid)
    with _lock:
        cached = _cache.get(key)
        if cached is None:
            det = detect(cfg)
            notes = list(det.notes)
            root = det.root
            if cfg.topo_file:
                root = txml.load(cfg.topo_file)
                merged = txml.merge(root, det.root)
                log.info("topology: loaded %s; %s", cfg.topo_file, "; ".join(merged) or "nothing detected to merge",
                         rank=rank)
            if notes:
                log.warn("topology: detection assumed: %s", "; ".join(notes), rank=rank)
            if det.info:
                log.info("topology: %s", "; ".join(det.info), rank=rank)
            notes += det.info
            cached = (root, det.interfaces, notes)
            _cache[key] = cached
    root, interfaces, notes = cached
    system = load_system(root, host_hash(cfg))
    system.meta.update(interfaces=interfaces, notes=notes)
    for w in system.warnings:
        log.info("topology: %s", w, rank=rank)
    if dump and cfg.topo_dump_file:
        txml.write(root, cfg.topo_dump_file)
        log.info("topology: written to %s", cfg.topo_dump_file, rank=rank)
    return system


def summarize(system: System, host: int = 0) -> dict[str, Any]:
    """A JSON-able summary of one host of ``system`` (default: the first, i.e. the local one).

    Keys: ``host`` (host hash), ``hostname``, ``cpu`` (arch, vendor, family, model),
    ``numa`` (id, affinity), ``gpus`` (dev, busid, sm, numa, nvlink GB/s), ``nics`` (name,
    dev, speed in Mb/s, address, busid or None, numa), ``socket_address`` (where sockets bind).
    """
    hosts = system.hosts or ["local"]
    addresses = {i.name: i.address for i in system.meta.get("interfaces", [])}
    cpus = system.of_type(NodeType.CPU, host)
    first = cpus[0].attrs if cpus else {}

    def numa_of(node: Node) -> int | None:
        best = None
        for cpu in cpus:
            p = system.path(node, cpu)
            if p.type != PathType.DIS and (best is None or p.count < best[0]):
                best = (p.count, cpu.attrs.get("numaid"))
        return best[1] if best else None

    gpus = [{"dev": g.attrs["dev"], "busid": g.attrs["busid"], "sm": g.attrs["sm"], "numa": numa_of(g),
             "nvlink_gbs": round(sum(lk.bw for lk in g.links if lk.type == LinkType.NVL), 3)}
            for g in system.of_type(NodeType.GPU, host)]
    nics = []
    for net in system.of_type(NodeType.NET, host):
        nic = next((lk.remote for lk in net.links if lk.type == LinkType.NET), None)
        nics.append({"name": net.attrs["name"], "dev": net.attrs["dev"], "speed_mbps": net.attrs["speed"],
                     "address": addresses.get(net.attrs["name"]),
                     "busid": nic.attrs.get("busid") if nic is not None else None, "numa": numa_of(net)})
    ifs = system.meta.get("interfaces", [])
    return {"host": hosts[host], "hostname": socket.gethostname(),
            "cpu": {k: first.get(k) for k in ("arch", "vendor", "familyid", "modelid")},
            "numa": [{"id": c.attrs["numaid"], "affinity": c.attrs["affinity"]} for c in cpus],
            "gpus": gpus, "nics": nics, "socket_address": ifs[0].address if ifs else None}


@dataclass(frozen=True)
class HostLayout:
    """Where the ranks are: ``hosts[h]`` lists host h's ranks (hosts in order of first rank)."""

    hosts: list[list[int]]
    host_of: list[int]
    local_rank: list[int]
    ring: list[int]

    @property
    def nhosts(self) -> int:
        """Number of hosts."""
        return len(self.hosts)

    def local_size(self, rank: int) -> int:
        """Ranks on ``rank``'s host."""
        return len(self.hosts[self.host_of[rank]])


def host_layout(host_ids: list[str]) -> HostLayout:
    """Group ranks by host id (``host_ids[r]`` is rank r's): hosts ordered by their lowest rank,
    ranks of one host in rank order, and a ring that visits each host's ranks contiguously."""
    order: dict[str, list[int]] = {}
    for r, h in enumerate(host_ids):
        order.setdefault(h, []).append(r)
    hosts = list(order.values())
    host_of = [0] * len(host_ids)
    local_rank = [0] * len(host_ids)
    for hi, ranks in enumerate(hosts):
        for i, r in enumerate(ranks):
            host_of[r], local_rank[r] = hi, i
    return HostLayout(hosts, host_of, local_rank, [r for ranks in hosts for r in ranks])


def order_ranks(host_ids: list[str]) -> list[int]:
    """Ring order of the ranks with every host's ranks contiguous (NCCL: rings enter and leave a
    host once, through its NICs); rank 0 first. ``host_ids[r]`` is rank r's host id."""
    return host_layout(host_ids).ring


def search(system: System, inter_host: bool = False, host: int = 0, effort: float = 0.1) -> list[Graph]:
    """Ring (graph id 0) and balanced-tree (id 1) channels of one host's GPUs.

    ``inter_host``: the communicator spans several hosts, so channels enter and leave through NICs.
    ``effort`` scales NCCL's search budgets (1.0 = NCCL's; 0.1 is the same result on the
    tested machines, ten times faster in Python). No GPUs: empty graphs.
    """
    return [compute(system, Pattern.RING, host, inter_host, effort=effort),
            compute(system, Pattern.BALANCED_TREE, host, inter_host, effort=effort)]


def dump_graphs(graphs: list[Graph], system: System, path: str) -> None:
    """Write graphs as NCCL graph XML (``PYXCCL_GRAPH_DUMP_FILE``)."""
    from . import graph as tgraph

    txml.write(tgraph.to_xml(graphs, system), path)
