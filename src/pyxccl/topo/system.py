"""The system graph: nodes (GPU, PCI, NVS, CPU, NIC, NET) joined by typed, directed links.

This is NCCL's ``ncclTopoSystem`` (``src/graph/topo.h``): every node has a type, an id
that is unique per type and host, the host it lives on, its attributes (from the
topology XML) and its outgoing links; a link has a type (LOC, NVL, PCI, SYS, NET), a
remote node and a bandwidth in GB/s. Links come in pairs (one per direction), each
with its own bandwidth, because the channel search consumes bandwidth per direction.

Paths (filled by :mod:`pyxccl.topo.paths`) are stored per (source, destination) node
pair. Numeric values of the path types follow NCCL v2.21.5 (``topo.h``) so that
comparisons such as ``type <= PXB`` mean what they mean in NCCL.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Iterator


class NodeType(enum.IntEnum):
    """Node types, in NCCL's order (``GPU 0 … NET 5``)."""

    GPU = 0
    PCI = 1
    NVS = 2
    CPU = 3
    NIC = 4
    NET = 5


class LinkType(enum.IntEnum):
    """Link types; values equal the path type a single link of that kind makes (NCCL's LINK_*)."""

    LOC = 0
    NVL = 1
    PCI = 3
    SYS = 7
    NET = 8


class PathType(enum.IntEnum):
    """Path types, best first (NCCL v2.21.5 values)."""

    LOC = 0  # same node
    NVL = 1  # NVLink (direct, or through an NVSwitch)
    NVB = 2  # NVLink through one intermediate GPU
    PIX = 3  # at most one PCIe bridge
    PXB = 4  # several PCIe bridges, not through the host bridge
    PXN = 5  # GPU -> NIC through a peer GPU on NVLink
    PHB = 6  # through a PCIe host bridge (the CPU)
    SYS = 7  # across the inter-CPU (SMP) link
    NET = 8  # across the network (another host)
    DIS = 9  # disconnected


# Bandwidths in GB/s (NCCL topo.h).
LOC_BW = 5000.0
PCI_BW = 12.0
NET_BW = 12.0
SKL_QPI_BW = 10.0
BDW_QPI_BW = 6.0
AMD_BW = 16.0
P9_BW = 32.0
ARM_BW = 6.0
ZPI_BW = 6.0
YONGFENG_ZPI_BW = 9.0

# NVLink bandwidth per link by compute capability (sm x 10), NCCL ncclTopoNVLinkBw.
_NVLINK_BW = ((100, 40.1), (90, 20.6), (87, 20.0), (86, 12.0), (80, 20.0), (70, 20.0), (60, 18.0))

# PCIe per-lane speed in units of 100 Mb/s (NCCL kvDictPciGen), keyed by GT/s.
_PCI_GEN = {2.5: 15, 5.0: 30, 8.0: 60, 16.0: 120, 32.0: 240, 64.0: 480}

CLASS_BRIDGE = "0x060400"
CLASS_NVSWITCH = "0x068000"
CLASS_CPU = "0x068001"


def nvlink_bw(sm: int) -> float:
    """GB/s of one NVLink for a GPU of compute capability ``sm`` (80 = A100, 90 = H100)."""
    for min_sm, bw in _NVLINK_BW:
        if sm >= min_sm:
            return bw
    return 18.0  # SM60_NVLINK_BW: NCCL's fallback for anything older


def pci_lane_units(link_speed: str) -> int:
    """Per-lane units of 100 Mb/s for a sysfs ``link_speed`` string (``16.0 GT/s PCIe`` → 120).

    Unknown or empty strings give 60 (Gen3), like NCCL's default.
    """
    m = re.match(r"\s*([0-9.]+)\s*GT/s", link_speed or "")
    if not m:
        return 60
    return _PCI_GEN.get(float(m.group(1)), 60)


def pci_bw(link_speed: str, link_width: int) -> float:
    """GB/s of a PCIe link: ``width × lane units / 80``; width 0 counts as 16 (NCCL)."""
    width = link_width if link_width > 0 else 16
    return width * pci_lane_units(link_speed) / 80.0


