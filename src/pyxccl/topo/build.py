"""From the topology XML to the :class:`~pyxccl.topo.system.System` graph (NCCL ``ncclTopoGetSystemFromXml``).

Order as in NCCL: CPUs with their PCI trees (GPUs, NICs and their NETs, PCI switches),
then NVLinks, then C2C links, then links between the CPUs of one host. Each
``<cpu host_hash=…>`` value is one host (pyxccl's multi-host systems); a CPU without it
belongs to ``local_host``.

Differences from NCCL, on purpose:

* a ``<gpu>`` without ``rank`` is kept with ``rank = dev`` (NCCL drops GPUs that are
  not in its communicator; pyxccl describes the whole machine);
* an ``<nvlink>`` whose target is the GPU itself (Azure NCv4 has one per GPU) is
  ignored with a note: it cannot carry traffic to another device;
* Broadcom PLX switch flattening is not done.
"""

from __future__ import annotations

from .system import (CLASS_CPU, LOC_BW, LinkType, Node, NodeType, System, busid_to_int,
                     inter_cpu_bw, nvlink_bw, pci_bw, pci_class_type)
from .xml import Element


def _int(text: str | None, default: int = 0, base: int = 0) -> int:
    try:
        return int(str(text).strip(), base) if text not in (None, "") else default
    except ValueError:
        return default


def _float(text: str | None, default: float = 0.0) -> float:
    try:
        return float(text) if text not in (None, "") else default
    except ValueError:
        return default


def system_from_xml(root: Element, local_host: str = "local") -> System:
    """Build the graph from a ``<system>`` tree. Malformed parts are skipped with a note in ``warnings``."""
    system = System()
    gpu_elems: list[tuple[Element, Node]] = []
    for cpu_elem in root.findall("cpu"):
        host = system.host_index(cpu_elem.get("host_hash") or local_host)
        numaid = _int(cpu_elem.get("numaid"), -1)
        cpu = system.find(NodeType.CPU, numaid, host)
        if cpu is None:
            cpu = system.add(NodeType.CPU, numaid, host, numaid=numaid,
                             arch=cpu_elem.get("arch", ""), vendor=cpu_elem.get("vendor", ""),
                             familyid=_int(cpu_elem.get("familyid")), modelid=_int(cpu_elem.get("modelid")),
                             affinity=cpu_elem.get("affinity", ""))
        for child in cpu_elem:
            if child.tag == "pci":
                _add_pci(system, child, cpu, host, gpu_elems)
            elif child.tag == "nic":
                nic = system.find(NodeType.NIC, 0, host)
                if nic is None:
                    nic = system.add(NodeType.NIC, 0, host)
                    system.connect_both(cpu, nic, LinkType.PCI, LOC_BW)
                _add_nets(system, child, nic, host)
    for gpu_elem, gpu in gpu_elems:
        _add_nvlinks(system, gpu_elem, gpu)
    for h in range(len(system.hosts)):
        cpus = system.of_type(NodeType.CPU, h)
        for a in cpus:
            bw = inter_cpu_bw(a.attrs["arch"], a.attrs["vendor"], a.attrs["familyid"], a.attrs["modelid"])
            for b in cpus:
                if a is not b:
                    system.connect(a, b, LinkType.SYS, bw)
    return system


def _add_pci(system: System, elem: Element, parent: Node, host: int,
             gpu_elems: list[tuple[Element, Node]]) -> None:
    busid = elem.get("busid", "")
    bid = busid_to_int(busid)
    ntype = pci_class_type(elem.get("class", ""))
    node: Node | None = None
    gpu_elem = elem.find("gpu")
    nic_elem = elem.find("nic")
    if gpu_elem is not None:
        dev = _int(gpu_elem.get("dev"), -1)
        rank = _int(gpu_elem.get("rank"), dev)
        if system.find(NodeType.GPU, bid, host) is not None:
            system.warnings.append(f"GPU {busid} appears twice; the second is ignored")
            return
        node = system.add(NodeType.GPU, bid, host, busid=busid, dev=dev, rank=rank,
                          sm=_int(gpu_elem.get("sm")), gdr=_int(gpu_elem.get("gdr")))
        gpu_elems.append((gpu_elem, node))
    elif nic_elem is not None:
        nid = bid & ~0xF  # ports of one multi-function card make one NIC
        nic = system.find(NodeType.NIC, nid, host)
        if nic is None:
            node = nic = system.add(NodeType.NIC, nid, host, busid=busid)
        _add_nets(system, nic_elem, nic, host)
    elif ntype == NodeType.PCI:
        node = system.add(NodeType.PCI, bid, host, busid=busid, pciclass=elem.get("class", ""),
                          vendor=elem.get("vendor", ""), device=elem.get("device", ""))
        for child in elem:
            if child.tag == "pci":
                _add_pci(system, child, node, host, gpu_elems)
    # A GPU- or NIC-class <pci> without <gpu>/<nic> (a skeleton slot) makes no node, as in NCCL.
    if node is not None:
        bw = pci_bw(elem.get("link_speed", ""), _int(elem.get("link_width")))
        system.connect_both(node, parent, LinkType.PCI, bw)


