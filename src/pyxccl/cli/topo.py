"""``pyxccl-topo``: print this machine's topology (or a loaded NCCL topology XML), its path
matrix like ``nvidia-smi topo -m``, and the ring/tree channels the search finds.

    pyxccl-topo                          detect (and merge PYXCCL_TOPO_FILE if set)
    pyxccl-topo --topo-file ndv4.xml     load a file, merged with what this machine has
    pyxccl-topo --topo-file f --no-detect   the file alone
    pyxccl-topo --xml out.xml            also write the topology as NCCL XML ("-": stdout)
    pyxccl-topo --graph-xml g.xml        also write the channels as NCCL graph XML
    pyxccl-topo --png topo.png           also draw the graph (needs matplotlib: pip install pyxccl[plot])
    pyxccl-topo --inter-host             search channels as for a multi-host communicator (through NICs)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .. import config
from ..errors import PyxcclError
from .. import topo
from ..topo import graph as tgraph
from ..topo import xml as txml
from .errors import check_config, one_line_errors


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyxccl-topo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topo-file", help="NCCL topology XML to load (default: PYXCCL_TOPO_FILE)")
    ap.add_argument("--no-detect", action="store_true", help="with --topo-file: do not merge detection into it")
    ap.add_argument("--xml", metavar="PATH", help="write the topology as NCCL XML ('-' for stdout)")
    ap.add_argument("--graph-xml", metavar="PATH", help="write the channels as NCCL graph XML ('-' for stdout)")
    ap.add_argument("--png", metavar="PATH", help="draw the topology into a PNG file")
    ap.add_argument("--inter-host", action="store_true", help="search channels through the NICs (multi-host)")
    ap.add_argument("--bw", action="store_true", help="also print the path bandwidth matrix (GB/s)")
    ap.add_argument("--effort", type=float, default=0.1, help="search budget, 1.0 = NCCL's (default 0.1)")
    ap.add_argument("--quiet", "-q", action="store_true", help="skip the node list")
    return ap


def _system(args: argparse.Namespace) -> topo.System:
    cfg = config.get()
    if args.topo_file:
        cfg = dataclasses.replace(cfg, topo_file=args.topo_file)
    if cfg.topo_file and args.no_detect:
        return topo.load_system(txml.load(cfg.topo_file), topo.host_hash(cfg))
    return topo.local_system(cfg, dump=True)


def _write(text: str, path: str) -> None:
    if path == "-":
        sys.stdout.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


@one_line_errors("pyxccl-topo")
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pyxccl-topo``; returns the exit status (a bad ``PYXCCL_*`` value: one line, 2)."""
    args = _parser().parse_args(argv)
    check_config("pyxccl-topo")
    try:
        system = _system(args)
    except PyxcclError as exc:
        print(f"pyxccl-topo: error: {exc}", file=sys.stderr)
        return 2
    out = sys.stderr if "-" in (args.xml, args.graph_xml) else sys.stdout
    hosts = max(1, len(system.hosts))
    print(f"== System: {hosts} host(s), {len(system.cpus)} CPU(s), {len(system.gpus)} GPU(s), "
          f"{len(system.nets)} NET(s)", file=out)
    for note in system.meta.get("notes", []) + system.warnings:
        print(f"   note: {note}", file=out)
    if not args.quiet:
        print(system.describe(), file=out)
    print("\n== Paths", file=out)
    print(topo.path_matrix(system), file=out)
    if args.bw:
        print("\n== Path bandwidth (GB/s)", file=out)
        print(topo.path_matrix(system, with_bw=True).split("\n\nLegend")[0], file=out)
    print("\n== Channels", file=out)
    graphs: list[topo.Graph] = []
    for h in range(hosts):
        if not system.of_type(topo.NodeType.GPU, h):
            summary = topo.summarize(system, h)
            nics = ", ".join(f"{n['name']} ({n['speed_mbps']} Mb/s{', ' + n['address'] if n['address'] else ''})"
                             for n in summary["nics"]) or "none"
            print(f"host {h}: no GPUs; a communicator orders this host's ranks contiguously in its rings "
                  f"(pyxccl.topo.order_ranks); socket NICs: {nics}", file=out)
            continue
        host_graphs = topo.search(system, inter_host=args.inter_host, host=h, effort=args.effort)
        graphs += host_graphs
        for g in host_graphs:
            print(f"host {h} graph {g.id}: " + g.describe(), file=out)
    if args.xml:
        _write(txml.dumps(system.meta["xml"]), args.xml)
    if args.graph_xml:
        _write(tgraph.dumps(graphs, system), args.graph_xml)
    if args.png:
        try:
            from ..topo import draw
            labels = draw.save_png(system, args.png)
        except ImportError:
            print("pyxccl-topo: --png needs matplotlib (pip install 'pyxccl[plot]')", file=sys.stderr)
            return 2
        print(f"\n== Drawn {len(labels)} nodes into {args.png}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
