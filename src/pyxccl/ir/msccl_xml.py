"""MSCCL algorithm XML (MSCCL-IR) to and from :class:`Program`.

:func:`load` reads a file path or XML text; unknown elements and attributes are
ignored, MSCCL ``nop`` steps stay NOP steps (step indices stay 1:1), ``depid/deps``
become ``Step.deps`` and the step's buffers/offsets are kept as written (for ``rr*``
steps MSCCL's ``(srcbuf, srcoff)`` is the local reduction operand, as in the runtime).
An offset of -1 means "unused" and loads as ``(None, -1)``.

:func:`dump` writes XML the MSCCL runtime (msccl-executor-nccl) accepts: every
required attribute, ``hasdep`` computed from the other steps' deps, ``minBytes="0"
maxBytes="0"``; a step with several deps becomes a run of ``nop`` steps carrying one
dep each followed by the step with the last dep (so XML step numbers shift and every
dependency reference is renumbered). Rooted collectives also get a ``root`` attribute
(ignored by MSCCL, read back by :func:`load`).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from ..errors import InvalidArgument
from .program import COLLECTIVES, Buf, Op, Program, RankProgram, Step, ThreadBlock

_COLL_ALIASES = {"reduce_scatter": "reducescatter"}
_BUFS = {b.value: b for b in Buf}
_OPS = {o.value: o for o in Op}


def _int(el: ET.Element, attr: str, where: str, default: int | None = None) -> int:
    v = el.get(attr)
    if v is None:
        if default is not None:
            return default
        raise InvalidArgument(f"MSCCL XML {where}: missing attribute {attr!r}")
    try:
        return int(v)
    except ValueError:
        raise InvalidArgument(f"MSCCL XML {where}: attribute {attr}={v!r} is not an integer") from None


def _flag(el: ET.Element, attr: str, where: str, default: bool) -> bool:
    v = el.get(attr)
    if v is None:
        return default
    if v.strip() not in ("0", "1"):
        raise InvalidArgument(f"MSCCL XML {where}: attribute {attr}={v!r} must be 0 or 1")
    return v.strip() == "1"


def _buf(el: ET.Element, attr: str, off: int, where: str) -> Buf | None:
    v = el.get(attr)
    if off < 0:
        return None
    if v not in _BUFS:
        raise InvalidArgument(f"MSCCL XML {where}: attribute {attr}={v!r} must be one of i, o, s")
    return _BUFS[v]


def _parse_step(el: ET.Element, tb: int, pos: int, where: str) -> Step:
    s = _int(el, "s", where)
    if s != pos:
        raise InvalidArgument(f"MSCCL XML {where}: attribute s={s} out of order (expected {pos})")
    t = el.get("type")
    if t not in _OPS:
        raise InvalidArgument(f"MSCCL XML {where}: attribute type={t!r} is not a known step type")
    srcoff, dstoff = _int(el, "srcoff", where, -1), _int(el, "dstoff", where, -1)
    srcbuf, dstbuf = _buf(el, "srcbuf", srcoff, where), _buf(el, "dstbuf", dstoff, where)
    cnt = _int(el, "cnt", where, 0 if t == "nop" else 1)
    depid, dep = _int(el, "depid", where, -1), _int(el, "deps", where, -1)
    deps: tuple[tuple[int, int], ...] = ()
    if depid >= 0:
        if dep < 0:
            raise InvalidArgument(f"MSCCL XML {where}: depid={depid} with deps={dep}")
        if depid == tb:
            if dep >= s:
                raise InvalidArgument(f"MSCCL XML {where}: depends on its own later step {dep}")
        else:
            deps = ((depid, dep),)
    return Step(_OPS[t], srcbuf, -1 if srcbuf is None else srcoff,
                dstbuf, -1 if dstbuf is None else dstoff, cnt, deps)


def load(source: str | os.PathLike) -> Program:
    """Read an MSCCL algorithm XML (a file path or the XML text itself) into a Program."""
    text: str
    if isinstance(source, str) and source.lstrip().startswith("<"):
        text = source
    else:
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise InvalidArgument(f"cannot read MSCCL XML {source!s}: {e}") from e
    try:
        algo = ET.fromstring(text)
    except ET.ParseError as e:
        raise InvalidArgument(f"MSCCL XML is not well-formed: {e}") from e
    if algo.tag != "algo":
        raise InvalidArgument(f"MSCCL XML: root element is <{algo.tag}>, expected <algo>")
    name = algo.get("name", "")
    w = f"<algo name={name!r}>"
    coll = algo.get("coll")
    coll = _COLL_ALIASES.get(coll or "", coll)
    if coll not in COLLECTIVES:
        raise InvalidArgument(f"MSCCL XML {w}: attribute coll={algo.get('coll')!r} is not supported "
                              f"(known: {', '.join(sorted(COLLECTIVES))})")
    ngpus = _int(algo, "ngpus", w)
    nchunks = _int(algo, "nchunksperloop", w)
    inplace = _flag(algo, "inplace", w, False)
    outofplace = _flag(algo, "outofplace", w, not inplace)
    root = _int(algo, "root", w) if algo.get("root") is not None else None
    ranks: dict[int, RankProgram] = {}
    for gpu in algo.findall("gpu"):
        gw = f"<gpu id={gpu.get('id')!r}>"
        r = _int(gpu, "id", gw)
        if r in ranks or not 0 <= r < ngpus:
            raise InvalidArgument(f"MSCCL XML {gw}: id {r} duplicated or out of range for ngpus={ngpus}")
        rp = RankProgram(r, _int(gpu, "i_chunks", gw, 0), _int(gpu, "o_chunks", gw, 0), _int(gpu, "s_chunks", gw, 0))
        if rp.s_chunks < 0 or rp.i_chunks < 0 or rp.o_chunks < 0:
            raise InvalidArgument(f"MSCCL XML {gw}: negative chunk count")
        for tbel in gpu.findall("tb"):
            tw = f"{gw} <tb id={tbel.get('id')!r}>"
            tb = ThreadBlock(_int(tbel, "id", tw), _int(tbel, "send", tw, -1), _int(tbel, "recv", tw, -1),
                             _int(tbel, "chan", tw, 0))
            for pos, sel in enumerate(tbel.findall("step")):
                tb.steps.append(_parse_step(sel, tb.id, pos, f"{tw} <step s={sel.get('s')!r}>"))
            rp.tbs.append(tb)
        rp.tbs.sort(key=lambda t: t.id)
        ranks[r] = rp
    if sorted(ranks) != list(range(ngpus)):
        raise InvalidArgument(f"MSCCL XML {w}: <gpu> ids {sorted(ranks)} do not cover 0..{ngpus - 1}")
    program = Program(name, coll, ngpus, nchunks, [ranks[r] for r in range(ngpus)],
                      protocol=algo.get("proto", "Simple"), inplace=inplace, outofplace=outofplace, root=root)
    program.validate()
    return program


def _attr(v: object) -> str:
    return escape(str(v), {'"': "&quot;"})


def dump(program: Program) -> str:
    """MSCCL XML text for ``program`` (see the module docstring for the conventions)."""
    program.validate()
    root = f' root="{program.root}"' if program.root is not None else ""
    out = [f'<algo name="{_attr(program.name)}" proto="{_attr(program.protocol)}" nchannels="{program.nchannels}" '
           f'nchunksperloop="{program.nchunksperloop}" ngpus="{program.nranks}" coll="{program.collective}" '
           f'inplace="{int(program.inplace)}" outofplace="{int(program.outofplace)}" minBytes="0" maxBytes="0"{root}>']
    for rp in program.ranks:
        # XML index of every IR step, after inserting nops for extra deps
        xidx: dict[tuple[int, int], int] = {}
        for tb in rp.tbs:
            x = 0
            for i, st in enumerate(tb.steps):
                x += max(len(st.deps) - 1, 0)
                xidx[(tb.id, i)] = x
                x += 1
        hasdep = {(d[0], xidx[d]) for tb in rp.tbs for st in tb.steps for d in st.deps}
        out.append(f'  <gpu id="{rp.rank}" i_chunks="{rp.i_chunks}" o_chunks="{rp.o_chunks}" s_chunks="{rp.s_chunks}">')
        for tb in sorted(rp.tbs, key=lambda t: t.id):
            out.append(f'    <tb id="{tb.id}" send="{tb.send}" recv="{tb.recv}" chan="{tb.channel}">')
            x = 0
            for st in tb.steps:
                deps = [(d[0], xidx[d]) for d in st.deps]
                for dtb, dx in deps[:-1]:
                    out.append(f'      <step s="{x}" type="nop" srcbuf="i" srcoff="-1" dstbuf="o" dstoff="-1" '
                               f'cnt="0" depid="{dtb}" deps="{dx}" hasdep="0"/>')
                    x += 1
                depid, dx = deps[-1] if deps else (-1, -1)
                sb = st.srcbuf.value if st.srcbuf is not None else "i"
                db = st.dstbuf.value if st.dstbuf is not None else "o"
                so = st.srcoff if st.srcbuf is not None else -1
                do = st.dstoff if st.dstbuf is not None else -1
                out.append(f'      <step s="{x}" type="{st.op.value}" srcbuf="{sb}" srcoff="{so}" dstbuf="{db}" '
                           f'dstoff="{do}" cnt="{st.cnt}" depid="{depid}" deps="{dx}" '
                           f'hasdep="{int((tb.id, x) in hasdep)}"/>')
                x += 1
            out.append("    </tb>")
        out.append("  </gpu>")
    out.append("</algo>")
    return "\n".join(out) + "\n"