def _add_nets(system: System, nic_elem: Element, nic: Node, host: int) -> None:
    for net_elem in nic_elem.findall("net"):
        if net_elem.get("dev") in (None, ""):
            system.warnings.append(f"<net name={net_elem.get('name')!r}> has no dev attribute; skipped (as NCCL)")
            continue
        dev = _int(net_elem.get("dev"))
        if system.find(NodeType.NET, dev, host) is not None:
            system.warnings.append(f"NET dev {dev} appears twice; the second is ignored")
            continue
        speed = _int(net_elem.get("speed"))
        if speed <= 0:
            speed = 10000
        net = system.add(NodeType.NET, dev, host, name=net_elem.get("name", ""), dev=dev, speed=speed,
                         bw=speed / 8000.0, port=_int(net_elem.get("port")),
                         guid=_int(net_elem.get("guid"), dev, 16) if net_elem.get("guid") else dev,
                         latency=_float(net_elem.get("latency")), maxconn=_int(net_elem.get("maxconn"), 65536),
                         gdr=_int(net_elem.get("gdr")), coll=_int(net_elem.get("coll")))
        system.connect_both(nic, net, LinkType.NET, speed / 8000.0)


def _local_cpu(gpu: Node) -> Node | None:
    """The CPU above a GPU in its PCI tree (NCCL findLocalCpu)."""
    seen = {id(gpu)}
    frontier = [gpu]
    while frontier:
        nxt = []
        for n in frontier:
            for link in n.links:
                if link.type != LinkType.PCI or id(link.remote) in seen:
                    continue
                if link.remote.type == NodeType.CPU:
                    return link.remote
                seen.add(id(link.remote))
                nxt.append(link.remote)
        frontier = nxt
    return None


def _add_nvlinks(system: System, gpu_elem: Element, gpu: Node) -> None:
    per_link = nvlink_bw(gpu.attrs["sm"])
    for nvl in gpu_elem.findall("nvlink"):
        count = _int(nvl.get("count"), 1)
        tclass = (nvl.get("tclass") or "").lower()
        target = nvl.get("target", "")
        bw = count * per_link
        if tclass.startswith("0x03"):
            remote = system.find(NodeType.GPU, busid_to_int(target), gpu.host)
            if remote is gpu:
                system.warnings.append(f"GPU {gpu.attrs['busid']}: NVLink to itself ignored")
                continue
            if remote is None:
                system.warnings.append(f"GPU {gpu.attrs['busid']}: NVLink target {target} is not in the system; ignored")
                continue
            system.connect(gpu, remote, LinkType.NVL, bw)  # the remote GPU adds the other direction
        elif tclass.startswith(CLASS_CPU):
            cpu = _local_cpu(gpu)
            if cpu is not None:
                system.connect_both(gpu, cpu, LinkType.NVL, bw)
        else:  # NVSwitch (0x068000), or a target NCCL cannot see (VMs): one NVS node per host
            nvs = system.find(NodeType.NVS, 0, gpu.host) or system.add(NodeType.NVS, 0, gpu.host)
            system.connect_both(gpu, nvs, LinkType.NVL, bw)
    for c2c in gpu_elem.findall("c2c"):
        cpu = _local_cpu(gpu)
        if cpu is not None:
            system.connect_both(gpu, cpu, LinkType.NVL, _int(c2c.get("bw")) * _int(c2c.get("count"), 1) / 1000.0)
