"""Detect this machine's topology from /sys, /proc and NVML, as NCCL's topology XML.

What is read (NCCL ``src/graph/xml.cc`` ``ncclTopoGetXmlFromSys``/``…FromCpu``/``…FromGpu``):

* CPU: architecture (``platform.machine``), vendor, family and model (``/proc/cpuinfo``);
  NUMA nodes and their CPU masks (``/sys/devices/system/node/node*/cpumap``).
* PCI: for each GPU and NIC, its sysfs path; going up, every second bridge is kept (the
  switch's upstream port; the downstream port is skipped), up to the root complex,
  which is the CPU of the device's ``numa_node``; ``class``, ids, and link speed and width
  (``max_link_*``, the lower of the device's and its port's).
* GPUs through NVML (``pynvml`` from nvidia-ml-py) when importable: bus id, compute
  capability, active NVLinks by remote bus id (an NVSwitch, or a remote device this VM
  cannot see, becomes ``tclass 0x068000``). Without NVML, NVIDIA display devices found in
  /sys are listed with ``sm=0`` and no NVLinks.
* NICs: the socket interfaces pyxccl would use (``PYXCCL_SOCKET_IFNAME``, NCCL syntax),
  with speed (``/sys/class/net/IF/speed``, 10 Gb/s when unknown) and PCI path; a NIC with
  no PCI device (virtual, virtio, veth) hangs directly under the first CPU, as in NCCL.

Whatever is missing (containers hide /sys/devices/system/node, VMs report ``numa_node``
-1, no NVML) is assumed and said (:attr:`Detection.notes`, logged as one WARN line);
detection never fails.
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from .. import config
from ..bootstrap.net import Interface, list_interfaces, select_address
from ..errors import ConfigError
from . import xml as txml
from .system import normalize_busid

_BDF = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-9a-fA-F]$")


@dataclass
class GpuInfo:
    """One GPU as NVML describes it; ``nvlinks`` maps a remote bus id to its active link count."""

    dev: int
    busid: str
    sm: int
    nvlinks: dict[str, int] = field(default_factory=dict)


@dataclass
class Detection:
    """Detection's result: the topology XML, the socket interfaces it used, and what it assumed.

    ``notes`` deserve a WARN (a guess that changes the picture); ``info`` are routine
    (e.g. a virtual NIC without a link speed, which NCCL also reports at INFO).
    """

    root: txml.Element
    interfaces: list[Interface]
    notes: list[str]
    info: list[str] = field(default_factory=list)


def host_hash(cfg: config.Config | None = None) -> str:
    """This host's id as NCCL-style hex: hash of PYXCCL_HOSTID, else of hostname, boot id and network namespace.

    Ranks with equal ids share a host (and its shared memory); the communicator compares them to pick
    transports and group ranks into hosts. Two network namespaces are two hosts.
    """
    cfg = cfg or config.get()
    if cfg.hostid:
        text = cfg.hostid
    else:
        boot = _read("/proc/sys/kernel/random/boot_id")
        try:
            netns = str(os.stat("/proc/self/ns/net").st_ino)
        except OSError:
            netns = ""
        text = f"{socket.gethostname()}/{boot}/{netns}"
    return "0x" + hashlib.sha1(text.encode()).hexdigest()[:16]


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return default


def _arch() -> str:
    m = platform.machine().lower()
    return {"aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64", "ppc64": "ppc64",
            "x86_64": "x86_64", "amd64": "x86_64"}.get(m, m)


def cpu_info(procfs: str = "/proc") -> dict[str, Any]:
    """arch, vendor, familyid, modelid of this machine's CPUs (from the first /proc/cpuinfo entry)."""
    info: dict[str, Any] = {"arch": _arch(), "vendor": "", "familyid": 0, "modelid": 0}
    for line in _read(os.path.join(procfs, "cpuinfo")).splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id" and not info["vendor"]:
            info["vendor"] = value
        elif key == "cpu family" and not info["familyid"]:
            info["familyid"] = int(value) if value.isdigit() else 0
        elif key == "model" and not info["modelid"]:
            info["modelid"] = int(value) if value.isdigit() else 0
        elif not line.strip() and info["vendor"]:
            break
    return info


