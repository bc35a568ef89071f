"""Ring and tree channel search (NCCL ``src/graph/search.cc`` ``ncclTopoCompute``).

For one host, the search looks for as many channels as it can at a required
per-channel bandwidth and a worst allowed path type, starting strict and relaxing:

1. start at the highest speed of NCCL's speed array that the best GPU path allows;
2. first ask every channel to repeat the first (``sameChannels``), then allow different ones;
3. allow worse intra-host path types (NVL → … → SYS), then worse GPU↔NIC types,
   then channels that enter and leave through different NICs (``crossNic``);
4. lower the speed, down the array, until something is found;
5. with a solution, try higher speeds again with at least as many channels (pass 2).

Every GPU-to-GPU (and NIC-to-GPU) step of a channel subtracts the channel's bandwidth
from each link of the path it uses, per direction; a step is possible only when every
link still has that much. A solution is better when channels × bandwidth is larger,
then when it has fewer hops. With NICs (several hosts), a ring channel is
``NET n → GPU a → … → GPU x → NET n`` (or ``NET m`` across NICs); the rings of the hosts
are joined through those NICs (:func:`join_rings`).

Differences from NCCL: no NVLS/CollNet patterns; the search budgets are in recursion
steps like NCCL's, the large ones scaled by ``effort`` (1.0 = NCCL's; a Python step costs
about ten times a C one, so pyxccl's callers use 0.1).
"""

from __future__ import annotations

import sys

from .graph import GRAPH_RING, GRAPH_TREE, Channel, Graph, Pattern
from .searchrec import MAXCHANNELS, Search, State
from .system import LinkType, Node, PathType, System

SPEED_INTRA = (40.0, 30.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0)
SPEED_INTER = (48.0, 30.0, 28.0, 24.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.4, 1.2, 0.24, 0.12)
SM90_SPEED_INTRA = (60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0)
SM90_SPEED_INTER = (48.0, 45.0, 42.0, 40.0, 30.0, 24.0, 22.0, 20.0, 17.5, 15.0, 12.0, 6.0, 3.0, 2.4, 1.2, 0.24, 0.12)
SM100_SPEED_INTRA = (90.0, 80.0, 70.0, 60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 19.0)

GLOBAL_TIMEOUT = 1 << 19
TIMEOUT = 1 << 14
TIMEOUT_TREE = 1 << 14
TIMEOUT_SAMECHANNELS = 1 << 8


# ---------------------------------------------------------------- driver

def _min_max_type(system: System, gpus: list[Node], targets: list[Node]) -> tuple[PathType, PathType]:
    lo, hi = PathType.SYS, PathType.LOC
    for a in gpus:
        for b in targets:
            if a is not b:
                t = system.path(a, b).type
                lo, hi = min(lo, t), max(hi, t)
    return lo, hi


def _search_init(system: System, gpus: list[Node], nets: list[Node]) -> tuple[float, float]:
    """(maxBw, totalBw): best path bandwidth from a GPU (to NETs, else GPUs), most bandwidth out of one GPU."""
    if not nets and len(gpus) == 1:
        return 5000.0, 5000.0
    max_bw = total_bw = 0.0
    for gpu in gpus:
        for t in (nets or gpus):
            p = system.path(gpu, t)
            if p.count:
                max_bw = max(max_bw, p.bw)
        nvl = sum(lk.bw for lk in gpu.links if lk.type == LinkType.NVL)
        pci = max([lk.bw for lk in gpu.links if lk.type == LinkType.PCI], default=0.0)
        total_bw = max(total_bw, nvl, pci)
    return max_bw, total_bw


