"""Synthetic topologies: the worked examples, and NCCL skeleton files filled the way detection would.

* :func:`nvlink_quad`: 4 GPUs, NVLink 20 GB/s between every pair, 40 between GPU0–GPU3 and
  GPU1–GPU2 (``shared/notes/mission-sources.md`` §2: 4 ring channels).
* :func:`pcie_box`: a PCIe-only machine whose GPU pairs are PIX, PXB, PHB and SYS apart.
* :func:`populate`: give every GPU-class ``<pci>`` of a skeleton (Azure NDv4/NDv5) a ``<gpu>``
  with NVLinks to an NVSwitch, and every NIC-class one a ``<nic><net>``, as NCCL's detection
  does on those machines.
"""

from __future__ import annotations

from . import xml as txml
from .system import CLASS_BRIDGE, CLASS_NVSWITCH

GPU_CLASS = "0x030200"
NIC_CLASS = "0x020700"


def _cpu(root: txml.Element, numaid: int, vendor: str = "GenuineIntel", family: int = 6, model: int = 85,
         host_hash: str | None = None) -> txml.Element:
    attrs = {"affinity": f"{0xff << (8 * numaid):x}", "arch": "x86_64", "vendor": vendor,
             "familyid": family, "modelid": model}
    if host_hash:
        attrs["host_hash"] = host_hash
    return txml.get_cpu(root, numaid, **attrs)


def nvlink_quad(sm: int = 70) -> txml.Element:
    """The worked example: NVLink counts 1 everywhere except GPU0–GPU3 and GPU1–GPU2 (2 links)."""
    root = txml.new_system()
    cpu = _cpu(root, 0)
    bus = [f"0000:{0x10 * (i + 1):02x}:00.0" for i in range(4)]
    double = {(0, 3), (3, 0), (1, 2), (2, 1)}
    for i in range(4):
        pci = txml.add_pci(cpu, bus[i], GPU_CLASS, "8 GT/s", 16)
        links = [(bus[j], 2 if (i, j) in double else 1, GPU_CLASS) for j in range(4) if j != i]
        txml.add_gpu(pci, i, sm, i, 0, links)
    return root


def pcie_box() -> txml.Element:
    """PCIe only, 2 Intel Skylake sockets: GPU0/GPU1 under one switch (PIX); GPU2 under a sibling
    switch of the same upstream switch (PXB from GPU0); GPU3 on CPU0's root port (PHB);
    GPU4 on CPU1 (SYS). One 100 Gb/s NIC next to GPU0 and GPU1."""
    root = txml.new_system()
    cpu0, cpu1 = _cpu(root, 0), _cpu(root, 1)
    up = txml.add_pci(cpu0, "0000:10:00.0", CLASS_BRIDGE, "16 GT/s", 16)
    sw_a = txml.add_pci(up, "0000:11:00.0", CLASS_BRIDGE, "16 GT/s", 16)
    sw_b = txml.add_pci(up, "0000:12:00.0", CLASS_BRIDGE, "16 GT/s", 16)
    for dev, (parent, busid) in enumerate(((sw_a, "0000:13:00.0"), (sw_a, "0000:14:00.0"), (sw_b, "0000:15:00.0"),
                                           (cpu0, "0000:20:00.0"), (cpu1, "0000:80:00.0"))):
        txml.add_gpu(txml.add_pci(parent, busid, GPU_CLASS, "16 GT/s", 16), dev, 80, dev, 1)
    nic = txml.add_pci(sw_a, "0000:16:00.0", NIC_CLASS, "16 GT/s", 16)
    txml.add_net(nic, "mlx5_0", 0, 100000, guid=0x1, gdr=1)
    return root


def populate(root: txml.Element, sm: int, nvlinks: int, nic_speed: int, gdr: int = 1) -> txml.Element:
    """Fill a skeleton in place: GPUs (dev by bus-id order) with ``nvlinks`` links to the NVSwitch,
    NICs ``mlx5_<dev>`` of ``nic_speed`` Mb/s. Returns ``root``."""
    gpus = sorted((p for p in root.iter("pci") if p.get("class", "").startswith("0x03")), key=lambda p: p.get("busid", ""))
    nics = sorted((p for p in root.iter("pci") if p.get("class", "").startswith("0x02")), key=lambda p: p.get("busid", ""))
    for dev, pci in enumerate(gpus):
        txml.add_gpu(pci, dev, sm, dev, gdr, [("ffff:ff:ff.0", nvlinks, CLASS_NVSWITCH)])
    for dev, pci in enumerate(nics):
        txml.add_net(pci, f"mlx5_{dev}", dev, nic_speed, guid=dev + 1, gdr=gdr)
    return root