def pci_class_type(cls: str) -> NodeType:
    """The node type a PCI ``class`` string maps to (NCCL kvDictPciClass)."""
    c = (cls or "").strip().lower()
    if c.startswith(CLASS_NVSWITCH):
        return NodeType.NVS
    if c.startswith(CLASS_CPU):
        return NodeType.CPU
    if c.startswith("0x03"):
        return NodeType.GPU
    if c.startswith("0x02"):
        return NodeType.NIC
    return NodeType.PCI


def inter_cpu_bw(arch: str, vendor: str, family: int, model: int) -> float:
    """Bandwidth of the link between two CPU sockets (NCCL ncclTopoGetInterCpuBw)."""
    if arch == "ppc64":
        return P9_BW
    if arch == "arm64":
        return ARM_BW
    if arch == "x86_64":
        if vendor == "GenuineIntel":
            return SKL_QPI_BW if family == 6 and model >= 0x55 else BDW_QPI_BW
        if vendor == "AuthenticAMD":
            return AMD_BW
        if vendor.strip() in ("CentaurHauls", "Shanghai"):
            return YONGFENG_ZPI_BW if family == 7 and model == 0x5B else ZPI_BW
        return BDW_QPI_BW
    return LOC_BW


def busid_to_int(busid: str) -> int:
    """``dddd:bb:dd.f`` (any case, any domain width) to NCCL's int64 id: all hex digits in order."""
    digits = re.sub(r"[^0-9a-fA-F]", "", busid or "")
    return int(digits, 16) if digits else 0


def normalize_busid(busid: str) -> str:
    """Lower-case ``dddd:bb:dd.f``; ``00000000:18:00.0`` (NVML) becomes ``0000:18:00.0``."""
    m = re.fullmatch(r"\s*([0-9a-fA-F]+):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-9a-fA-F])\s*", busid or "")
    if not m:
        return (busid or "").strip().lower()
    dom = int(m.group(1), 16)
    return f"{dom:04x}:{int(m.group(2), 16):02x}:{int(m.group(3), 16):02x}.{m.group(4).lower()}"


@dataclass(eq=False)
class Link:
    """A directed link. ``bw`` is the capacity; ``avail`` what the channel search has left."""

    type: LinkType
    remote: "Node"
    bw: float
    avail: float = 0.0

    def __post_init__(self) -> None:
        self.avail = self.bw


@dataclass(eq=False)
class Node:
    """One node: ``id`` is unique per (type, host); ``attrs`` are its XML attributes, typed."""

    type: NodeType
    id: int
    host: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    index: int = -1  # position in System.nodes

    @property
    def label(self) -> str:
        """A short name, unique on its host: ``GPU3``, ``CPU0``, ``PCI ffff:ff:01.0``, ``NET1 mlx5_1``."""
        a = self.attrs
        if self.type == NodeType.GPU:
            text = f"GPU{a.get('dev', self.id)}"
        elif self.type == NodeType.CPU:
            text = f"CPU{a.get('numaid', self.id)}"
        elif self.type == NodeType.NVS:
            text = "NVS"
        elif self.type == NodeType.NET:
            text = f"NET{a.get('dev', self.id)} {a.get('name', '')}".rstrip()
        elif self.type == NodeType.NIC:
            text = f"NIC {a['busid']}" if a.get("busid") else f"NIC{self.id}"
        else:
            text = f"PCI {a.get('busid', hex(self.id))}"
        return text

    def link_to(self, other: "Node", ltype: LinkType | None = None) -> Link | None:
        """This node's link to ``other`` (of type ``ltype`` if given), or None."""
        for link in self.links:
            if link.remote is other and (ltype is None or link.type == ltype):
                return link
        return None


@dataclass(eq=False)
class Path:
    """The chosen route from one node to another: its links in order, type and bottleneck bandwidth."""

    type: PathType
    bw: float
    links: list[Link]
    via: "Node | None" = None  # the GPU (PXN) or CPU a rerouted path goes through
    count: int = field(init=False)  # number of hops

    def __post_init__(self) -> None:
        self.count = len(self.links)


