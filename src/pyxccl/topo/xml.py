"""NCCL's topology XML: parse, write, and merge a loaded file with what detection found.

The tree is an :class:`xml.etree.ElementTree.Element` rooted at ``<system version="1">``
(NCCL ``xml.h`` / ``xml.cc``; see ``shared/notes/nccl-topo.md`` §2–3). Writing follows
NCCL's own writer: two-space indentation, attributes in insertion order, ``<tag/>`` for
empty nodes, so a dump loads in NCCL (``NCCL_TOPO_FILE``) and in pyxccl.

Merging (:func:`merge`) follows ``ncclTopoGetSystem``: values present in the file win
over detected ones (NCCL's ``xmlInitAttr`` only sets absent attributes); a detected GPU
or NIC whose PCI bus id is in the file is attached *there* (this is how the Azure
skeleton files are meant to be used); one that is not is grafted under the file's CPU
with the same NUMA id, with its detected PCI switches. A GPU that already has
``<nvlink>`` children in the file keeps them only. pyxccl does **not** trim the
file's other branches (NCCL removes every branch without a ``keep="1"`` node, i.e.
without a GPU of the communicator): pyxccl ranks need not be GPUs, and a file is
then a description of the machine. :func:`trim` does NCCL's trimming on request.
"""

from __future__ import annotations

import copy
import os
import xml.etree.ElementTree as ET
from typing import Iterable

from ..errors import ConfigError
from .system import normalize_busid

Element = ET.Element
XML_VERSION = "1"
MAX_ATTRS = 16  # NCCL MAX_ATTR_COUNT

# Key attribute that identifies a child among its siblings when merging.
_KEYS = {"cpu": "numaid", "pci": "busid", "net": "name", "nvlink": "target"}


def new_system() -> Element:
    """An empty ``<system version="1">``."""
    return ET.Element("system", {"version": XML_VERSION})


def parse(text: str, root_tag: str = "system", what: str = "topology XML") -> Element:
    """Parse NCCL XML text; the root must be ``<root_tag version="1">`` (ConfigError otherwise)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ConfigError(f"{what}: not well-formed XML: {exc}") from None
    if root.tag != root_tag:
        raise ConfigError(f"{what}: root element is <{root.tag}>, expected <{root_tag}>")
    if root.get("version") != XML_VERSION:
        raise ConfigError(f"{what}: <{root_tag} version={root.get('version')!r}> is not supported "
                          f"(NCCL and pyxccl read version 1)")
    for elem in root.iter():
        if len(elem.attrib) > MAX_ATTRS:
            raise ConfigError(f"{what}: <{elem.tag}> has {len(elem.attrib)} attributes, NCCL allows {MAX_ATTRS}")
        if elem.tag == "pci" and elem.get("busid"):
            elem.set("busid", normalize_busid(elem.get("busid", "")))
    return root


def load(path: str, root_tag: str = "system") -> Element:
    """Read and parse a topology (or, with ``root_tag="graphs"``, graph) XML file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read topology file {path!r}: {exc.strerror}") from None
    return parse(text, root_tag, what=path)


def dumps(root: Element) -> str:
    """The tree as text in NCCL's layout (ends with a newline)."""
    lines: list[str] = []
    _dump(root, 0, lines)
    return "\n".join(lines) + "\n"


def _dump(elem: Element, depth: int, lines: list[str]) -> None:
    attrs = "".join(f' {k}="{_escape(str(v))}"' for k, v in elem.attrib.items())
    pad = "  " * depth
    if len(elem) == 0:
        lines.append(f"{pad}<{elem.tag}{attrs}/>")
        return
    lines.append(f"{pad}<{elem.tag}{attrs}>")
    for child in elem:
        _dump(child, depth + 1, lines)
    lines.append(f"{pad}</{elem.tag}>")