def _dup_channels(g: State, cc_min: int) -> None:
    """NCCL ncclTopoDupChannels: fast channels are doubled (each gets half the bandwidth)."""
    if g.nchannels == 0 or g.bw_intra < 25.0 or (cc_min > 80 and g.bw_intra < 50.0 and g.nchannels > 4):
        return
    dup = min(g.nchannels * 2, g.max_channels)
    for c in range(g.nchannels, dup):
        g.intra[c] = list(g.intra[c - g.nchannels])
        g.inter[c] = list(g.inter[c - g.nchannels])
    div = -(-dup // g.nchannels)
    g.bw_intra /= div
    g.bw_inter /= div
    g.nchannels = dup


def compute(system: System, pattern: Pattern = Pattern.RING, host: int = 0, use_nets: bool = True,
            min_channels: int = 1, max_channels: int = MAXCHANNELS // 2, cross_nic: int = 2,
            effort: float = 1.0) -> Graph:
    """Search the channels of one pattern on one host; paths must have been computed.

    ``use_nets``: include the host's NICs (a communicator spanning several hosts); without
    them the search is intra-host only, as NCCL does when every rank is on one host.
    ``cross_nic``: 0 never, 1 always, 2 (NCCL's default) only when it helps.
    ``effort`` scales NCCL's search budgets (recursion steps).
    """
    s = Search(system, host, use_nets)
    gpus, nets = s.gpus, s.nets
    n = len(gpus)
    gid = GRAPH_RING if pattern == Pattern.RING else GRAPH_TREE
    if n == 0:
        return Graph(gid, pattern, host=host)
    system.reset_bandwidth()
    cross = cross_nic if len(nets) > 1 and pattern in (Pattern.RING, Pattern.BALANCED_TREE, Pattern.SPLIT_TREE) else 0
    min_intra, max_intra = PathType.LOC, PathType.SYS
    min_inter, max_inter = PathType.PIX, PathType.SYS
    if n > 1:
        min_intra, max_intra = _min_max_type(system, gpus, gpus)
    if nets:
        min_inter, max_inter = _min_max_type(system, gpus, nets)
        max_intra = max_inter
    cc_min = min(int(gpu.attrs.get("sm", 0)) for gpu in gpus)
    if n == 1 and pattern != Pattern.RING:
        pattern = Pattern.TREE
    best = State(pattern, crossnic=1 if cross == 1 else 0, type_intra=min_intra, type_inter=min_inter,
                  min_channels=min_channels, max_channels=max_channels,
                  intra=[[0] * n for _ in range(max_channels)], inter=[[None, None] for _ in range(max_channels)])
    speeds: tuple[float, ...]
    if not nets:
        speeds = SM100_SPEED_INTRA if cc_min >= 100 else SM90_SPEED_INTRA if cc_min >= 90 else SPEED_INTRA
    else:
        speeds = SM90_SPEED_INTER if cc_min >= 90 else SPEED_INTER
    max_bw, total_sys = _search_init(system, gpus, nets)
    total_bw = total_sys * n / (n - 1) if n > 1 and pattern != Pattern.RING else total_sys
    si = 0
    while (speeds[si] > max_bw or speeds[si] * best.min_channels > total_bw) and si < len(speeds) - 1:
        si += 1
    tmp = best.copy()
    tmp.bw_intra = tmp.bw_inter = speeds[si]
    global_timeout = int(GLOBAL_TIMEOUT * effort)
    amd = s.arch == "x86_64" and s.vendor == "AuthenticAMD"
    pass_ = 1
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 100 * max_channels * (n + 4)))
    try:
        while True:
            if tmp.same_channels:  # small already: not scaled
                s.time = TIMEOUT_SAMECHANNELS
            else:
                budget = TIMEOUT_TREE if tmp.pattern == Pattern.TREE else TIMEOUT
                s.time = max(TIMEOUT_SAMECHANNELS, int(budget * effort))
            tmp.nchannels = 0
            global_timeout -= s.time
            s.search_rec(tmp, best)
            time = s.time
            done = time == -1 or best.nchannels * best.bw_inter >= total_sys
            if not done and pass_ == 1:
                if tmp.same_channels == 1 and not (amd and tmp.type_intra == PathType.SYS):
                    tmp.same_channels = 0
                    continue
                tmp.same_channels = 1
                global_timeout = global_timeout + time if time != -1 else int(GLOBAL_TIMEOUT * effort)
                if not (global_timeout < 0 and best.nchannels):
                    if cc_min >= 90 and tmp.pattern == Pattern.BALANCED_TREE:
                        tmp.pattern = Pattern.TREE
                        continue
                    tmp.pattern = best.pattern
                    top_intra = tmp.type_inter if nets else max_intra
                    if tmp.type_intra < top_intra and (best.nchannels == 0 or tmp.type_intra < best.type_intra):
                        tmp.type_intra = PathType(tmp.type_intra + 1)
                        continue
                    tmp.type_intra = min_intra
                    if nets and tmp.type_inter < max_inter and (
                            best.nchannels == 0 or tmp.type_inter < best.type_inter or tmp.type_inter < PathType.PXN):
                        tmp.type_inter = PathType(tmp.type_inter + 1)
                        continue
                    tmp.type_inter = min_inter
                    if cross == 2 and tmp.crossnic == 0 and best.pattern in (Pattern.RING, Pattern.BALANCED_TREE):
                        tmp.crossnic = 2
                        continue
                    tmp.crossnic = 1 if cross == 1 else 0
                    if si < len(speeds) - 1 and (best.nchannels == 0 or speeds[si + 1] / best.bw_inter > .49):
                        si += 1
                        tmp.bw_intra = tmp.bw_inter = speeds[si]
                        continue
                    si = 0
                    while speeds[si] > max_bw and si < len(speeds) - 1:
                        si += 1
                    tmp.bw_intra = tmp.bw_inter = speeds[si]
            if pass_ == 1:
                time = -1
                _dup_channels(best, cc_min)
                tmp = best.copy()
                si = 0
                while speeds[si] > best.bw_inter and si < len(speeds) - 1:
                    si += 1
                tmp.bw_intra = tmp.bw_inter = speeds[si]
                tmp.min_channels = best.nchannels
                pass_ = 2
            if pass_ == 2 and time != 0 and si > 0:
                if best.pattern == Pattern.RING:
                    si -= 1
                    tmp.bw_intra = tmp.bw_inter = speeds[si]
                    continue
                if tmp.bw_intra == best.bw_intra and tmp.bw_intra < tmp.bw_inter * 2:
                    si -= 1
                    tmp.bw_intra = speeds[si]
                    continue
            break
    finally:
        sys.setrecursionlimit(old_limit)
        system.reset_bandwidth()
    return _to_graph(s, best, gid, host)


