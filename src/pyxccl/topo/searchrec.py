"""The recursive part of the channel search (NCCL ``ncclTopoSearchRec`` and friends).

:class:`Search` holds one host's GPUs and NETs and walks candidate channels depth first:
from a NET (or a GPU) to a first GPU, then GPU to GPU, then back to the first GPU (ring)
or out to a NET, taking each step's bandwidth off the links of its path and giving it
back when it backtracks. :mod:`pyxccl.topo.search` drives it with relaxing constraints.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .graph import Pattern
from .paths import cpu_kind, local_net
from .system import LinkType, Node, NodeType, Path, PathType, System

FORCED_PCI, FORCED_REPLAY = 1, 2
MAXCHANNELS = 32


@dataclass
class State:
    """NCCL's ``ncclTopoGraph`` while searching (GPU indices into the host's GPU list, NET nodes)."""

    pattern: Pattern
    crossnic: int = 0
    nchannels: int = 0
    bw_intra: float = 0.0
    bw_inter: float = 0.0
    latency_inter: float = 0.0
    type_intra: PathType = PathType.LOC
    type_inter: PathType = PathType.PIX
    same_channels: int = 1
    min_channels: int = 1
    max_channels: int = MAXCHANNELS // 2
    nhops: int = 0
    intra: list[list[int]] = field(default_factory=list)
    inter: list[list[Node | None]] = field(default_factory=list)

    def copy(self) -> "State":
        """A deep enough copy (the channel lists are copied, nodes shared)."""
        c = copy.copy(self)
        c.intra = [list(x) for x in self.intra]
        c.inter = [list(x) for x in self.inter]
        return c


class Search:
    """One host's search: its GPUs, NETs (empty for an intra-host search) and per-search caches."""

    def __init__(self, system: System, host: int, use_nets: bool) -> None:
        self.system = system
        self.gpus = system.of_type(NodeType.GPU, host)
        self.nets = system.of_type(NodeType.NET, host) if use_nets else []
        self.has_nvs = bool(system.of_type(NodeType.NVS, host))
        self.used = [0] * len(self.gpus)
        self.time = 0
        self.arch, self.vendor, _, _ = cpu_kind(system, host)
        self._nets_cache: dict[tuple[int, int | None], list[Node]] = {}
        self._route_cache: dict[tuple[int, int], tuple[Path, bool, PathType, float, bool]] = {}
        self._next_cache: dict[tuple[int, int], list[tuple[tuple[int, ...], int]]] = {}

    # ------------------------------------------------------------ bandwidth accounting
    def _route(self, src: Node, dst: Node) -> tuple[Path, bool, PathType, float, bool]:
        """(path, intra, reverse path type, PCI bandwidth factor, needs reverse accounting), cached."""
        key = (src.index, dst.index)
        r = self._route_cache.get(key)
        if r is None:
            path = self.system.path(src, dst)
            intra = src.type in (NodeType.GPU, NodeType.NVS) and dst.type in (NodeType.GPU, NodeType.NVS)
            factor = 1.0
            if path.type == PathType.PHB and src.type == NodeType.GPU and any(
                    lk.remote.type == NodeType.CPU and lk.remote.attrs.get("arch") == "x86_64"
                    and lk.remote.attrs.get("vendor") == "GenuineIntel" for lk in path.links):
                factor = 6.0 / 5.0  # P2P through an Intel root complex is less efficient (INTEL_P2P_OVERHEAD)
            special = any((lk.remote.type == NodeType.GPU and lk.remote.attrs.get("sm", 0) < 80
                           and src.type != NodeType.GPU)
                          or (lk.remote.type == NodeType.CPU and lk.remote.attrs.get("arch") == "ppc64"
                              and lk.type == LinkType.NVL) for lk in path.links)
            r = (path, intra, self.system.path(dst, src).type, factor, special)
            self._route_cache[key] = r
        return r

    def _follow(self, path: Path, start: Node, max_steps: int, bw: float, factor: float, special: bool) -> int:
        """Subtract ``bw`` along the first ``max_steps`` links; the number of links that had enough."""
        pci_bw = bw * factor
        links = path.links
        if not special:
            for step in range(max_steps):
                link = links[step]
                fw = pci_bw if link.type == LinkType.PCI else bw
                if link.avail < fw:
                    return step
                link.avail = round((link.avail - fw) * 1000) / 1000
            return max_steps
        node = start
        for step in range(max_steps):
            link = links[step]
            rem = link.remote
            fw = pci_bw if link.type == LinkType.PCI else bw
            rev_bw = 0.0
            rev = None
            if rem.type == NodeType.GPU and rem.attrs.get("sm", 0) < 80 and start.type != NodeType.GPU:
                rev = rem.link_to(node, link.type)
                rev_bw += fw / 8  # older GPUs: reads through PCIe cost some reverse bandwidth
            if rem.type == NodeType.CPU and rem.attrs.get("arch") == "ppc64" and link.type == LinkType.NVL:
                rev = rem.link_to(node, link.type)
                rev_bw += fw
            if link.avail < fw or (rev_bw and rev is not None and rev.avail < rev_bw):
                return step
            link.avail = round((link.avail - fw) * 1000) / 1000
            if rev_bw and rev is not None:
                rev.avail = round((rev.avail - rev_bw) * 1000) / 1000
            node = rem
        return max_steps

    def follow(self, g: State, src: Node | None, dst: Node, mult: int) -> Node | None:
        """Take (mult=1) or give back (-1) a channel's bandwidth on the path src → dst; the dst or None."""
        if src is None:
            return dst
        path, intra, rev_type, factor, special = self._route(src, dst)
        if path.type == PathType.DIS:
            return None
        if mult == 1:
            limit = g.type_intra if intra else g.type_inter
            if path.type > limit:
                return None
            if rev_type > limit and g.pattern != Pattern.RING:
                return None  # trees use each path in both directions
        bw = (g.bw_intra if intra else g.bw_inter) * mult
        steps = self._follow(path, src, path.count, bw, factor, special)
        if steps < path.count:
            self._follow(path, src, steps, -bw, factor, special)
            return None
        g.nhops += mult * path.count
        return dst

    # ------------------------------------------------------------ recursion
    def params(self, pattern: Pattern) -> tuple[int, int]:
        """(step at which the channel goes back to a NET, step at which it goes back to its first GPU); -1: never."""
        n = len(self.gpus)
        if self.nets:
            back_net = n - 1 if pattern == Pattern.RING else 1 if pattern == Pattern.SPLIT_TREE else 0
            return back_net, -1
        return -1, (n - 1 if pattern == Pattern.RING else -1)

    def search_rec(self, g: State, best: State) -> None:
        """Look for channel ``g.nchannels`` (and, recursively, the ones after it); better ones land in ``best``."""
        back_net, back_first = self.params(g.pattern)
        if self.nets:
            self.rec_net(g, best, back_net, back_first)
            return
        if g.nchannels == 0:
            self.try_gpu(g, best, 0, back_net, back_first, FORCED_PCI, None, 0)
        else:
            self.try_gpu(g, best, 0, back_net, back_first, FORCED_REPLAY, None, g.intra[g.nchannels - 1][0])
        if g.same_channels == 0 or g.nchannels == 0:
            for i in range(len(self.gpus)):
                self.try_gpu(g, best, 0, back_net, back_first, 0, None, i)

    def try_gpu(self, g: State, best: State, step: int, back_net: int, back_first: int, forced: int,
                src: Node | None, i: int) -> None:
        """Step to GPU ``i`` (from ``src``; None: start there) if the path has the bandwidth, and go on."""
        flag = 1 << g.nchannels
        if self.follow(g, src, self.gpus[i], 1) is None:
            return
        self.used[i] ^= flag
        self.rec_gpu(g, best, i, step, back_net, back_first, forced)
        self.used[i] ^= flag
        self.follow(g, src, self.gpus[i], -1)

    def rec_gpu(self, g: State, best: State, i: int, step: int, back_net: int, back_first: int,
                forced: int) -> None:
        """At GPU ``i``, step ``step`` of the current channel: choose where to go next (NCCL ncclTopoSearchRecGpu)."""
        if self.time <= 0:
            return
        self.time -= 1
        n = len(self.gpus)
        if step == n:
            g.nchannels += 1
            if self.better(g, best):
                best.__dict__.update(g.copy().__dict__)
                if g.nchannels == g.max_channels:
                    self.time = -1
            if g.nchannels < g.max_channels:
                self.search_rec(g, best)
            g.nchannels -= 1
            return
        c = g.nchannels
        g.intra[c][step] = i
        gpu = self.gpus[i]
        if step == back_net:
            start = g.inter[c][0]
            assert start is not None
            for net in self.select_nets(g.type_inter, i):
                if g.pattern == Pattern.TREE and net is not start:
                    continue
                if g.pattern == Pattern.RING and g.crossnic == 2:
                    if c & 1 and net is not g.inter[c - 1][0]:
                        continue
                elif g.crossnic == 0 and (net.attrs["guid"] != start.attrs["guid"]
                                          or net.attrs["port"] != start.attrs["port"]):
                    continue
                next_back, saved_bw = -1, g.bw_inter
                if g.pattern == Pattern.BALANCED_TREE:
                    if step == 0:
                        next_back = 1
                    elif net is not g.inter[c][1]:
                        continue
                    g.bw_inter /= 2
                ok = self.follow(g, gpu, net, 1)
                g.bw_inter = saved_bw
                if ok is not None:
                    g.inter[c][1] = net
                    self.rec_gpu(g, best, i, step, next_back, back_first, forced)
                    if g.pattern == Pattern.BALANCED_TREE:
                        g.bw_inter /= 2
                    self.follow(g, gpu, net, -1)
                    g.bw_inter = saved_bw
        elif step < n - 1:
            if forced == FORCED_PCI:
                nxt = [step + 1]
            elif forced == FORCED_REPLAY:
                nxt = [g.intra[c - 1][step + 1]]
            else:
                sort_net = 0 if back_net == -1 else (1 if back_net == step + 1 else -1)
                nxt = self.next_gpus(g, i, sort_net)
            for j in nxt:
                self.try_gpu(g, best, step + 1, back_net, back_first, forced, gpu, j)
        elif step == back_first:
            first = g.intra[c][0]
            if self.follow(g, gpu, self.gpus[first], 1) is not None:
                self.rec_gpu(g, best, first, step + 1, back_net, -1, forced)
                self.follow(g, gpu, self.gpus[first], -1)
        else:
            self.rec_gpu(g, best, i, n, -1, -1, forced)

    def rec_net(self, g: State, best: State, back_net: int, back_first: int) -> None:
        """Start the current channel at each possible NET, then at its closest GPUs (NCCL ncclTopoSearchRecNet)."""
        bw = g.bw_inter
        nets = self.select_nets(g.type_inter, None)
        c = g.nchannels
        for k in range(len(nets)):
            net = nets[(c + k) % len(nets)]
            if net.attrs["_bw_avail"] < bw:
                continue
            if g.pattern == Pattern.RING and g.crossnic == 2 and c & 1 and net is not g.inter[c - 1][1]:
                continue
            g.inter[c][0] = net
            g.latency_inter = net.attrs.get("latency", 0.0)
            same = [m for m in self.nets if m.attrs["guid"] == net.attrs["guid"] and m.attrs["port"] == net.attrs["port"]]
            for m in same:
                m.attrs["_bw_avail"] -= bw
            if c > 0:
                self.try_gpu(g, best, 0, back_net, back_first, FORCED_REPLAY, net, g.intra[c - 1][0])
            if c == 0 or g.same_channels == 0:
                if c == 0 and not self.has_nvs:
                    saved, self.time = self.time, 1 << 10  # PCI order as a reference, on its own small budget
                    self.try_gpu(g, best, 0, back_net, back_first, FORCED_PCI, net, 0)
                    t, self.time = self.time, saved
                    if t == -1:
                        self.time = -1
                paths = [self.system.path(net, gpu) for gpu in self.gpus]
                max_bw = max((p.bw for p in paths), default=0.0)
                min_hops = min((p.count for p in paths if p.bw == max_bw and p.count > 0), default=0)
                if max_bw >= bw:
                    for k2 in range(len(self.gpus)):
                        i = (c + k2) % len(self.gpus)
                        if paths[i].bw == max_bw and paths[i].count == min_hops:
                            self.try_gpu(g, best, 0, back_net, back_first, 0, net, i)
            for m in same:
                m.attrs["_bw_avail"] += bw

    # ------------------------------------------------------------ choices
    def select_nets(self, type_inter: PathType, gi: int | None) -> list[Node]:
        """NETs to try: each GPU's own NETs first, then any other within ``type_inter`` (NCCL ncclTopoSelectNets)."""
        key = (int(type_inter), gi)
        if key in self._nets_cache:
            return self._nets_cache[key]
        out: list[Node] = []
        gpus = self.gpus if gi is None else [self.gpus[gi]]
        for gpu in gpus:
            first = None
            for c in range(MAXCHANNELS):
                net = local_net(self.system, gpu, c)
                if net is None or net is first:
                    break
                first = first or net
                if net not in out and net in self.nets:
                    out.append(net)
        for t in range(int(type_inter) + 1):
            for gpu in gpus:
                for net in self.nets:
                    if self.system.path(gpu, net).type == t and net not in out:
                        out.append(net)
        self._nets_cache[key] = out
        return out

    def _pci_bw(self, gpu: Node) -> float:
        for link in gpu.links:
            if link.type == LinkType.PCI:
                rev = link.remote.link_to(gpu, LinkType.PCI)
                return min(link.bw, rev.bw) if rev else link.bw
        return -1.0

    def _sorted_next(self, i: int, net: Node | None) -> list[tuple[tuple[int, ...], int]]:
        key = (i, -1 if net is None else net.index)
        cached = self._next_cache.get(key)
        if cached is not None:
            return cached
        n = len(self.gpus)
        gpu = self.gpus[i]
        scores: list[tuple[tuple[int, ...], int]] = []
        for k in range(1, n):
            j = (i + k) % n
            p = self.system.path(gpu, self.gpus[j])
            if p.count == 0:
                continue
            inter_bw = inter_pci = inter_hops = 0
            if net is not None:
                np_ = self.system.path(net, self.gpus[j])
                inter_bw, inter_pci, inter_hops = int(np_.bw), int(self._pci_bw(self.gpus[j])), np_.count
            scores.append(((-inter_bw, -inter_pci, inter_hops, -int(p.bw), p.count, k), j))
        scores.sort()
        self._next_cache[key] = scores
        return scores

    def next_gpus(self, g: State, i: int, sort_net: int) -> list[int]:
        """Candidate next GPUs, best first (NCCL ncclTopoSearchNextGpuSort)."""
        n = len(self.gpus)
        flag = 1 << g.nchannels
        net = g.inter[g.nchannels][0] if sort_net and self.nets else None
        scores = [sj for sj in self._sorted_next(i, net) if not self.used[sj[1]] & flag]
        order = [j for _, j in scores]
        if sort_net == -1 and len({(s[3], s[4]) for s, _ in scores}) <= 1:
            order.reverse()
        if self.has_nvs:
            prev_g, next_g = (i - 1) % n, (i + 1) % n
            if g.pattern == Pattern.RING:
                first = [next_g, prev_g]
            elif g.pattern in (Pattern.SPLIT_TREE, Pattern.BALANCED_TREE):
                first = [prev_g, next_g]
            else:
                first = [next_g]
            if next_g == prev_g:
                first = first[:1]
            real = 0
            for f in first:
                if f in order:
                    order.remove(f)
                    order.insert(0, f)
                    real += 1
            order = order[:real]
        return order

    @staticmethod
    def better(g: State, best: State) -> bool:
        """NCCL ncclTopoCompareGraphs: more channels × bandwidth, then fewer hops."""
        if g.nchannels < g.min_channels:
            return False
        if g.nchannels * g.bw_intra > best.nchannels * best.bw_intra:
            return True
        if g.nchannels * g.bw_intra < best.nchannels * best.bw_intra:
            return False
        return g.pattern == best.pattern and g.crossnic == best.crossnic and g.nhops < best.nhops