class System:
    """The whole topology: nodes of one or more hosts, their links and (after paths) their paths."""

    def __init__(self, hosts: list[str] | None = None) -> None:
        self.nodes: list[Node] = []
        self.hosts: list[str] = list(hosts or [])
        self.paths: dict[tuple[int, int], Path] = {}
        self.warnings: list[str] = []
        self.meta: dict[str, Any] = {}  # where it came from: "xml" tree, socket "interfaces", "notes"

    # ---------------------------------------------------------------- building
    def host_index(self, host_hash: str) -> int:
        """Index of ``host_hash`` in :attr:`hosts`, appending it when new."""
        if host_hash not in self.hosts:
            self.hosts.append(host_hash)
        return self.hosts.index(host_hash)

    def add(self, ntype: NodeType, nid: int, host: int = 0, **attrs: Any) -> Node:
        """Create a node (its (type, host, id) must be new) and return it."""
        if self.find(ntype, nid, host) is not None:
            raise ValueError(f"duplicate {ntype.name} node {nid:#x} on host {host}")
        node = Node(ntype, nid, host, dict(attrs), [], len(self.nodes))
        self.nodes.append(node)
        return node

    def find(self, ntype: NodeType, nid: int, host: int = 0) -> Node | None:
        """The node of this type, id and host, or None."""
        for n in self.nodes:
            if n.type == ntype and n.id == nid and n.host == host:
                return n
        return None

    @staticmethod
    def connect(a: Node, b: Node, ltype: LinkType, bw: float) -> None:
        """Add ``bw`` to the a→b link of this type (creating it); links stay sorted by bandwidth."""
        link = a.link_to(b, ltype)
        if link is None:
            a.links.append(Link(ltype, b, bw))
        else:
            link.bw += bw
            link.avail = link.bw
        a.links.sort(key=lambda lk: -lk.bw)

    def connect_both(self, a: Node, b: Node, ltype: LinkType, bw: float) -> None:
        """Links a→b and b→a, both of ``bw``."""
        self.connect(a, b, ltype, bw)
        self.connect(b, a, ltype, bw)

    # ---------------------------------------------------------------- queries
    def label(self, node: Node) -> str:
        """The node's label, prefixed with ``h<host>:`` when the system spans several hosts."""
        return f"h{node.host}:{node.label}" if len(self.hosts) > 1 else node.label

    def of_type(self, ntype: NodeType, host: int | None = None) -> list[Node]:
        """Nodes of a type (of one host if given), in creation order."""
        return [n for n in self.nodes if n.type == ntype and (host is None or n.host == host)]

    @property
    def gpus(self) -> list[Node]:
        """Every GPU node."""
        return self.of_type(NodeType.GPU)

    @property
    def nets(self) -> list[Node]:
        """Every NET node (one per network device)."""
        return self.of_type(NodeType.NET)

    @property
    def cpus(self) -> list[Node]:
        """Every CPU (NUMA node) node."""
        return self.of_type(NodeType.CPU)

    def links(self) -> Iterator[tuple[Node, Link]]:
        """Every directed link with its source node."""
        for n in self.nodes:
            for link in n.links:
                yield n, link

    def path(self, src: Node, dst: Node) -> Path:
        """The path from ``src`` to ``dst`` (DIS with no links when none exists)."""
        if src is dst:
            return Path(PathType.LOC, LOC_BW, [])
        p = self.paths.get((src.index, dst.index))
        return p if p is not None else Path(PathType.DIS, 0.0, [])

    def reset_bandwidth(self) -> None:
        """Give every link and NET back its full bandwidth (before a channel search)."""
        for _, link in self.links():
            link.avail = link.bw
        for net in self.nets:
            net.attrs["_bw_avail"] = net.attrs.get("bw", NET_BW)

    def describe(self) -> str:
        """A text tree of the system, one node per line, with link bandwidths."""
        lines = []
        for h, hh in enumerate(self.hosts or ["local"]):
            lines.append(f"host {h} ({hh})")
            for n in self.nodes:
                if n.host != h:
                    continue
                extra = _describe_attrs(n)
                lines.append(f"  {n.label}{extra}")
                for link in n.links:
                    lines.append(f"    -> {self.label(link.remote)} {link.type.name} {link.bw:g} GB/s")
        return "\n".join(lines)


def _describe_attrs(n: Node) -> str:
    a = n.attrs
    if n.type == NodeType.GPU:
        return f" busid {a.get('busid', '?')} sm {a.get('sm', '?')} rank {a.get('rank', '?')}"
    if n.type == NodeType.CPU:
        return f" {a.get('arch', '?')} {a.get('vendor', '?')} affinity {a.get('affinity', '?')}"
    if n.type == NodeType.NET:
        addr = f" addr {a['address']}" if a.get("address") else ""
        return f" {a.get('speed', 0)} Mb/s{addr}"
    return ""