def _to_graph(s: Search, st: State, gid: int, host: int) -> Graph:
    g = Graph(gid, st.pattern, crossnic=st.crossnic, bw_intra=st.bw_intra, bw_inter=st.bw_inter,
              latency_inter=st.latency_inter, type_intra=st.type_intra, type_inter=st.type_inter,
              same_channels=st.same_channels, host=host)
    if st.nchannels == 0:  # NCCL: "Could not find a path", fall back to the simple order
        g.channels = [Channel([gpu.attrs["rank"] for gpu in s.gpus],
                              s.nets[0].attrs["dev"] if s.nets else None, s.nets[0].attrs["dev"] if s.nets else None)]
        g.bw_intra = g.bw_inter = 0.1
        g.type_intra = g.type_inter = PathType.SYS
        return g
    for c in range(st.nchannels):
        nin, nout = st.inter[c]
        g.channels.append(Channel([s.gpus[i].attrs["rank"] for i in st.intra[c]],
                                  nin.attrs["dev"] if nin is not None else None,
                                  nout.attrs["dev"] if nout is not None else None))
    return g


def join_rings(graphs: list[Graph]) -> list[list[tuple[int, int]]]:
    """Inter-host rings: channel c visits host 0's GPUs in its ring order, then host 1's, … and back.

    ``graphs``: one ring graph per host, in host order (each searched with its NICs). Every
    host uses the smallest channel count among them (NCCL agrees on it the same way).
    Returns, per channel, the ring as (host, GPU rank) pairs.
    """
    if not graphs:
        return []
    nch = min(g.nchannels for g in graphs)
    return [[(h, r) for h, g in enumerate(graphs) for r in g.channels[c].gpus] for c in range(nch)]
