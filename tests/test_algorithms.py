"""Every registered algorithm is proved correct by the symbolic verifier.

Flat algorithms: every rank count 1..33 (odd, prime and non-power-of-two included) on
one channel, and on two channels up to 8 ranks; rooted ones for every root up to 4
ranks, then roots {0, n//2, n-1}; in every mode the program declares, with the
FIFO slots the algorithm declares (MIN_SLOTS). Host-aware algorithms: every hosts x
local-ranks shape up to 4 x 8 with consecutive ranks, ranks dealt round-robin, and
uneven shapes with shuffled ranks (tests/test_algorithms_catalogue.py has the rest).
"""

from __future__ import annotations

import importlib
import random

import pytest

from pyxccl import algorithms
from pyxccl.errors import InvalidArgument, VerificationError
from pyxccl.ir.program import COLLECTIVES, blocks
from pyxccl.ir.verify import verify, verify_all

ALGOS = sorted(algorithms.REGISTRY.values(), key=lambda a: (a.collective, a.name))
FLAT = [a for a in ALGOS if not a.host_aware]
HOST_AWARE = [a for a in ALGOS if a.host_aware]
EXPECTED = {("allreduce", "ring"), ("allgather", "ring"), ("reducescatter", "ring"), ("broadcast", "chain"),
            ("reduce", "chain"), ("alltoall", "pairwise"), ("gather", "direct"), ("scatter", "direct"),
            ("barrier", "dissemination")}
#: the catalogue of issue 4 (v-variants excepted)
CATALOGUE = EXPECTED | {
    ("allreduce", n) for n in ("tree", "halving_doubling", "recursive_doubling", "allpairs", "bcube",
                               "hierarchical", "accl", "mics_2hop")} | {
    ("allgather", n) for n in ("recursive_doubling", "bruck", "hierarchical")} | {
    ("reducescatter", n) for n in ("recursive_halving", "pairwise", "hierarchical")} | {
    ("broadcast", "binomial"), ("broadcast", "scatter_allgather"), ("reduce", "binomial")} | {
    ("alltoall", n) for n in ("direct", "bruck", "two_step")}
HOST_AWARE_EXPECTED = {("allreduce", "hierarchical"), ("allreduce", "accl"), ("allreduce", "mics_2hop"),
                       ("allgather", "hierarchical"), ("reducescatter", "hierarchical"), ("alltoall", "two_step")}


