"""Channel search: the worked 4-GPU NVLink example, NDv4/NDv5-like 8-GPU NVSwitch machines built
from the Azure files, the NCv4 graph file, graph XML round trips, and multi-host rings."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from pyxccl.topo import (NodeType, Pattern, PathType, compute, join_rings, load_system, search, synth,
                         xml as txml)
from pyxccl.topo import graph as tgraph
from pyxccl.topo.searchrec import Search, State

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nccl-topo")


def azure(name: str, sm: int, nvlinks: int, nic_mbps: int):
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent (the shared NCCL topology files live outside the repository)")
    # What NCCL's detection adds on such a VM: A100 (sm80, 12 NVLinks) or H100 (sm90, 18 NVLinks)
    # to an NVSwitch in every GPU slot, an InfiniBand NIC (HDR 200 / NDR 400 Gb/s) in every NIC slot.
    return load_system(synth.populate(txml.load(path), sm, nvlinks, nic_mbps))


def test_worked_example_four_nvlink_gpus_give_four_rings():
    # mission-sources.md §2: NVLink 20 between every pair, 40 between 0-3 and 1-2. No ring at 40
    # (the way back to GPU0 has less), four rings at 20 that use every link's bandwidth.
    system = load_system(synth.nvlink_quad())
    g = compute(system, Pattern.RING, effort=0.1)
    rings = [tuple(c.gpus) for c in g.channels]
    assert (g.nchannels, g.bw_intra, g.type_intra) == (4, 20.0, PathType.NVL)
    assert set(rings) == {(0, 1, 2, 3), (0, 3, 2, 1), (0, 3, 1, 2), (0, 2, 1, 3)}
    used = Counter((r[i], r[(i + 1) % 4]) for r in rings for i in range(4))
    for gpu in system.gpus:  # every directed NVLink carries exactly its bandwidth
        for link in gpu.links:
            if link.remote.type == NodeType.GPU:
                assert used[(gpu.attrs["dev"], link.remote.attrs["dev"])] * 20.0 == link.bw
    after3 = Counter(r[(r.index(3) + 1) % 4] for r in rings)
    assert after3 == {0: 2, 1: 1, 2: 1}  # seen from GPU3: next is 0 twice, 1 once, 2 once


def check_rings_through_closest_nics(system, g, nnets):
    gpus = {n.attrs["rank"]: n for n in system.gpus}
    nets = {n.attrs["dev"]: n for n in system.nets}
    for ch in g.channels:
        assert sorted(ch.gpus) == sorted(gpus), "every GPU once per channel"
        # the ring enters at the GPU next to its NIC and leaves from the GPU next to its NIC
        assert system.path(gpus[ch.gpus[0]], nets[ch.net_in]).type == PathType.PIX
        assert system.path(gpus[ch.gpus[-1]], nets[ch.net_out]).type == PathType.PIX
    assert sorted(ch.net_in for ch in g.channels) == list(range(nnets)), "each NIC starts one channel"


def test_ndv4_like_rings_use_every_gpu_and_the_closest_nics():
    system = azure("ndv4-topo.xml", 80, 12, 200000)
    g = compute(system, Pattern.RING, use_nets=True, effort=0.1)
    # 8 channels, one per HDR NIC, each limited by PCIe Gen4 x16 (24 GB/s < 25 GB/s of the NIC);
    # each ring enters and leaves through one NIC, at the two GPUs of that NIC's PCIe switch.
    assert (g.nchannels, g.bw_inter, g.type_intra, g.crossnic) == (8, 24.0, PathType.NVL, 0)
    check_rings_through_closest_nics(system, g, 8)
    assert all(ch.net_in == ch.net_out for ch in g.channels)


def test_ndv5_like_rings_use_every_gpu_and_the_closest_nics():
    system = azure("ndv5-topo.xml", 90, 18, 400000)
    g = compute(system, Pattern.RING, use_nets=True, effort=0.1)
    # one GPU per NIC: a ring that left by its entry NIC would have to relay through the first
    # GPU's NVLink (PXN) and then fits only at 45 GB/s; entering at one NIC and leaving by the
    # next GPU's own NIC (crossNic) keeps 8 channels at the full 48 GB/s of PCIe Gen5.
    assert (g.nchannels, g.bw_inter, g.crossnic) == (8, 48.0, 2)
    check_rings_through_closest_nics(system, g, 8)


def test_ndv4_single_host_matches_nccls_dgx_a100_result():
    # NCCL on an 8xA100 NVSwitch box logs "Pattern 4, crossNic 0, nChannels 12, bw 20/20, type NVL/PIX,
    # sameChannels 1": 6 rings at 40 GB/s use the 240 GB/s of NVLink, then duplicated.
    system = azure("ndv4-topo.xml", 80, 12, 200000)
    g = compute(system, Pattern.RING, use_nets=False, effort=0.1)
    assert (g.nchannels, g.bw_intra, g.type_intra, g.same_channels) == (12, 20.0, PathType.NVL, 1)
    assert all(ch.net_in is None for ch in g.channels)


def test_ncv4_search_versus_azure_graph_file():
    path = os.path.join(DATA, "ncv4-graph.xml")
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent")
    system = load_system(txml.load(os.path.join(DATA, "ncv4-topo.xml")))
    ours = compute(system, Pattern.RING, use_nets=False, effort=0.1)
    theirs = tgraph.load(path, system)[0]
    # Same ring, speed and path type as the file's first channel ...
    assert ours.channels[0].gpus == theirs.channels[0].gpus == [0, 1, 2, 3]
    assert (ours.bw_intra, ours.type_intra) == (theirs.bw_intra, theirs.type_intra) == (12.0, PathType.SYS)
    # ... but one channel, not two: each GPU's PCIe link (Gen3 x16 = 12 GB/s) carries one 12 GB/s
    # channel per direction, and the file's reverse ring needs it again. The file is hand-set
    # (it is meant as NCCL_GRAPH_FILE); replaying it oversubscribes the links:
    assert ours.nchannels == 1
    s = Search(system, 0, False)
    st = State(Pattern.RING, bw_intra=12.0, bw_inter=12.0, type_intra=PathType.SYS)
    gpus = system.gpus
    system.reset_bandwidth()
    ok = [s.follow(st, gpus[a], gpus[b], 1) is not None
          for ch in theirs.channels for a, b in zip(ch.gpus, ch.gpus[1:] + ch.gpus[:1])]
    system.reset_bandwidth()
    assert ok[:4] == [True] * 4 and not all(ok[4:])


def test_graph_dump_loads_back_with_nets():
    system = azure("ndv4-topo.xml", 80, 12, 200000)
    graphs = search(system, inter_host=True)
    assert [g.id for g in graphs] == [0, 1] and graphs[1].pattern in (Pattern.BALANCED_TREE, Pattern.TREE)
    text = tgraph.dumps(graphs, system)
    assert text.startswith('<graphs version="1">') and "<net dev=" in text
    assert tgraph.from_xml(txml.parse(text, "graphs"), system) == graphs


def test_pcie_only_box_finds_a_ring():
    system = load_system(synth.pcie_box())
    g = compute(system, Pattern.RING, use_nets=False, effort=0.1)
    assert g.nchannels >= 1 and g.type_intra == PathType.SYS and sorted(g.channels[0].gpus) == [0, 1, 2, 3, 4]


def test_join_rings_visits_each_host_contiguously():
    a = load_system(synth.nvlink_quad())
    ga = compute(a, Pattern.RING, use_nets=False, effort=0.1)
    gb = compute(load_system(synth.pcie_box()), Pattern.RING, use_nets=False, effort=0.1)
    rings = join_rings([ga, gb])
    assert len(rings) == min(ga.nchannels, gb.nchannels) == 1
    assert rings[0] == [(0, r) for r in ga.channels[0].gpus] + [(1, r) for r in gb.channels[0].gpus]


def test_search_is_fast_enough():
    system = azure("ndv4-topo.xml", 80, 12, 200000)
    t = time.monotonic()
    search(system, inter_host=True)
    assert time.monotonic() - t < 5.0
