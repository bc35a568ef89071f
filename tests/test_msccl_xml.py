"""MSCCL XML import/export: real files load and verify; built-ins round-trip."""

from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET

import pytest

from pyxccl import algorithms
from pyxccl.errors import InvalidArgument
from pyxccl.ir.builder import ProgramBuilder
from pyxccl.ir.msccl_xml import dump, load
from pyxccl.ir.program import Buf, Op
from pyxccl.ir.verify import verify

XML_DIR = "/work/shared/data/msccl-xml"
FILES = sorted(glob.glob(os.path.join(XML_DIR, "*.xml")))
I, O = Buf.INPUT, Buf.OUTPUT


def _modes(p):
    return [m for m, ok in ((True, p.inplace), (False, p.outofplace)) if ok]


@pytest.mark.skipif(not FILES, reason=f"no MSCCL XML examples under {XML_DIR} (shared data absent)")
@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_shared_files_load_and_verify(path: str):
    p = load(path)
    assert _modes(p)
    for mode in _modes(p):
        verify(p, inplace=mode)
    text = dump(p)
    assert load(text) == p
    assert dump(load(text)) == text


def _two_hosts(n):
    return (tuple(range((n + 1) // 2)), tuple(range((n + 1) // 2, n)))


def _builtins():
    for algo in sorted(algorithms.REGISTRY.values(), key=lambda a: (a.collective, a.name)):
        for n in (1, 2, 3, 5, 8):
            if algo.host_aware and not algo.supports(n, _two_hosts(n)):
                continue
            for c in (1, 2):
                for root in sorted({0, n - 1}) if algo.rooted else [0]:
                    yield pytest.param(algo, n, c, root, id=f"{algo.collective}_{algo.name}-{n}r-{c}c-root{root}")


@pytest.mark.parametrize("algo,n,c,root", list(_builtins()))
def test_builtin_round_trip(algo, n, c, root):
    kw = {"hosts": _two_hosts(n)} if algo.host_aware else {}
    p = algo.build(n, nchannels=c, root=root, **kw)
    q = load(dump(p))
    # a step with several deps comes back as a run of nops (MSCCL XML: one dep per step)
    assert q == p or dump(q) == dump(p)
    for mode in _modes(q):
        verify(q, inplace=mode, nslots=algo.min_slots)


def _two_dep_program():
    """A 1-rank allreduce whose last step waits for two other thread blocks."""
    b = ProgramBuilder("twodeps", "allreduce", 1, 2, outofplace=True)
    a = b.threadblock(0).copy(I, 0, Buf.SCRATCH, 0)
    c = b.threadblock(0).copy(I, 1, Buf.SCRATCH, 1)
    t = b.threadblock(0)
    t.copy(Buf.SCRATCH, 0, O, 0, deps=[a, c])
    t.copy(Buf.SCRATCH, 1, O, 1)
    b.threadblock(0).nop(deps=[(2, 1)])
    return b.build()


def test_several_deps_become_nops():
    p = _two_dep_program()
    verify(p, inplace=False)
    text = dump(p)
    root = ET.fromstring(text)
    tbs = root.find("gpu").findall("tb")
    steps = tbs[2].findall("step")
    assert [s.get("type") for s in steps] == ["nop", "cpy", "cpy"]
    assert [(s.get("depid"), s.get("deps")) for s in steps[:2]] == [("0", "0"), ("1", "0")]
    assert steps[2].get("hasdep") == "1"  # tb 3 depends on IR step 1 = XML step 2
    assert tbs[3].find("step").get("deps") == "2"
    assert tbs[0].find("step").get("hasdep") == "1"
    q = load(text)
    assert [s.op for s in q.ranks[0].tbs[2].steps] == [Op.NOP, Op.COPY, Op.COPY]
    assert q.ranks[0].tbs[3].steps[0].deps == ((2, 2),)
    verify(q, inplace=False)
    assert dump(load(text)) == text


def test_dump_has_runtime_attributes():
    p = algorithms.program("reducescatter", "ring", 4, 2)
    algo = ET.fromstring(dump(p))
    for attr in ("name", "proto", "nchannels", "nchunksperloop", "ngpus", "coll", "inplace", "outofplace"):
        assert algo.get(attr) is not None
    assert (algo.get("coll"), algo.get("nchannels"), algo.get("minBytes"), algo.get("maxBytes")) == \
        ("reducescatter", "2", "0", "0")
    for st in algo.iter("step"):
        assert set(st.attrib) == {"s", "type", "srcbuf", "srcoff", "dstbuf", "dstoff", "cnt", "depid", "deps",
                                  "hasdep"}


GOOD = """<!-- comment --><algo name="x" proto="Simple" nchannels="1" nchunksperloop="1" ngpus="2"
 coll="{coll}" inplace="1" outofplace="0" redop="sum" minBytes="0" maxBytes="0">
 <gpu id="0" i_chunks="1" o_chunks="0" s_chunks="0"><tb id="0" send="1" recv="1" chan="0" extra="7">
  <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
  <step s="1" type="rrc" srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
 </tb></gpu>
 <gpu id="1" i_chunks="1" o_chunks="0" s_chunks="0"><tb id="0" send="0" recv="0" chan="0">
  <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
  <step s="1" type="rrc" srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
 </tb></gpu></algo>"""


def test_load_text_file_and_unknown_attributes(tmp_path):
    p = load(GOOD.format(coll="allreduce"))
    assert (p.collective, p.inplace, p.outofplace, p.nranks) == ("allreduce", True, False, 2)
    verify(p, inplace=True)
    f = tmp_path / "a.xml"
    f.write_text(GOOD.format(coll="allreduce"))
    assert load(f) == p and load(str(f)) == p
    assert load(GOOD.format(coll="reduce_scatter").replace('nchunksperloop="1"', 'nchunksperloop="2"')
                ).collective == "reducescatter"


@pytest.mark.parametrize("old,new,match", [
    ('coll="allreduce"', 'coll="custom"', "coll='custom'"),
    ('cnt="1" depid', 'cnt="x" depid', "attribute cnt='x' is not an integer"),
    ('type="rrc"', 'type="zz"', "type='zz'"),
    ('srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>\n </tb></gpu>\n <gpu id="1"',
     'srcbuf="q" srcoff="0" dstbuf="i" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>\n </tb></gpu>\n <gpu id="1"',
     "srcbuf='q'"),
    ('ngpus="2"', 'ngpus="3"', "do not cover"),
    ('<step s="1"', '<step s="5"', "s=5 out of order"),
    ('nchunksperloop="1" ', '', "missing attribute 'nchunksperloop'"),
])
def test_load_errors_name_element_and_attribute(old, new, match):
    text = GOOD.format(coll="allreduce")
    assert old in text
    with pytest.raises(InvalidArgument, match=match.replace("(", r"\(")):
        load(text.replace(old, new, 1))


def test_load_rejects_garbage():
    with pytest.raises(InvalidArgument, match="not well-formed"):
        load("<algo")
    with pytest.raises(InvalidArgument, match="cannot read"):
        load("/nonexistent/file.xml")