def _roots(n: int) -> list[int]:
    return list(range(n)) if n <= 4 else sorted({0, n // 2, n - 1})


def shapes() -> list[tuple[tuple[int, ...], ...]]:
    """Host layouts the host-aware algorithms are proved on."""
    out = []
    for H in (2, 3, 4):
        for L in range(1, 9):
            out.append(tuple(tuple(range(h * L, h * L + L)) for h in range(H)))
    for H, L in ((2, 2), (2, 3), (3, 2), (4, 2), (2, 4)):
        out.append(tuple(tuple(range(h, H * L, H)) for h in range(H)))
    rnd = random.Random(4)
    for sizes in ((1, 2), (2, 1), (3, 1, 2), (1, 4), (2, 3, 4), (4, 1, 1, 3), (8, 1), (5, 3, 8, 2), (7, 8, 6, 5)):
        perm = list(range(sum(sizes)))
        rnd.shuffle(perm)
        hs, i = [], 0
        for s in sizes:
            hs.append(tuple(sorted(perm[i:i + s])))
            i += s
        out.append(tuple(hs))
    return out


def test_first_set_is_registered():
    assert EXPECTED <= set(algorithms.REGISTRY)


def test_catalogue_is_registered():
    assert CATALOGUE <= set(algorithms.REGISTRY), CATALOGUE - set(algorithms.REGISTRY)
    assert {(a.collective, a.name) for a in HOST_AWARE} == HOST_AWARE_EXPECTED


@pytest.mark.parametrize("algo", FLAT, ids=lambda a: f"{a.collective}_{a.name}")
def test_verified_1_to_33_ranks(algo: algorithms.Algorithm):
    roots = _roots if algo.rooted else None
    n = verify_all(algo.build, range(1, 34), nchannels=(1,), roots=roots, nslots=algo.min_slots)
    n += verify_all(algo.build, range(1, 9), nchannels=(2,), roots=roots, nslots=algo.min_slots)
    assert n >= 33 + 8


@pytest.mark.parametrize("algo", HOST_AWARE, ids=lambda a: f"{a.collective}_{a.name}")
def test_host_aware_verified_on_every_shape(algo: algorithms.Algorithm):
    done = 0
    for hosts in shapes():
        n = sum(len(h) for h in hosts)
        if not algo.supports(n, hosts):
            assert algo.name == "two_step" and len({len(h) for h in hosts}) > 1, hosts
            continue
        for nch in ((1, 2) if n <= 8 else (1,)):
            p = algorithms.program(algo.collective, algo.name, n, nch, 0, hosts)
            for mode in [m for m, ok in ((True, p.inplace), (False, p.outofplace)) if ok]:
                try:
                    verify(p, inplace=mode, nslots=algo.min_slots)
                except VerificationError as e:
                    raise VerificationError(f"{p.name} hosts={hosts} nchannels={nch} "
                                            f"{'in-place' if mode else 'out-of-place'}: {e}") from e
                done += 1
    assert done >= 2 * len(shapes()) - (20 if algo.name == "two_step" else 0)


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: f"{a.collective}_{a.name}")
def test_module_contract(algo: algorithms.Algorithm):
    mod = importlib.import_module(f"pyxccl.algorithms.{algo.collective}_{algo.name}")
    doc = mod.__doc__ or ""
    assert "Bytes on the wire" in doc and "Supports" in doc
    assert algo.build.__doc__
    assert algo.claims.startswith("Supports")
    kw = {"hosts": ((0, 1), (2, 3))} if algo.host_aware else {}
    p = algo.build(4, nchannels=2, root=3 if algo.rooted else 0, **kw)
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


def test_declared_min_slots_are_needed_and_enough():
    """An algorithm with MIN_SLOTS = 2 deadlocks with one slot somewhere; every one runs with the default 4."""
    for algo in ALGOS:
        kw = {"hosts": ((0, 1, 2), (3, 4, 5))} if algo.host_aware else {}
        p = algo.build(6, nchannels=1, root=0, **kw)
        mode = p.outofplace
        verify(p, inplace=not mode, nslots=4)
        if algo.min_slots > 1:
            with pytest.raises(VerificationError, match="deadlock"):
                verify(p, inplace=not mode, nslots=algo.min_slots - 1)


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
        assert not algorithms.default(coll, 3).host_aware


def test_program_cache():
    a = algorithms.program("broadcast", "chain", 4, 1, 2)
    assert algorithms.program("broadcast", "chain", 4, 1, 2) is a
    assert algorithms.program("allreduce", "ring", 4, 1, 3) is algorithms.program("allreduce", "ring", 4, 1, 0)
    with pytest.raises(InvalidArgument, match="root 4 out of range"):
        algorithms.program("broadcast", "chain", 4, 1, 4)
    with pytest.raises(InvalidArgument, match="nchannels"):
        algorithms.program("allreduce", "ring", 4, 0)
    # flat algorithms ignore hosts (one cached program), host-aware ones key on them
    hs = ((0, 1), (2, 3))
    assert algorithms.program("allreduce", "ring", 4, 1, 0, hs) is algorithms.program("allreduce", "ring", 4)
    h1 = algorithms.program("allreduce", "hierarchical", 4, 1, 0, hs)
    assert algorithms.program("allreduce", "hierarchical", 4, 1, 0, [[0, 1], [2, 3]]) is h1
    assert algorithms.program("allreduce", "hierarchical", 4, 1, 0, ((0, 2), (1, 3))) is not h1


def test_single_rank_programs_are_trivial():
    for algo in FLAT:
        p = algo.build(1)
        steps = [s for tb in p.ranks[0].tbs for s in tb.steps]
        assert all(not (s.op.sends or s.op.receives) for s in steps)
        if algo.collective == "barrier":
            assert steps == []
