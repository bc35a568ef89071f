"""Detection from a fake /sys (PCI tree, NUMA, NICs), degraded environments, this machine,
and what the communicator uses: local_system, summarize, host_layout / order_ranks."""

from __future__ import annotations

import json
import os

import pytest

from pyxccl import config
from pyxccl.bootstrap.net import Interface
from pyxccl.topo import (NodeType, PathType, detect, host_hash, host_layout, load_system, local_system, order_ranks,
                         summarize, xml as txml)
from pyxccl.topo.detect import GpuInfo, socket_interfaces

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nccl-topo")


def write(path, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def pci_dev(sys_root, chain: list[str], cls: str, speed: str = "16.0 GT/s PCIe", width: int = 16,
            numa: int = 1) -> None:
    path = os.path.join(sys_root, "devices", "pci0000:00", *chain)
    for name, value in (("class", cls), ("vendor", "0x10de" if cls.startswith("0x03") else "0x15b3"),
                        ("device", "0x20b5"), ("subsystem_vendor", "0x10de"), ("subsystem_device", "0x1533"),
                        ("max_link_speed", speed), ("max_link_width", str(width)), ("numa_node", str(numa))):
        write(os.path.join(path, name), value)
    link = os.path.join(sys_root, "bus", "pci", "devices", chain[-1])
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(path, link)
    os.makedirs(os.path.join(sys_root, "bus", "pci"), exist_ok=True)
    if not os.path.exists(os.path.join(path, "subsystem")):
        os.symlink(os.path.join(sys_root, "bus", "pci"), os.path.join(path, "subsystem"))


@pytest.fixture()
def fake_sys(tmp_path):
    """Root port 00:01.0 -> switch 01:00.0 (up) -> 02:08.0 / 02:09.0 (down) -> GPU 03:00.0, NIC 04:00.0;
    root port 00:02.0 -> GPU 05:00.0; NUMA nodes 0 and 1; an Intel Skylake CPU."""
    sys_root, proc = str(tmp_path / "sys"), str(tmp_path / "proc")
    up = ["0000:00:01.0", "0000:01:00.0"]
    pci_dev(sys_root, up[:1], "0x060400")
    pci_dev(sys_root, up, "0x060400")
    pci_dev(sys_root, up + ["0000:02:08.0"], "0x060400")
    pci_dev(sys_root, up + ["0000:02:09.0"], "0x060400", width=8)
    pci_dev(sys_root, up + ["0000:02:08.0", "0000:03:00.0"], "0x030200")
    pci_dev(sys_root, up + ["0000:02:09.0", "0000:04:00.0"], "0x020700")
    pci_dev(sys_root, ["0000:00:02.0"], "0x060400", numa=0)
    pci_dev(sys_root, ["0000:00:02.0", "0000:05:00.0"], "0x030200", numa=0)
    for node, mask in ((0, "00000000,000000ff"), (1, "00000000,0000ff00")):
        write(os.path.join(sys_root, f"devices/system/node/node{node}/cpumap"), mask)
    net = os.path.join(sys_root, "class", "net", "ib0")
    os.makedirs(net)
    os.symlink(os.path.join(sys_root, "devices/pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:09.0/0000:04:00.0"),
               os.path.join(net, "device"))
    write(os.path.join(net, "speed"), "200000")
    write(os.path.join(proc, "cpuinfo"), "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
          "model\t\t: 85\nmodel name\t: Xeon\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n")
    return sys_root, proc


def test_fake_sysfs_pci_tree_numa_and_nics(fake_sys):
    sys_root, proc = fake_sys
    gpus = [GpuInfo(0, "0000:03:00.0", 80, {"0000:05:00.0": 4, "0000:ee:00.0": 8}),
            GpuInfo(1, "0000:05:00.0", 80, {"0000:03:00.0": 4})]
    ifs = [Interface("ib0", "10.9.0.1", True, False), Interface("lo", "127.0.0.1", True, True)]
    det = detect(config.load({}), sysfs=sys_root, procfs=proc, gpus=gpus, interfaces=ifs)
    root = det.root
    cpu1 = txml.find(root, "cpu", "numaid", "1")
    assert (cpu1.get("vendor"), cpu1.get("familyid"), cpu1.get("modelid")) == ("GenuineIntel", "6", "85")
    assert cpu1.get("affinity") == "00000000,0000ff00" and cpu1.get("host_hash")
    parents = txml.parents(root)
    gpu = txml.find_pci(root, "0000:03:00.0")
    # the downstream port 02:08.0 is skipped: the GPU hangs under the switch's upstream port
    assert parents[gpu].get("busid") == "0000:01:00.0" and parents[parents[gpu]] is cpu1
    assert txml.find_pci(root, "0000:02:08.0") is None and txml.find_pci(root, "0000:00:01.0") is None
    nic = txml.find_pci(root, "0000:04:00.0")
    assert nic.get("link_width") == "8"  # the lower of the device's and its port's width
    assert nic.find("nic/net").get("speed") == "200000"
    links = {n.get("target"): (n.get("count"), n.get("tclass")) for n in gpu.find("gpu")}
    assert links == {"0000:05:00.0": ("4", "0x030200"), "0000:ee:00.0": ("8", "0x068000")}
    assert parents[txml.find_pci(root, "0000:05:00.0")].get("numaid") == "0"
    assert det.notes == []
    # Socket NICs cannot DMA into GPU memory: GPU <-> NIC traffic goes through the CPU (NCCL's GDR rule).
    system = load_system(root)
    g0, g1 = sorted(system.gpus, key=lambda g: g.attrs["dev"])
    net = system.nets[0]
    assert system.path(g0, net).type >= PathType.PHB and system.path(g0, net).via.type == NodeType.CPU
    assert system.path(g0, g1).type == PathType.NVL and system.of_type(NodeType.NVS)  # invisible target: NVSwitch
    # With GPU-Direct RDMA (nvidia_peermem loaded, an RDMA NIC) the PCIe paths are used as they are.
    os.makedirs(os.path.join(sys_root, "module", "nvidia_peermem"))
    root = detect(config.load({}), sysfs=sys_root, procfs=proc, gpus=gpus, interfaces=ifs).root
    txml.find(root, "net").set("gdr", "1")
    system = load_system(root)
    g0, g1 = sorted(system.gpus, key=lambda g: g.attrs["dev"])
    net = system.nets[0]
    assert system.path(g0, net).type == PathType.PIX  # GPU and NIC under one switch
    assert system.path(g1, net).type == PathType.PXN  # through g0's NVLink, then g0's switch


def test_degrades_without_sysfs_or_nvml(tmp_path):
    empty = str(tmp_path)
    ifs = [Interface("eth0", "10.1.2.3", True, False)]
    det = detect(config.load({}), sysfs=empty, procfs=empty, gpus=None, interfaces=ifs)
    assert any("NUMA" in n for n in det.notes) and any("speed unknown" in n for n in det.info)
    system = load_system(det.root)
    (cpu,) = system.cpus
    assert cpu.attrs["numaid"] == 0 and cpu.attrs["affinity"]
    (net,) = system.nets
    assert net.attrs["name"] == "eth0" and net.attrs["speed"] == 10000
    assert txml.find(det.root, "cpu").find("nic") is not None  # virtual NIC directly under the CPU


def test_detection_on_this_machine():
    det = detect()
    system = load_system(det.root)
    assert system.cpus and all(c.attrs["arch"] for c in system.cpus)
    assert [n.attrs["name"] for n in system.nets] == [i.name for i in det.interfaces]
    json.dumps(summarize(system))


def test_socket_interface_selection_uses_nccl_syntax():
    ifs = [Interface("lo", "127.0.0.1", True, True), Interface("docker0", "172.17.0.1", True, False),
           Interface("eth0", "10.0.0.2", True, False), Interface("eth1", "10.0.1.2", True, False),
           Interface("ib0", "10.0.2.2", False, False)]
    names = lambda spec: [i.name for i in socket_interfaces(spec, ifs)]  # noqa: E731
    assert names("") == ["eth0", "eth1"]
    assert names("eth1") == ["eth1"]
    assert names("^docker,lo") == ["eth0", "eth1"]
    assert names("=eth") == []
    assert names("^eth") == ["lo", "docker0"] or names("^eth")[0] == "lo"
    assert names("ib") == []  # down


def test_host_hash_follows_hostid():
    assert host_hash(config.load({"PYXCCL_HOSTID": "a"})) != host_hash(config.load({"PYXCCL_HOSTID": "b"}))
    assert host_hash(config.load({})) == host_hash(config.load({}))


def test_local_system_loads_topo_file_and_dumps(tmp_path):
    path = os.path.join(DATA, "ndv4-topo.xml")
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent")
    dump = str(tmp_path / "dump.xml")
    cfg = config.load({"PYXCCL_TOPO_FILE": path, "PYXCCL_TOPO_DUMP_FILE": dump, "PYXCCL_HOSTID": "test-host"})
    system = local_system(cfg)
    assert len(system.cpus) == 4 and system.nets  # the file's 4 NUMA nodes + this machine's socket NIC
    again = load_system(txml.load(dump))
    assert len(again.cpus) == 4 and txml.find_pci(txml.load(dump), "ffff:ff:04.0") is not None
    summary = summarize(system)
    assert summary["host"] == host_hash(cfg) and len(summary["numa"]) == 4
    assert json.loads(json.dumps(summary)) == summary
    assert {"name", "dev", "speed_mbps", "address", "busid", "numa"} <= set(summary["nics"][0])


def test_host_layout_and_ring_order():
    ids = ["hostA", "hostB", "hostA", "hostB", "hostC"]
    layout = host_layout(ids)
    assert layout.hosts == [[0, 2], [1, 3], [4]] and layout.nhosts == 3
    assert layout.host_of == [0, 1, 0, 1, 2] and layout.local_rank == [0, 0, 1, 1, 0]
    assert layout.local_size(3) == 2
    assert order_ranks(ids) == [0, 2, 1, 3, 4]
    assert order_ranks(["x"] * 4) == [0, 1, 2, 3]


def test_nvml_gpus_with_a_fake_nvml(monkeypatch):
    # What NVML reported on a 2 x H200 VM (pyxccl-topo run there): sm 90, 18 active NVLinks each to a
    # remote the VM cannot see (an NVSwitch). A fake pynvml replays it, so CI covers the NVML path.
    import types

    from pyxccl.topo.detect import nvml_gpus

    class Pci:
        def __init__(self, bus: str) -> None:
            self.busId = bus.encode()

    fake = types.SimpleNamespace(
        NVML_NVLINK_MAX_LINKS=18, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetPciInfo=lambda h: Pci(f"00000000:00:0{6 + h}.0"),
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0),
        nvmlDeviceGetNvLinkState=lambda h, link: 1,
        nvmlDeviceGetNvLinkRemotePciInfo=lambda h, link: Pci("FFFFFFFF:FF:FF.0"))
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    notes: list[str] = []
    gpus = nvml_gpus(notes)
    assert [(g.dev, g.busid, g.sm, g.nvlinks) for g in gpus] == [
        (0, "0000:00:06.0", 90, {"ffffffff:ff:ff.0": 18}), (1, "0000:00:07.0", 90, {"ffffffff:ff:ff.0": 18})]
    det = detect(config.load({}), sysfs="/nonexistent", procfs="/nonexistent", gpus=gpus,
                 interfaces=[Interface("eth0", "10.0.0.1", True, False)])
    system = load_system(det.root)
    g0, g1 = system.gpus
    assert system.path(g0, g1).type == PathType.NVL and system.path(g0, g1).bw == pytest.approx(18 * 20.6)
