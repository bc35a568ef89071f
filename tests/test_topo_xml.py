"""NCCL topology and graph XML: the real Azure files load, dumps load back (byte for byte for
NCCL's own dumps), merging a file with detection follows NCCL, bad files fail clearly."""

from __future__ import annotations

import os

import pytest

from pyxccl.errors import ConfigError
from pyxccl.topo import NodeType, PathType, graph as tgraph, load_system, xml as txml
from pyxccl.topo.build import system_from_xml

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nccl-topo")


def data(name: str) -> str:
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent (the shared NCCL topology files live outside the repository)")
    return path


@pytest.mark.parametrize("name", ["ndv4-topo.xml", "ndv5-topo.xml", "ncv4-topo.xml"])
def test_azure_files_round_trip_byte_for_byte(name):
    # The Azure files are NCCL dumps: our writer must produce the very same text, so a
    # pyxccl dump is laid out exactly as NCCL writes (and reads) it.
    text = open(data(name)).read()
    assert txml.dumps(txml.parse(text)) == text


def test_ndv4_skeleton_is_four_amd_numa_nodes_with_one_gen4_switch_each():
    system = load_system(txml.load(data("ndv4-topo.xml")))
    cpus, pcis = system.cpus, system.of_type(NodeType.PCI)
    assert [c.attrs["numaid"] for c in cpus] == [0, 1, 2, 3]
    assert {c.attrs["vendor"] for c in cpus} == {"AuthenticAMD"}
    assert [p.attrs["busid"] for p in pcis] == [f"ffff:ff:0{i}.0" for i in range(1, 5)]
    # GPU/NIC slots without <gpu>/<nic> make no node (NCCL attaches detected devices there)
    assert system.gpus == [] and system.nets == []
    for p in pcis:  # 16 GT/s x16 = 16 * 120 / 80 = 24 GB/s, both directions
        assert [lk.bw for lk in p.links] == [24.0]
    # AMD inter-socket links: 16 GB/s (NCCL AMD_BW), every pair, both directions
    assert all(lk.bw == 16.0 for c in cpus for lk in c.links if lk.remote.type == NodeType.CPU)
    assert system.path(cpus[0], cpus[3]).type == PathType.SYS


def test_ndv5_skeleton_is_two_intel_sockets_with_gen5_switches():
    system = load_system(txml.load(data("ndv5-topo.xml")))
    assert len(system.cpus) == 2 and len(system.of_type(NodeType.PCI)) == 8
    assert {lk.bw for p in system.of_type(NodeType.PCI) for lk in p.links} == {48.0}  # 32 GT/s x16
    sapphire = [lk.bw for lk in system.cpus[0].links if lk.remote.type == NodeType.CPU]
    assert sapphire == [10.0]  # Intel family 6 model >= 0x55: SKL_QPI_BW


def test_ncv4_full_dump_gpus_and_socket_nic():
    system = load_system(txml.load(data("ncv4-topo.xml")))
    assert [g.attrs["dev"] for g in system.gpus] == [0, 1, 2, 3]
    assert {g.attrs["sm"] for g in system.gpus} == {80}
    # link_speed="" and link_width="0": NCCL's defaults, Gen3 x16 = 12 GB/s
    assert {lk.bw for g in system.gpus for lk in g.links} == {12.0}
    (net,) = system.nets
    assert (net.attrs["name"], net.attrs["speed"], net.attrs["bw"]) == ("eth0", 100000, 12.5)
    # each GPU's NVLink points at itself: ignored, with a note
    assert len([w for w in system.warnings if "itself" in w]) == 4
    assert system.path(system.gpus[0], net).type == PathType.PHB  # virtual NIC under CPU 0
    assert system.path(system.gpus[1], net).type == PathType.SYS


def test_merge_attaches_detected_devices_to_the_file_and_file_values_win():
    root = txml.load(data("ndv4-topo.xml"))
    detected = txml.new_system()
    cpu = txml.get_cpu(detected, 1, affinity="ff", arch="x86_64", vendor="AuthenticAMD", host_hash="0xabc")
    # a GPU whose bus id the file has (under switch ffff:ff:02.0) ...
    txml.add_gpu(txml.add_pci(cpu, "0001:00:00.0", "0x030200", "16 GT/s", 16), 0, 80, 0, 1)
    # ... and one it has not, behind a detected switch
    sw = txml.add_pci(cpu, "0000:80:00.0", "0x060400", "16 GT/s", 16)
    txml.add_gpu(txml.add_pci(sw, "0000:81:00.0", "0x030200", "16 GT/s", 16), 1, 80, 1, 1)
    # a NIC the file has, whose detected link is slower: the file's link values win
    txml.add_net(txml.add_pci(cpu, "0101:00:00.0", "0x020700", "8 GT/s", 8), "mlx5_0", 0, 200000, gdr=1)
    notes = txml.merge(root, detected)
    assert len(notes) == 3
    gpu = txml.find_pci(root, "0001:00:00.0")
    assert gpu.find("gpu") is not None
    parents = txml.parents(root)
    assert parents[gpu].get("busid") == "ffff:ff:02.0"  # attached where the file has it
    grafted = txml.find_pci(root, "0000:81:00.0")
    assert parents[grafted].get("busid") == "0000:80:00.0" and parents[parents[grafted]].get("numaid") == "1"
    nic = txml.find_pci(root, "0101:00:00.0")
    assert (nic.get("link_speed"), nic.get("link_width")) == ("16 GT/s", "16")
    system = system_from_xml(root)
    assert len(system.gpus) == 2 and len(system.nets) == 1


def test_bad_files_raise_config_error(tmp_path):
    bad = tmp_path / "bad.xml"
    for text, what in (("<system version=\"2\"></system>", "version"), ("<system version=\"1\">", "well-formed"),
                       ("<graphs version=\"1\"/>", "root element")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=what):
            txml.load(str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        txml.load(str(tmp_path / "missing.xml"))


def test_nccl_graph_file_loads_and_dumps_back():
    graphs = tgraph.load(data("ncv4-graph.xml"))
    assert [(g.id, int(g.pattern), g.nchannels) for g in graphs] == [(0, 4, 2), (1, 1, 4), (2, 3, 4)]
    ring = graphs[0]
    assert [c.gpus for c in ring.channels] == [[0, 1, 2, 3], [0, 3, 2, 1]]
    assert (ring.bw_intra, ring.type_intra, ring.type_inter) == (12.0, PathType.SYS, PathType.PIX)
    # Our dump writes dev like NCCL >= 2.19 (%#lx: "0x1"), which both old and new NCCL read.
    text = tgraph.dumps(graphs)
    assert 'dev="0x3"' in text
    again = tgraph.from_xml(txml.parse(text, "graphs"))
    assert again == graphs


def test_graph_dev_is_read_as_hex_like_nccl():
    root = txml.parse('<graphs version="1"><graph id="0" pattern="4" crossnic="0" nchannels="1" '
                      'speedintra="20" speedinter="20" typeintra="NVL" typeinter="PIX" samechannels="1">'
                      '<channel><net dev="0"/><gpu dev="10"/><gpu dev="0x1"/><net dev="1"/></channel>'
                      '</graph></graphs>', "graphs")
    (g,) = tgraph.from_xml(root)
    assert g.channels[0].gpus == [16, 1] and (g.channels[0].net_in, g.channels[0].net_out) == (0, 1)
