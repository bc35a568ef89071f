"""Channel graphs (NCCL ``ncclTopoGraph``) and NCCL's graph XML (``NCCL_GRAPH_FILE`` format).

A graph is what the channel search found for one pattern: ``nchannels`` channels,
each an ordered list of GPU ranks (ring order, or the chain of a tree) and, when
the system has NICs, the NET the channel enters through and the one it leaves by.

XML layout (``search.cc`` ``ncclTopoGetXmlFromGraphs``)::

    <graphs version="1">
      <graph id pattern crossnic nchannels speedintra speedinter latencyinter typeintra typeinter samechannels>
        <channel><net dev/><gpu dev/>…<net dev/></channel>

``dev`` values are written like NCCL's ``%#lx`` (``0``, ``0x1``, …) and read as hex,
as NCCL reads them; ``<gpu dev>`` is the GPU's device index (plus ``host << 56`` on
a multi-host system, NCCL's ``NCCL_TOPO_ID``).
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..errors import ConfigError
from . import xml as txml
from .system import NodeType, PathType, System


class Pattern(enum.IntEnum):
    """Search patterns (NCCL ``graph.h``)."""

    BALANCED_TREE = 1  # NIC traffic split: parent and one child on the first GPU, other child on the second
    SPLIT_TREE = 2  # parent on the first GPU, children on the second
    TREE = 3  # all NIC traffic on the first GPU
    RING = 4
    NVLS = 5


GRAPH_RING, GRAPH_TREE, GRAPH_COLLNET, GRAPH_NVLS = 0, 1, 2, 3


@dataclass
class Channel:
    """One channel: GPU ranks in order; the NET devices it enters and leaves through (None: intra-host)."""

    gpus: list[int]
    net_in: int | None = None
    net_out: int | None = None


@dataclass
class Graph:
    """The search result for one pattern; ``bw_*`` are per channel, in GB/s."""

    id: int
    pattern: Pattern
    channels: list[Channel] = field(default_factory=list)
    crossnic: int = 0
    bw_intra: float = 0.0
    bw_inter: float = 0.0
    latency_inter: float = 0.0
    type_intra: PathType = PathType.LOC
    type_inter: PathType = PathType.PIX
    same_channels: int = 0
    host: int = 0

    @property
    def nchannels(self) -> int:
        """Number of channels."""
        return len(self.channels)

    def describe(self) -> str:
        """NCCL's INFO lines: ``Pattern 4, crossNic 0, nChannels 2, bw 20/20, type NVL/PIX`` then one line per channel."""
        lines = [f"Pattern {int(self.pattern)} ({self.pattern.name}), crossNic {self.crossnic}, "
                 f"nChannels {self.nchannels}, bw {self.bw_intra:g}/{self.bw_inter:g}, "
                 f"type {self.type_intra.name}/{self.type_inter.name}, sameChannels {self.same_channels}"]
        for c, ch in enumerate(self.channels):
            parts = [f"{c:2d} :"]
            if ch.net_in is not None:
                parts.append(f"NET/{ch.net_in}")
            parts += [f"GPU/{r}" for r in ch.gpus]
            if ch.net_out is not None:
                parts.append(f"NET/{ch.net_out}")
            lines.append(" ".join(parts))
        return "\n".join(lines)


def _hexdev(v: int) -> str:
    return f"{v:#x}" if v else "0"


def to_xml(graphs: list[Graph], system: System | None = None) -> txml.Element:
    """``<graphs version="1">`` for these graphs; GPU ranks are written as device ids via ``system``."""
    root = ET.Element("graphs", {"version": txml.XML_VERSION})
    for g in graphs:
        el = ET.SubElement(root, "graph", {
            "id": str(g.id), "pattern": str(int(g.pattern)), "crossnic": str(g.crossnic),
            "nchannels": str(g.nchannels), "speedintra": f"{g.bw_intra:g}", "speedinter": f"{g.bw_inter:g}",
            "latencyinter": f"{g.latency_inter:g}", "typeintra": g.type_intra.name,
            "typeinter": g.type_inter.name, "samechannels": str(g.same_channels)})
        devs = _rank_to_dev(system, g.host)
        for ch in g.channels:
            cel = ET.SubElement(el, "channel")
            if ch.net_in is not None:
                ET.SubElement(cel, "net", {"dev": _hexdev(ch.net_in)})
            for r in ch.gpus:
                ET.SubElement(cel, "gpu", {"dev": _hexdev(devs.get(r, r))})
                if g.id == GRAPH_NVLS:
                    break
            if ch.net_out is not None:
                ET.SubElement(cel, "net", {"dev": _hexdev(ch.net_out)})
    return root


def _rank_to_dev(system: System | None, host: int) -> dict[int, int]:
    if system is None:
        return {}
    return {n.attrs["rank"]: (host << 56) + n.attrs["dev"] for n in system.of_type(NodeType.GPU, host)}


def dumps(graphs: list[Graph], system: System | None = None) -> str:
    """Graph XML text in NCCL's layout."""
    return txml.dumps(to_xml(graphs, system))


def from_xml(root: txml.Element, system: System | None = None, host: int = 0) -> list[Graph]:
    """Graphs from a ``<graphs>`` tree; ``dev`` → rank through ``system`` (else rank = dev)."""
    dev_to_rank = {v: k for k, v in _rank_to_dev(system, host).items()}
    out = []
    for el in root.findall("graph"):
        try:
            g = Graph(id=int(el.get("id", "0")), pattern=Pattern(int(el.get("pattern", "4"))),
                      crossnic=int(el.get("crossnic", "0")), bw_intra=float(el.get("speedintra", "0")),
                      bw_inter=float(el.get("speedinter", "0")), latency_inter=float(el.get("latencyinter") or 0),
                      type_intra=PathType[el.get("typeintra", "SYS")], type_inter=PathType[el.get("typeinter", "SYS")],
                      same_channels=int(el.get("samechannels", "0")), host=host)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"graph XML: bad <graph> attributes {dict(el.attrib)}: {exc}") from None
        for cel in el.findall("channel"):
            ch = Channel([])
            for sub in cel:
                dev = int(sub.get("dev", "0"), 16)
                if sub.tag == "net":
                    if ch.net_in is None and not ch.gpus:
                        ch.net_in = dev
                    else:
                        ch.net_out = dev
                elif sub.tag == "gpu":
                    if system is not None and dev not in dev_to_rank:
                        raise ConfigError(f"graph XML: GPU dev {dev:#x} is not in the system")
                    ch.gpus.append(dev_to_rank.get(dev, dev))
            g.channels.append(ch)
        nch = int(el.get("nchannels", str(len(g.channels))))
        if nch != len(g.channels):
            raise ConfigError(f"graph XML: graph {g.id} says nchannels={nch} but has {len(g.channels)} <channel>")
        out.append(g)
    return out


def load(path: str, system: System | None = None) -> list[Graph]:
    """Read an NCCL graph XML file."""
    return from_xml(txml.load(path, root_tag="graphs"), system)
