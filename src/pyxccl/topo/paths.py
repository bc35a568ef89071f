"""Paths between nodes (NCCL ``src/graph/paths.cc``): BFS, path types, P2P and GPU-Direct decisions.

:func:`compute_paths` runs a breadth-first search from every CPU, GPU, NET and NVS node.
The best path to a node has the fewest hops, then the highest bandwidth (its
bandwidth is the bottleneck link's); its type is the worst step on it:

* NVLink → NVL; NVLink through one intermediate GPU → NVB (a GPU may relay only one hop);
* a PCIe link → PIX; between two PCIe switches → PXB; to or from a CPU → PHB;
* the inter-CPU link → SYS; a NIC→NET link counts as LOC (only the PCIe part matters).

Then, as in NCCL: GPU pairs that may not use P2P (:func:`p2p_allowed`) are routed
through the CPU local to the destination; a GPU reaches a NIC through a peer GPU on
NVLink (PXN) when the peer is the NIC's local GPU and that is faster or avoids the CPU;
a GPU without GPU-Direct RDMA to a NIC (:func:`gdr_allowed`) goes through its CPU.
"""

from __future__ import annotations

from .system import LOC_BW, LinkType, Node, NodeType, Path, PathType, System

BFS_BASES = (NodeType.CPU, NodeType.GPU, NodeType.NET, NodeType.NVS)


def _bfs(system: System, base: Node) -> None:
    paths = system.paths
    paths[(base.index, base.index)] = Path(PathType.LOC, LOC_BW, [])
    frontier = [base]
    while frontier:
        nxt: list[Node] = []
        for node in frontier:
            path = paths[(node.index, base.index)]
            for link in node.links:
                rem = link.remote
                # a GPU may relay only as one NVLink hop between two GPUs (NVB)
                if node is not base and node.type == NodeType.GPU and (
                        link.type != LinkType.NVL or rem.type != NodeType.GPU or path.count > 1):
                    continue
                bw = min(path.bw, link.bw)
                rpath = paths.get((rem.index, base.index))
                if rpath is not None and not (rpath.count > path.count and rpath.bw < bw):
                    continue
                rev = rem.link_to(node, link.type)
                if rev is None:
                    raise RuntimeError(f"no reverse link {rem.label} -> {node.label}")
                ptype = PathType.LOC if link.type == LinkType.NET else PathType(int(link.type))
                if node.type == NodeType.PCI and rem.type == NodeType.PCI:
                    ptype = PathType.PXB
                if link.type == LinkType.PCI and (node.type == NodeType.CPU or rem.type == NodeType.CPU):
                    ptype = PathType.PHB
                if node.type == NodeType.GPU and path.type == PathType.NVL and ptype == PathType.NVL:
                    ptype = PathType.NVB
                paths[(rem.index, base.index)] = Path(max(path.type, ptype), bw, [rev] + path.links)
                if rem not in nxt:
                    nxt.append(rem)
        frontier = nxt


def _inter_step(system: System, via: Node, src: Node, dst: Node) -> None:
    """Route src → dst through ``via`` (NCCL addInterStep); through a GPU the type becomes PXN."""
    a, b = system.path(src, via), system.path(via, dst)
    ptype = max(a.type, b.type)
    if via.type == NodeType.GPU:
        ptype = PathType.PXN
    system.paths[(src.index, dst.index)] = Path(ptype, min(a.bw, b.bw), a.links + b.links, via)


def cpu_kind(system: System, host: int = 0) -> tuple[str, str, int, int]:
    """(arch, vendor, familyid, modelid) of the host's first CPU ('' when unknown)."""
    cpus = system.of_type(NodeType.CPU, host)
    if not cpus:
        return "", "", 0, 0
    a = cpus[0].attrs
    return a.get("arch", ""), a.get("vendor", ""), a.get("familyid", 0), a.get("modelid", 0)


def p2p_level(system: System, host: int = 0) -> PathType:
    """Worst path type over which GPUs use P2P: PXB through Intel, Zhaoxin and ARM CPUs, else SYS (NCCL)."""
    arch, vendor, _, _ = cpu_kind(system, host)
    if arch == "arm64" or (arch == "x86_64" and vendor.strip() in ("GenuineIntel", "CentaurHauls", "Shanghai")):
        return PathType.PXB
    return PathType.SYS


def p2p_allowed(system: System, a: Node, b: Node) -> bool:
    """Whether GPU ``a`` may read/write GPU ``b``'s memory directly (NCCL ncclTopoCheckP2p)."""
    if a.host != b.host:
        return False
    return system.path(a, b).type <= p2p_level(system, a.host)


def gdr_allowed(system: System, gpu: Node, net: Node, level: PathType = PathType.PXB) -> bool:
    """Whether ``net`` may DMA straight to ``gpu``'s memory (NCCL ncclTopoCheckGdr, NCCL_NET_GDR_LEVEL=PXB)."""
    if gpu.host != net.host or not gpu.attrs.get("gdr") or not net.attrs.get("gdr"):
        return False
    path = system.path(gpu, net)
    distance = path.type
    if distance == PathType.PXN and path.via is not None:
        distance = system.path(path.via, net).type
    return distance <= level


def local_cpu(system: System, gpu: Node) -> Node | None:
    """The CPU fewest hops away from ``gpu``, the first one on a tie (NCCL getLocalCpu)."""
    best, hops = None, 0
    for cpu in system.of_type(NodeType.CPU, gpu.host):
        n = system.path(gpu, cpu).count
        if n > 0 and (best is None or n < hops):
            best, hops = cpu, n
    return best


