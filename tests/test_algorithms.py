"""Every registered algorithm is proved correct by the verifier for 1..16 ranks."""

from __future__ import annotations

import importlib

import pytest

from pyxccl import algorithms
from pyxccl.errors import InvalidArgument, VerificationError
from pyxccl.ir.program import COLLECTIVES, blocks
from pyxccl.ir.verify import verify, verify_all

ALGOS = sorted(algorithms.REGISTRY.values(), key=lambda a: (a.collective, a.name))
EXPECTED = {("allreduce", "ring"), ("allgather", "ring"), ("reducescatter", "ring"), ("broadcast", "chain"),
            ("reduce", "chain"), ("alltoall", "pairwise"), ("gather", "direct"), ("scatter", "direct"),
            ("barrier", "dissemination")}


def _roots(n: int) -> list[int]:
    return list(range(n)) if n <= 8 else [0, n - 1]


def test_first_set_is_registered():
    assert EXPECTED <= set(algorithms.REGISTRY)


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: f"{a.collective}_{a.name}")
def test_verified_1_to_16_ranks(algo: algorithms.Algorithm):
    n = verify_all(algo.build, range(1, 17), nchannels=(1, 2), roots=_roots if algo.rooted else None,
                   nslots=algo.min_slots)
    assert n >= 16


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: f"{a.collective}_{a.name}")
def test_module_contract(algo: algorithms.Algorithm):
    mod = importlib.import_module(f"pyxccl.algorithms.{algo.collective}_{algo.name}")
    doc = mod.__doc__ or ""
    assert "Bytes on the wire" in doc and "Supports" in doc
    assert algo.build.__doc__
    p = algo.build(4, nchannels=2, root=3 if algo.rooted else 0)
    assert p.collective == algo.collective and p.nranks == 4
    assert p.inplace or p.outofplace
    if algo.rooted:
        assert p.root == 3
    k = p.chunks_per_block
    nin, nout = blocks(algo.collective, 4)
    for rp in p.ranks:
        assert rp.i_chunks >= nin * k
        assert rp.o_chunks >= (nout * k if p.outofplace else 0)


@pytest.mark.parametrize("name", ["allreduce_ring", "allgather_ring", "reducescatter_ring"])
def test_rings_need_two_slots(name: str):
    coll, algo = name.split("_")
    assert algorithms.get(coll, algo).min_slots == 2
    p = algorithms.program(coll, algo, 3)
    with pytest.raises(VerificationError, match="deadlock.*waits for room"):
        verify(p, inplace=False, nslots=1)
    verify(p, inplace=False, nslots=2)


def test_allreduce_ring_shape():
    p = algorithms.program("allreduce", "ring", 8, 2)
    assert p.nchunksperloop == 16 and p.nchannels == 2
    for rp in p.ranks:
        assert len(rp.tbs) == 2
        for tb in rp.tbs:
            ops = [s.op.value for s in tb.steps]
            assert ops == ["s"] + ["rrs"] * 6 + ["rrcs"] + ["rcs"] * 6 + ["r"]
            assert sum(s.op.receives for s in tb.steps) == 2 * (8 - 1)


def test_registry_lookups():
    assert algorithms.names("allreduce")[0] == "ring"
    assert algorithms.default("allreduce", 5).name == "ring"
    assert algorithms.get("gather", "direct").rooted
    assert not algorithms.get("allreduce", "ring").rooted
    with pytest.raises(InvalidArgument, match="known: ring"):
        algorithms.get("allreduce", "nope")
    with pytest.raises(InvalidArgument, match="unknown collective"):
        algorithms.get("allsum", "ring")
    for coll in COLLECTIVES:
        assert algorithms.default(coll, 3).collective == coll


def test_program_cache():
    a = algorithms.program("broadcast", "chain", 4, 1, 2)
    assert algorithms.program("broadcast", "chain", 4, 1, 2) is a
    assert algorithms.program("allreduce", "ring", 4, 1, 3) is algorithms.program("allreduce", "ring", 4, 1, 0)
    with pytest.raises(InvalidArgument, match="root 4 out of range"):
        algorithms.program("broadcast", "chain", 4, 1, 4)
    with pytest.raises(InvalidArgument, match="nchannels"):
        algorithms.program("allreduce", "ring", 4, 0)


def test_single_rank_programs_are_trivial():
    for algo in ALGOS:
        p = algo.build(1)
        steps = [s for tb in p.ranks[0].tbs for s in tb.steps]
        assert all(not (s.op.sends or s.op.receives) for s in steps)
        if algo.collective == "barrier":
            assert steps == []
