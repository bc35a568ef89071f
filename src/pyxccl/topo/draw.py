"""Draw a :class:`~pyxccl.topo.system.System` as a PNG (matplotlib, the ``plot`` extra).

Layout: one block per host; in a host, CPUs on top, the PCI tree below them (switches,
then GPUs and NICs), each NET under its NIC, the NVSwitch under the GPUs. Nodes are
coloured and shaped by type; links are coloured by type (NVLink, PCIe, inter-CPU, network),
drawn thicker the more bandwidth they have and labelled with it in GB/s.
"""

from __future__ import annotations

import math
from typing import Any

from .system import LinkType, Node, NodeType, System

NODE_STYLE = {  # node type -> (colour, marker)
    NodeType.CPU: ("#4c72b0", "s"), NodeType.PCI: ("#8c8c8c", "D"), NodeType.GPU: ("#55a868", "o"),
    NodeType.NIC: ("#dd8452", "^"), NodeType.NET: ("#c44e52", "v"), NodeType.NVS: ("#8172b3", "h"),
}
LINK_STYLE = {  # link type -> (colour, line style)
    LinkType.NVL: ("#55a868", "-"), LinkType.PCI: ("#4c72b0", "-"), LinkType.SYS: ("#c44e52", "--"),
    LinkType.NET: ("#dd8452", ":"), LinkType.LOC: ("#8c8c8c", "-"),
}


def layout(system: System) -> dict[int, tuple[float, float]]:
    """Node index → (x, y): hosts side by side, PCI trees under their CPUs."""
    pos: dict[int, tuple[float, float]] = {}
    x0 = 0.0
    for h in range(max(1, len(system.hosts))):
        placed: set[int] = set()
        next_x = [x0]

        def place(n: Node, depth: int) -> float:
            placed.add(n.index)
            kids = [lk.remote for lk in n.links
                    if lk.remote.index not in placed and lk.remote.type not in (NodeType.CPU, NodeType.NVS)
                    and lk.type in (LinkType.PCI, LinkType.NET)]
            for k in kids:
                placed.add(k.index)
            xs = [place(k, depth + 1) for k in kids]
            x = sum(xs) / len(xs) if xs else next_x[0]
            if not xs:
                next_x[0] += 1.0
            pos[n.index] = (x, -float(depth))
            return x

        nodes = [n for n in system.nodes if n.host == h]
        for cpu in (n for n in nodes if n.type == NodeType.CPU):
            place(cpu, 0)
        for n in nodes:  # anything not under a CPU (e.g. a partial file)
            if n.index not in placed and n.type != NodeType.NVS:
                place(n, 1)
        depth = max((-y for i, (_, y) in pos.items() if system.nodes[i].host == h), default=0.0)
        for nvs in (n for n in nodes if n.type == NodeType.NVS):
            gx = [pos[lk.remote.index][0] for lk in nvs.links if lk.remote.index in pos]
            pos[nvs.index] = (sum(gx) / len(gx) if gx else next_x[0], -(depth + 1.0))
            if not gx:
                next_x[0] += 1.0
        x0 = next_x[0] + 1.0
    return pos


def figure(system: System, title: str | None = None) -> tuple[Any, list[str]]:
    """A matplotlib Figure of the system and the node labels drawn on it (no pyplot state)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    pos = layout(system)
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    width = min(40.0, max(6.0, 1.3 * (max(xs) - min(xs) + 2)))
    height = min(20.0, max(4.0, 1.6 * (max(ys) - min(ys) + 2)))
    fig = Figure(figsize=(width, height), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    seen: set[tuple[int, int, LinkType]] = set()
    max_bw = max((lk.bw for _, lk in system.links() if lk.bw < 1000), default=1.0)
    for n, lk in system.links():
        key = (min(n.index, lk.remote.index), max(n.index, lk.remote.index), lk.type)
        if key in seen or n.index not in pos or lk.remote.index not in pos:
            continue
        seen.add(key)
        (x1, y1), (x2, y2) = pos[n.index], pos[lk.remote.index]
        colour, style = LINK_STYLE.get(lk.type, ("black", "-"))
        if lk.type == LinkType.SYS:  # bow the inter-CPU links so that they do not overlap
            ax.annotate("", (x2, y2), (x1, y1), arrowprops=dict(arrowstyle="-", color=colour, linestyle=style,
                                                                connectionstyle="arc3,rad=0.25", lw=1.5))
        else:
            lw = 0.8 + 3.0 * math.log1p(min(lk.bw, max_bw)) / math.log1p(max_bw)
            ax.plot([x1, x2], [y1, y2], color=colour, linestyle=style, linewidth=lw, zorder=1)
        tx, ty = (x1 + x2) / 2, (y1 + y2) / 2
        if lk.type == LinkType.SYS:  # the middle of the arc3 curve
            tx, ty = tx + 0.125 * (y2 - y1), ty - 0.125 * (x2 - x1)
        ax.text(tx, ty, f"{lk.bw:g}",
                fontsize=6, color=colour, ha="center", va="center", zorder=3,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
    labels = []
    for n in system.nodes:
        x, y = pos[n.index]
        colour, marker = NODE_STYLE[n.type]
        ax.scatter([x], [y], s=260, c=colour, marker=marker, zorder=4, edgecolors="black", linewidths=0.6)
        label = system.label(n)
        ax.text(x, y - 0.22, label.replace(" ", "\n", 1), fontsize=7, ha="center", va="top", zorder=5)
        labels.append(label)
    handles = [Line2D([], [], marker=m, color=c, linestyle="", markersize=8, label=t.name)
               for t, (c, m) in NODE_STYLE.items()]
    handles += [Line2D([], [], color=c, linestyle=s, label=f"{t.name} link (GB/s)")  # type: ignore[arg-type]
                for t, (c, s) in LINK_STYLE.items() if t != LinkType.LOC]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, framealpha=0.8)
    ngpu, nnet = len(system.gpus), len(system.nets)
    ax.set_title(title or f"pyxccl topology: {max(1, len(system.hosts))} host(s), {ngpu} GPU(s), {nnet} NET(s)")
    ax.margins(0.08)
    return fig, labels


def drawn_labels(fig: Any) -> set[str]:
    """Every text drawn on the figure's axes (node labels come back with their line break undone)."""
    out = set()
    for ax in fig.axes:
        for t in ax.texts:
            out.add(t.get_text().replace("\n", " "))
    return out


def save_png(system: System, path: str, title: str | None = None) -> list[str]:
    """Draw the system into a PNG file; returns the node labels drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig, labels = figure(system, title)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", bbox_inches="tight")
    return labels