def _escape(v: str) -> str:
    return v.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def write(root: Element, path: str) -> None:
    """Write the tree to ``path`` (atomically: a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps(root))
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path!r}: {exc.strerror}") from None


# ---------------------------------------------------------------- lookups and edits

def set_default(elem: Element, key: str, value: object) -> None:
    """Set an attribute only when it is absent (NCCL's ``xmlInitAttr``)."""
    if key not in elem.attrib:
        elem.set(key, str(value))


def find(root: Element, tag: str, key: str | None = None, value: str | None = None) -> Element | None:
    """First element ``<tag>`` anywhere below ``root`` whose ``key`` attribute equals ``value``."""
    for elem in root.iter(tag):
        if key is None or elem.get(key) == value:
            return elem
    return None


def find_pci(root: Element, busid: str) -> Element | None:
    """The ``<pci>`` with this bus id (any spelling of it), anywhere in the tree."""
    return find(root, "pci", "busid", normalize_busid(busid))


def parents(root: Element) -> dict[Element, Element]:
    """Child → parent map of the tree."""
    return {child: parent for parent in root.iter() for child in parent}


def get_cpu(root: Element, numaid: int | str, **attrs: object) -> Element:
    """The ``<cpu numaid=…>``, created (with ``attrs``) when absent; absent attrs are filled in."""
    cpu = find(root, "cpu", "numaid", str(numaid))
    if cpu is None:
        cpu = ET.SubElement(root, "cpu", {"numaid": str(numaid)})
    for k, v in attrs.items():
        if v is not None:
            set_default(cpu, k, v)
    return cpu


def add_pci(parent: Element, busid: str, cls: str, link_speed: str = "", link_width: int | str = 0,
            **attrs: object) -> Element:
    """Append ``<pci busid class … link_speed link_width>`` under ``parent`` and return it."""
    elem = ET.SubElement(parent, "pci", {"busid": normalize_busid(busid), "class": cls})
    for k, v in attrs.items():
        if v is not None:
            elem.set(k, str(v))
    elem.set("link_speed", str(link_speed))
    elem.set("link_width", str(link_width))
    return elem


def add_gpu(pci: Element, dev: int, sm: int, rank: int | None = None, gdr: int = 0,
            nvlinks: Iterable[tuple[str, int, str]] = ()) -> Element:
    """Give a ``<pci>`` its ``<gpu>`` (or fill the absent attributes of the one it has).

    ``nvlinks``: (target bus id, link count, target PCI class); added only when the GPU has
    no ``<nvlink>`` yet (NCCL: links from the file win).
    """
    gpu = pci.find("gpu")
    if gpu is None:
        gpu = ET.SubElement(pci, "gpu")
    set_default(gpu, "dev", dev)
    set_default(gpu, "sm", sm)
    set_default(gpu, "rank", dev if rank is None else rank)
    set_default(gpu, "gdr", gdr)
    if gpu.find("nvlink") is None:
        for target, count, tclass in nvlinks:
            ET.SubElement(gpu, "nvlink", {"target": normalize_busid(target), "count": str(count), "tclass": tclass})
    return gpu


def add_net(parent: Element, name: str, dev: int, speed: int, port: int = 0, latency: float = 0.0,
            guid: int = 0, maxconn: int = 65536, gdr: int = 0) -> Element:
    """Give ``parent`` (a NIC's ``<pci>`` or, for a virtual NIC, a ``<cpu>``) a ``<nic><net …/>``.

    An existing ``<net name=…>`` keeps its attributes; absent ones are filled in.
    """
    nic = parent.find("nic")
    if nic is None:
        nic = ET.SubElement(parent, "nic")
    net = None
    for cand in nic.findall("net"):
        if cand.get("name") == name:
            net = cand
    if net is None:
        net = ET.SubElement(nic, "net", {"name": name})
    for k, v in (("dev", dev), ("speed", speed), ("port", port), ("latency", f"{latency:f}"),
                 ("guid", hex(guid)), ("maxconn", maxconn), ("gdr", gdr)):
        set_default(net, k, v)
    return net


def trim(root: Element) -> None:
    """NCCL's ``ncclTopoTrimXml``: remove every branch that holds no ``keep="1"`` element."""
    def keep(elem: Element) -> bool:
        kept = elem.get("keep") == "1"
        for child in list(elem):
            if keep(child):
                kept = True
            else:
                elem.remove(child)
        return kept

    for child in list(root):
        if not keep(child):
            root.remove(child)


# ---------------------------------------------------------------- merge

def merge(file_root: Element, detected: Element) -> list[str]:
    """Attach what detection found to a loaded file, NCCL style; returns notes on what was done.

    ``file_root`` is modified in place. See the module docstring for the rules.
    """
    notes: list[str] = []
    dparents = parents(detected)
    for dcpu in detected.findall("cpu"):
        fcpu = find(file_root, "cpu", "numaid", dcpu.get("numaid"))
        if fcpu is not None:
            _merge_attrs(fcpu, dcpu)
    for leaf in [e for e in detected.iter("pci") if e.find("gpu") is not None or e.find("nic") is not None]:
        what = "GPU" if leaf.find("gpu") is not None else "NIC"
        found = find_pci(file_root, leaf.get("busid", ""))
        if found is not None:
            _merge_into(found, leaf)
            notes.append(f"{what} {leaf.get('busid')}: attached to the file's PCI node")
            continue
        chain = [leaf]
        while chain[-1] in dparents and chain[-1].tag != "cpu":
            chain.append(dparents[chain[-1]])
        _graft(file_root, list(reversed(chain)))
        notes.append(f"{what} {leaf.get('busid')}: not in the file, added with its detected PCI path")
    for dcpu in detected.findall("cpu"):
        dnic = dcpu.find("nic")
        if dnic is None:
            continue
        for dnet in dnic.findall("net"):
            fnet = find(file_root, "net", "name", dnet.get("name"))
            if fnet is not None:
                _merge_attrs(fnet, dnet)
                notes.append(f"NET {dnet.get('name')}: the file's attributes win")
                continue
            fcpu = find(file_root, "cpu", "numaid", dcpu.get("numaid")) or file_root.find("cpu")
            if fcpu is None:
                fcpu = ET.SubElement(file_root, "cpu", dict(dcpu.attrib))
            fnic = fcpu.find("nic")
            if fnic is None:
                fnic = ET.SubElement(fcpu, "nic")
            fnic.append(copy.deepcopy(dnet))
            notes.append(f"NET {dnet.get('name')}: virtual NIC added under CPU {fcpu.get('numaid')}")
    return notes


def _merge_attrs(dst: Element, src: Element) -> None:
    for k, v in src.attrib.items():
        set_default(dst, k, v)


def _merge_into(dst: Element, src: Element) -> None:
    _merge_attrs(dst, src)
    for child in src:
        if child.tag == "nvlink" and dst.find("nvlink") is not None:
            continue  # the file's NVLinks win over detected ones
        key = _KEYS.get(child.tag)
        match = None
        for cand in dst.findall(child.tag):
            if key is None or cand.get(key) == child.get(key):
                match = cand
                break
        if match is None:
            dst.append(copy.deepcopy(child))
        else:
            _merge_into(match, child)


def _graft(file_root: Element, chain: list[Element]) -> None:
    cur = file_root
    for elem in chain:
        if elem.tag == "cpu":
            nxt = find(file_root, "cpu", "numaid", elem.get("numaid"))
            if nxt is None:
                nxt = ET.SubElement(file_root, "cpu", dict(elem.attrib))
        else:
            nxt = find_pci(file_root, elem.get("busid", ""))
            if nxt is None:
                nxt = ET.SubElement(cur, "pci", dict(elem.attrib))
        cur = nxt
    _merge_into(cur, chain[-1])
