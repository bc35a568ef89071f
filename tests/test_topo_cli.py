"""pyxccl-topo: prints the system, the path matrix and the channels; --xml / --graph-xml dump in
NCCL's formats; --png draws every node (checked on the figure) into a valid PNG."""

from __future__ import annotations

import os
import struct

import pytest

from pyxccl.cli import topo as cli
from pyxccl.topo import graph as tgraph, load_system, synth, xml as txml

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nccl-topo")


def data(name: str) -> str:
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent (the shared NCCL topology files live outside the repository)")
    return path


def png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(33)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert (length, kind) == (13, b"IHDR")
    return struct.unpack(">II", head[16:24])


def test_cli_on_this_machine(capsys):
    assert cli.main(["-q"]) == 0
    out = capsys.readouterr().out
    assert "== System" in out and "== Paths" in out and "== Channels" in out


def test_cli_loads_a_file_and_dumps_both_xml_formats(tmp_path, capsys, monkeypatch):
    # An NCv4-like file: 4 GPUs, so there are channels to print and dump.
    topo_out, graph_out = str(tmp_path / "topo.xml"), str(tmp_path / "graph.xml")
    rc = cli.main(["--topo-file", data("ncv4-topo.xml"), "--no-detect", "--bw", "--xml", topo_out,
                   "--graph-xml", graph_out])
    assert rc == 0
    out = capsys.readouterr().out
    assert "GPU3" in out and "SYS" in out and "Path bandwidth" in out
    assert "graph 0: Pattern 4 (RING)" in out
    assert open(topo_out).read() == open(data("ncv4-topo.xml")).read()  # unchanged without detection
    system = load_system(txml.load(topo_out))
    graphs = tgraph.load(graph_out, system)
    assert [g.id for g in graphs] == [0, 1] and graphs[0].channels[0].gpus == [0, 1, 2, 3]


def test_cli_bad_file_fails_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.xml"
    bad.write_text("<system version='7'/>")
    assert cli.main(["--topo-file", str(bad), "--no-detect"]) == 2
    assert "version" in capsys.readouterr().err


def test_png_shows_every_node(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the 'plot' extra) is not installed")
    from pyxccl.topo import draw

    system = load_system(synth.populate(txml.load(data("ndv4-topo.xml")), 80, 12, 200000))
    fig, labels = draw.figure(system)
    assert sorted(labels) == sorted(system.label(n) for n in system.nodes) and len(labels) == 33
    assert set(labels) <= draw.drawn_labels(fig)  # every node's label is a text artist on the axes
    path = str(tmp_path / "ndv4.png")
    draw.save_png(system, path)
    w, h = png_size(path)
    assert w > 600 and h > 300
    # and through the command line, on what this machine detects
    out = str(tmp_path / "here.png")
    assert cli.main(["-q", "--png", out]) == 0
    assert "Drawn" in capsys.readouterr().out
    assert min(png_size(out)) > 100