def _cpumask(cpus: set[int]) -> str:
    """CPU ids as a /sys cpumap: comma-separated 32-bit hex words, most significant first."""
    mask = sum(1 << c for c in cpus)
    words = max(1, (max(cpus, default=0) // 32) + 1)
    return ",".join(f"{(mask >> (32 * i)) & 0xFFFFFFFF:08x}" for i in reversed(range(words)))


def numa_nodes(sysfs: str = "/sys") -> dict[int, str]:
    """NUMA node id → cpumap, for nodes that have CPUs (empty when /sys does not say)."""
    out = {}
    for path in glob.glob(os.path.join(sysfs, "devices/system/node/node[0-9]*")):
        cpumap = _read(os.path.join(path, "cpumap"))
        if cpumap and set(cpumap) - set("0,"):
            out[int(os.path.basename(path)[4:])] = cpumap
    return dict(sorted(out.items()))


def nvml_gpus(notes: list[str], sysfs: str = "/sys") -> list[GpuInfo] | None:
    """GPUs through NVML; None when NVML (pynvml) cannot be used."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - any NVML failure means "no NVML"
        notes.append(f"NVML did not initialise ({exc})")
        return None
    gpus = []
    try:
        for dev in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(dev)
            busid = _decode(pynvml.nvmlDeviceGetPciInfo(h).busId)
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            except Exception:  # noqa: BLE001
                major, minor = 0, 0
            info = GpuInfo(dev, normalize_busid(busid), major * 10 + minor)
            for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
                try:
                    if not pynvml.nvmlDeviceGetNvLinkState(h, link):
                        continue
                    remote = normalize_busid(_decode(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId))
                except Exception:  # noqa: BLE001 - link absent or not supported
                    continue
                info.nvlinks[remote] = info.nvlinks.get(remote, 0) + 1
            gpus.append(info)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return gpus


def _decode(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def sysfs_gpus(sysfs: str = "/sys") -> list[GpuInfo]:
    """NVIDIA display-class PCI devices from /sys (no compute capability, no NVLinks)."""
    out: list[GpuInfo] = []
    for path in sorted(glob.glob(os.path.join(sysfs, "bus/pci/devices/*"))):
        if _read(os.path.join(path, "vendor")) == "0x10de" and _read(os.path.join(path, "class")).startswith("0x03"):
            out.append(GpuInfo(len(out), normalize_busid(os.path.basename(path)), 0))
    return out


def socket_interfaces(spec: str, interfaces: list[Interface] | None = None) -> list[Interface]:
    """The interfaces that are up and match an NCCL_SOCKET_IFNAME-style spec, the one sockets bind first.

    Uses :func:`pyxccl.bootstrap.net.select_address`'s rules (``eth0``, ``^docker,lo``, ``=eth0``;
    empty: every non-loopback, non-docker interface, else loopback).
    """
    ifs = [i for i in (list_interfaces() if interfaces is None else interfaces) if i.up]
    if spec.strip():
        chosen = []
        for i in ifs:
            try:
                select_address(spec, [i])
            except ConfigError:
                continue
            chosen.append(i)
    else:
        chosen = [i for i in ifs if not i.loopback and not i.name.startswith("docker")] \
            or [i for i in ifs if i.loopback]
    try:
        first = select_address(spec, ifs) if ifs else None
    except ConfigError:
        first = None
    chosen.sort(key=lambda i: i.address != first)
    return chosen


class _Builder:
    def __init__(self, sysfs: str, procfs: str, cfg: config.Config, notes: list[str]) -> None:
        self.sysfs, self.notes = sysfs, notes
        self.root = txml.new_system()
        self.cpu = cpu_info(procfs)
        self.hash = host_hash(cfg)
        self.numa = numa_nodes(sysfs)
        if not self.numa:
            try:
                cpus = set(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = set(range(os.cpu_count() or 1))
            self.numa = {0: _cpumask(cpus)}
            notes.append("no NUMA information in /sys/devices/system/node (container or VM?): assuming one "
                         "NUMA node 0 with the CPUs this process may use")
        for numaid in self.numa:
            self.get_cpu(numaid)

    def get_cpu(self, numaid: int) -> txml.Element:
        if numaid not in self.numa:
            first = next(iter(self.numa))
            self.notes.append(f"a device reports NUMA node {numaid}, which /sys does not list: using node {first}")
            numaid = first
        return txml.get_cpu(self.root, numaid, affinity=self.numa[numaid], arch=self.cpu["arch"],
                            vendor=self.cpu["vendor"], familyid=self.cpu["familyid"],
                            modelid=self.cpu["modelid"], host_hash=self.hash)

    def pci_path(self, busid: str) -> str | None:
        path = os.path.join(self.sysfs, "bus/pci/devices", busid)
        return os.path.realpath(path) if os.path.exists(path) else None

    def pci(self, busid: str, default_class: str) -> txml.Element:
        """The ``<pci>`` of a device, with its ancestors up to its CPU (created as needed)."""
        busid = normalize_busid(busid)
        found = txml.find_pci(self.root, busid)
        if found is not None:
            return found
        real = self.pci_path(busid)
        if real is None:
            self.notes.append(f"PCI device {busid} is not in /sys: attached to the first CPU with unknown link")
            return txml.add_pci(self.get_cpu(next(iter(self.numa))), busid, default_class)
        bdfs = [p for p in real.split(os.sep) if _BDF.match(p)]
        if not bdfs:
            self.notes.append(f"PCI device {busid}: unexpected sysfs path {real}; attached to the first CPU")
            return txml.add_pci(self.get_cpu(next(iter(self.numa))), busid, default_class)
        bdf_paths = [real[:real.index(b) + len(b)] for b in bdfs]
        k = len(bdfs) - 1
        kept = list(range(k, -1, -2))  # every second bridge: the switch's upstream port, not its downstream port
        numa = _read(os.path.join(bdf_paths[kept[-1]], "numa_node"), "-1")
        numaid = int(numa) if numa.lstrip("-").isdigit() else -1
        if numaid < 0:
            numaid = next(iter(self.numa))
            if len(self.numa) > 1:
                self.notes.append(f"PCI device {busid} has no NUMA node: attached to NUMA node {numaid}")
        parent = self.get_cpu(numaid)
        for idx in reversed(kept):
            bid = normalize_busid(bdfs[idx])
            elem = txml.find_pci(self.root, bid)
            if elem is None:
                elem = self._pci_elem(parent, bid, bdf_paths[idx], default_class if idx == k else "0x060400")
            parent = elem
        return parent

    def _pci_elem(self, parent: txml.Element, busid: str, path: str, default_class: str) -> txml.Element:
        def attr(name: str) -> str:
            return _read(os.path.join(path, name))

        speed_dev, speed_port = attr("max_link_speed"), _read(os.path.join(path, "..", "max_link_speed"))
        speed = speed_dev
        if _gts(speed_port) < _gts(speed_dev):
            speed = speed_port
        widths = [int(w) for w in (attr("max_link_width"), _read(os.path.join(path, "..", "max_link_width")))
                  if w.isdigit()]
        return txml.add_pci(parent, busid, attr("class") or default_class, speed, min(widths) if widths else 0,
                            vendor=attr("vendor") or None, device=attr("device") or None,
                            subsystem_vendor=attr("subsystem_vendor") or None,
                            subsystem_device=attr("subsystem_device") or None)


def _gts(text: str) -> float:
    m = re.match(r"\s*([0-9.]+)", text or "")
    return float(m.group(1)) if m else float("inf")


def detect(cfg: config.Config | None = None, sysfs: str = "/sys", procfs: str = "/proc",
           gpus: list[GpuInfo] | None = None, interfaces: list[Interface] | None = None) -> Detection:
    """This machine as NCCL topology XML. ``gpus``/``interfaces`` replace NVML and the live interfaces (tests)."""
    cfg = cfg or config.get()
    notes: list[str] = []
    b = _Builder(sysfs, procfs, cfg, notes)
    if gpus is None:
        nvml_notes: list[str] = []
        gpus = nvml_gpus(nvml_notes, sysfs)
        if gpus is None:
            gpus = sysfs_gpus(sysfs)
            if gpus:
                why = nvml_notes[0] if nvml_notes else "nvidia-ml-py is not installed"
                notes.append(f"NVML unusable ({why}): {len(gpus)} NVIDIA GPU(s) found in /sys, "
                             "compute capability and NVLinks unknown")
    gdr = int(os.path.exists(os.path.join(sysfs, "kernel/mm/memory_peers/nv_mem/version"))
              or os.path.exists(os.path.join(sysfs, "module/nvidia_peermem")))
    gpu_buses = {g.busid for g in gpus}
    for g in gpus:
        pci = b.pci(g.busid, "0x030000")
        links = []
        for target, count in g.nvlinks.items():
            real = b.pci_path(target)
            tclass = _read(os.path.join(real, "class")) if real else ""
            if not tclass:  # not visible (VM): another GPU if NVML lists it, else an NVSwitch, as NCCL assumes
                tclass = "0x030200" if target in gpu_buses else "0x068000"
            links.append((target, count, tclass))
        txml.add_gpu(pci, g.dev, g.sm, g.dev, gdr, links)
    ifs = socket_interfaces(cfg.socket_ifname, interfaces)
    info: list[str] = []
    for dev, i in enumerate(ifs):
        speed_text = _read(os.path.join(sysfs, "class/net", i.name, "speed"), "-1")
        speed = int(speed_text) if speed_text.lstrip("-").isdigit() else -1
        if speed <= 0:
            speed = 10000
            if not i.loopback:
                info.append(f"{i.name}: link speed unknown, assuming 10 Gb/s")
        parent = b.get_cpu(next(iter(b.numa)))
        dev_link = os.path.join(sysfs, "class/net", i.name, "device")
        if os.path.exists(dev_link):
            real = os.path.realpath(dev_link)
            subsystem = os.path.basename(os.path.realpath(os.path.join(real, "subsystem")))
            if subsystem == "pci":
                parent = b.pci(os.path.basename(real), "0x020000")
        txml.add_net(parent, i.name, dev, speed, guid=dev)
    return Detection(b.root, ifs, notes, info)