def local_nodes(system: System, src: Node, ntype: NodeType) -> list[Node]:
    """Nodes of ``ntype`` on ``src``'s host with the highest path bandwidth, then best type (NCCL ncclTopoGetLocal)."""
    best: list[Node] = []
    max_bw, min_type = 0.0, PathType.DIS
    for n in system.of_type(ntype, src.host):
        p = system.path(src, n)
        if p.bw > max_bw or (p.bw == max_bw and p.type < min_type):
            max_bw, min_type, best = p.bw, p.type, []
        if p.bw == max_bw and p.type == min_type and p.bw > 0:
            best.append(n)
    return best


def _mirror_bits(val: int, pow2: int) -> int:
    mirror, b, mb = 0, 1, pow2 >> 1
    while b < pow2:
        if val & b:
            mirror |= mb
        b <<= 1
        mb >>= 1
    return mirror


def local_net(system: System, gpu: Node, channel: int = 0) -> Node | None:
    """The NET a GPU uses for a channel: its closest NETs, spread over GPUs by device (NCCL ncclTopoGetLocalNet)."""
    nets = local_nodes(system, gpu, NodeType.NET)
    if not nets:
        return None
    gpus = local_nodes(system, nets[0], NodeType.GPU) or [gpu]
    k = int(gpu.attrs.get("dev", 0))
    if len(nets) & (len(nets) - 1) == 0:
        k = _mirror_bits(k, len(nets))
    k += channel % -(-len(nets) // len(gpus))
    return nets[k % len(nets)]


def local_gpu(system: System, net: Node) -> Node | None:
    """The GPU that owns ``net``: closest to it and choosing it as a local NET (NCCL ncclTopoGetLocalGpu)."""
    gpus = local_nodes(system, net, NodeType.GPU)
    for c in range(32):
        for g in gpus:
            if local_net(system, g, c) is net:
                return g
    return None


def compute_paths(system: System, pxn: bool = True) -> None:
    """Fill ``system.paths`` for every CPU/GPU/NET/NVS destination; then P2P, PXN and GDR rerouting."""
    system.paths = {}
    for ntype in BFS_BASES:
        for base in system.of_type(ntype):
            _bfs(system, base)
    gpus = system.gpus
    for g in gpus:
        for p in gpus:
            if p is not g and p.host == g.host and not p2p_allowed(system, p, g):
                cpu = local_cpu(system, g)
                if cpu is not None:
                    _inter_step(system, cpu, p, g)
    for net in system.nets:
        for g in system.of_type(NodeType.GPU, net.host):
            if pxn:
                peer = local_gpu(system, net)
                if peer is not None and peer is not g:
                    peer_net, peer_g, own = system.path(peer, net), system.path(peer, g), system.path(g, net)
                    if (peer_net.type <= PathType.PXB and peer_g.type <= PathType.NVL
                            and (peer_net.bw > own.bw or own.type > PathType.PXB)):
                        _inter_step(system, peer, g, net)
            if system.path(g, net).type < PathType.PHB and not gdr_allowed(system, g, net):
                cpu = local_cpu(system, g)
                if cpu is not None:
                    _inter_step(system, cpu, net, g)
                    _inter_step(system, cpu, g, net)


def path_matrix(system: System, with_bw: bool = False) -> str:
    """A table like ``nvidia-smi topo -m``: path type (or GB/s) between every GPU and NET, plus CPU affinity.

    Nodes on different hosts are joined by NET. Without GPUs the table lists NETs and CPUs.
    """
    rows = system.gpus + system.nets
    if not system.gpus:
        rows = system.nets + system.cpus
    if not rows:
        return "(no GPU, NET or CPU nodes)"
    labels = [system.label(n) for n in rows]
    width = max(6, *(len(s) for s in labels)) + 1
    head = " " * width + "".join(f"{s:>{width}}" for s in labels) + "  CPU affinity   NUMA"
    lines = [head]
    for a, la in zip(rows, labels):
        cells = []
        for b in rows:
            if a is b:
                cells.append("X")
            elif a.host != b.host:
                cells.append("NET")
            else:
                p = system.path(a, b)
                cells.append(f"{p.bw:g}" if with_bw and p.type != PathType.DIS else p.type.name)
        cpu = a if a.type == NodeType.CPU else _nearest_cpu(system, a)
        aff = cpu.attrs.get("affinity", "") if cpu is not None else ""
        numa = str(cpu.attrs.get("numaid", "")) if cpu is not None else ""
        lines.append(f"{la:<{width}}" + "".join(f"{c:>{width}}" for c in cells) + f"  {aff:<14} {numa}")
    legend = ("Legend: X self, NVL NVLink, NVB NVLink via a GPU, PIX one PCIe switch, PXB several switches, "
              "PXN via a peer GPU's NVLink, PHB PCIe host bridge, SYS across CPUs, NET another host, DIS none")
    return "\n".join(lines + ["", legend])


def _nearest_cpu(system: System, node: Node) -> Node | None:
    best = None
    for cpu in system.of_type(NodeType.CPU, node.host):
        p = system.path(node, cpu)
        if p.type != PathType.DIS and (best is None or p.count < system.path(node, best).count):
            best = cpu
    return best
