"""Paths: BFS with NCCL's path types and bottleneck bandwidth; P2P, PXN and GPU-Direct decisions."""

from __future__ import annotations

import os

import pytest

from pyxccl.topo import NodeType, PathType, load_system, path_matrix, synth, xml as txml
from pyxccl.topo.paths import gdr_allowed, p2p_allowed

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nccl-topo")


def test_pcie_box_ranks_pix_pxb_phb_sys():
    # mission-sources.md §2: PIX (one PCIe switch) < PXB (several) < PHB (host bridge) < SYS (across CPUs)
    system = load_system(synth.pcie_box())
    g = system.gpus
    types = [system.path(g[0], g[i]).type for i in (1, 2, 3, 4)]
    assert types == [PathType.PIX, PathType.PXB, PathType.PHB, PathType.SYS]
    assert types == sorted(types) and len(set(types)) == 4
    # symmetric
    assert [system.path(g[i], g[0]).type for i in (1, 2, 3, 4)] == types
    # hop counts: 2 (switch), 4 (switch, switch, switch), 4 (switches, CPU), 3 + 1 (CPU, CPU)
    assert [system.path(g[0], g[i]).count for i in (1, 2, 3, 4)] == [2, 4, 4, 5]


def test_path_bandwidth_is_the_bottleneck_link():
    root = synth.pcie_box()
    txml.find_pci(root, "0000:12:00.0").set("link_width", "4")  # a narrow switch uplink: 4 lanes Gen4 = 6 GB/s
    system = load_system(root)
    g = system.gpus
    assert system.path(g[0], g[1]).bw == 24.0
    assert system.path(g[0], g[2]).bw == 6.0
    assert system.path(g[0], g[4]).bw == 10.0  # Skylake inter-socket link, 10 GB/s


def test_fewest_hops_beat_more_bandwidth():
    # mission-sources.md §2: GPU2 -> GPU0 directly at 20 beats GPU2 -> GPU3 -> GPU0 at 40: one hop, not two
    system = load_system(synth.nvlink_quad())
    g = system.gpus
    p = system.path(g[2], g[0])
    assert (p.count, p.bw, p.type) == (1, 20.0, PathType.NVL)
    assert system.path(g[0], g[3]).bw == 40.0


def test_nvlink_through_one_gpu_is_nvb():
    root = synth.nvlink_quad()
    for gpu in root.iter("gpu"):  # keep only the chain 0 - 1 - 2 - 3
        dev = int(gpu.get("dev"))
        for nvl in list(gpu):
            target = int(nvl.get("target")[5:7], 16) // 0x10 - 1
            if abs(target - dev) != 1:
                gpu.remove(nvl)
    system = load_system(root)
    g = system.gpus
    assert system.path(g[0], g[1]).type == PathType.NVL
    assert system.path(g[0], g[2]).type == PathType.NVB  # relayed by GPU1
    assert system.path(g[0], g[3]).type == PathType.PHB  # a GPU relays one NVLink hop only: PCIe instead


def test_p2p_and_gdr_decisions_follow_path_types():
    system = load_system(synth.pcie_box())  # Intel CPUs: P2P up to PXB only
    g, net = system.gpus, system.nets[0]
    assert p2p_allowed(system, g[0], g[1]) and p2p_allowed(system, g[0], g[2])
    assert not p2p_allowed(system, g[0], g[3]) and not p2p_allowed(system, g[0], g[4])
    rerouted = system.path(g[0], g[3])  # no P2P: through the destination's CPU
    assert rerouted.via is not None and rerouted.via.type == NodeType.CPU
    assert gdr_allowed(system, g[0], net)  # PIX to the NIC
    assert not gdr_allowed(system, g[3], net)  # PHB: data goes through host memory


def test_pxn_reaches_a_remote_nic_through_its_local_gpu():
    path = os.path.join(DATA, "ndv4-topo.xml")
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent")
    system = load_system(synth.populate(txml.load(path), 80, 12, 200000))
    gpu = next(g for g in system.gpus if g.attrs["busid"] == "0003:00:00.0")  # NUMA 0
    far = next(n for n in system.nets if n.attrs["name"] == "mlx5_0")  # NIC 0101:00:00.0, NUMA 1
    p = system.path(gpu, far)
    assert p.type == PathType.PXN and p.via.type == NodeType.GPU
    assert system.path(p.via, far).type == PathType.PIX
    assert p.bw == 24.0  # NVLink 240, then the peer's PCIe Gen4 x16


def test_two_hosts_in_one_file_are_joined_by_net():
    root = synth.nvlink_quad()
    other = synth.pcie_box()
    for cpu in root.findall("cpu"):
        cpu.set("host_hash", "0xa")
    for cpu in other.findall("cpu"):
        cpu.set("host_hash", "0xb")
        root.append(cpu)
    system = load_system(root)
    assert system.hosts == ["0xa", "0xb"]
    a, b = system.of_type(NodeType.GPU, 0)[0], system.of_type(NodeType.GPU, 1)[0]
    assert system.path(a, b).type == PathType.DIS
    table = path_matrix(system)
    assert "h1:GPU4" in table and " NET " in table
