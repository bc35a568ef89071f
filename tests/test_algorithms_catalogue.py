"""Structure of the catalogue's algorithms: NCCL's double binary tree against the golden
tables of notes/nccl-trees.md, step counts and peers of the latency algorithms, the
bytes the hierarchical ones put across hosts, and the errors a shape they cannot serve gives."""

from __future__ import annotations

import math

import pytest

from pyxccl import algorithms
from pyxccl.algorithms._common import Shape, normalize_hosts, uniform_hosts
from pyxccl.algorithms.allreduce_bcube import radix
from pyxccl.algorithms.allreduce_mics_2hop import group_size
from pyxccl.algorithms.allreduce_tree import btree, dtree
from pyxccl.errors import InvalidArgument
from pyxccl.ir.program import Op

# ------------------------------------------------------------------------------ NCCL's trees
# (n, r) -> (T0 up, T0 down0, T0 down1, T1 up, T1 down0, T1 down1); notes/nccl-trees.md section 4
GOLDEN = {
    2: [(-1, -1, 1, 1, -1, -1), (0, -1, -1, -1, -1, 0)],
    3: [(-1, -1, 2, 1, 2, -1), (2, -1, -1, -1, -1, 0), (0, 1, -1, 0, -1, -1)],
    4: [(-1, -1, 2, 1, -1, -1), (2, -1, -1, 3, 2, 0), (0, 1, 3, 1, -1, -1), (2, -1, -1, -1, -1, 1)],
    5: [(-1, -1, 4, 1, 3, -1), (2, -1, -1, -1, -1, 0), (4, 1, 3, 3, -1, -1), (2, -1, -1, 0, 2, 4),
        (0, 2, -1, 3, -1, -1)],
    7: [(-1, -1, 4, 5, 6, -1), (2, -1, -1, -1, -1, 5), (4, 1, 3, 3, -1, -1), (2, -1, -1, 5, 2, 4),
        (0, 2, 6, 3, -1, -1), (6, -1, -1, 1, 3, 0), (4, 5, -1, 0, -1, -1)],
    8: [(-1, -1, 4, 1, -1, -1), (2, -1, -1, 3, 2, 0), (4, 1, 3, 1, -1, -1), (2, -1, -1, 7, 5, 1),
        (0, 2, 6, 5, -1, -1), (6, -1, -1, 3, 6, 4), (4, 5, 7, 5, -1, -1), (6, -1, -1, -1, -1, 3)],
    13: [(-1, -1, 8, 9, 11, -1), (2, -1, -1, -1, -1, 9), (4, 1, 3, 3, -1, -1), (2, -1, -1, 5, 2, 4),
         (8, 2, 6, 3, -1, -1), (6, -1, -1, 9, 3, 7), (4, 5, 7, 7, -1, -1), (6, -1, -1, 5, 6, 8),
         (0, 4, 12, 7, -1, -1), (10, -1, -1, 1, 5, 0), (12, 9, 11, 11, -1, -1), (10, -1, -1, 0, 10, 12),
         (8, 10, -1, 11, -1, -1)],
}


@pytest.mark.parametrize("n", sorted(GOLDEN))
def test_dtree_golden_tables(n):
    for r, row in enumerate(GOLDEN[n]):
        t0, t1 = dtree(n, r)
        assert t0[:3] + t1[:3] == row, (n, r)


def test_dtree_16_illustration():
    edges0 = {r: tuple(c for c in dtree(16, r)[0][1:3] if c != -1) for r in range(16)}
    assert {r: c for r, c in edges0.items() if c} == {0: (8,), 8: (4, 12), 4: (2, 6), 12: (10, 14), 2: (1, 3),
                                                      6: (5, 7), 10: (9, 11), 14: (13, 15)}
    edges1 = {r: tuple(c for c in dtree(16, r)[1][1:3] if c != -1) for r in range(16)}
    assert {r: c for r, c in edges1.items() if c} == {15: (7,), 7: (11, 3), 11: (13, 9), 3: (5, 1), 13: (14, 12),
                                                      9: (10, 8), 5: (6, 4), 1: (2, 0)}


@pytest.mark.parametrize("n", range(1, 200))
def test_dtree_properties(n):
    for t in (0, 1):
        ups = [dtree(n, r)[t][0] for r in range(n)]
        assert ups.count(-1) == 1
        for r in range(n):
            up, d0, d1, ptype = dtree(n, r)[t]
            for c in (d0, d1):
                if c != -1:
                    assert dtree(n, c)[t][0] == r
            if up != -1:
                assert r in dtree(n, up)[t][1:3]
        depth = 0
        for r in range(n):  # every rank reaches the root within ceil(log2 n) hops
            d, x = 0, r
            while ups[x] != -1:
                x, d = ups[x], d + 1
                assert d <= n
            depth = max(depth, d)
        assert depth <= max(1, math.ceil(math.log2(n))) if n > 1 else depth == 0
    for r in range(n):  # parentChildType in tree 0's own numbering
        up, _, _, ptype = btree(n, r)
        if up != -1:
            assert ptype == (0 if r < up else 1)
    inner = [{r for r in range(n) if any(c != -1 for c in dtree(n, r)[t][1:3])} for t in (0, 1)]
    if n % 2 == 0:
        assert not inner[0] & inner[1]
    elif n > 1:
        assert inner[0] & inner[1] <= {0}


def test_tree_program_uses_both_trees_on_their_own_channels():
    p = algorithms.program("allreduce", "tree", 8, 2)
    assert p.nchunksperloop == 4 and p.nchannels == 4
    # rank 4: inner node of tree 0 (parent 0, children 2, 6), leaf of tree 1 (parent 5)
    tbs = p.ranks[4].tbs
    peers = {(tb.channel, tb.send, tb.recv) for tb in tbs}
    assert {(0, 2, 2), (0, 0, 6), (0, 6, 0), (2, 5, 5)} <= peers


# ------------------------------------------------------------------------- step counts
def _max_messages(p) -> int:
    """The most messages one rank sends (a proxy for latency terms)."""
    return max(sum(s.op.sends for tb in rp.tbs for s in tb.steps) for rp in p.ranks)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 12, 16, 31, 32, 33])
def test_latency_algorithms_take_log_steps(n):
    lg = math.ceil(math.log2(n))
    p2 = 1 << (n.bit_length() - 1)
    lp = p2.bit_length() - 1
    fold = 1 if p2 != n else 0
    assert _max_messages(algorithms.program("allreduce", "recursive_doubling", n)) == lp + fold
    assert _max_messages(algorithms.program("allreduce", "halving_doubling", n)) == 2 * lp + fold
    assert _max_messages(algorithms.program("allreduce", "allpairs", n)) == 2 * (n - 1)
    assert lg <= _max_messages(algorithms.program("allgather", "bruck", n)) <= 2 * lg  # a wrapping range: 2 messages
    assert _max_messages(algorithms.program("alltoall", "bruck", n)) == lg
    assert _max_messages(algorithms.program("broadcast", "binomial", n)) == lg
    assert _max_messages(algorithms.program("reduce", "binomial", n)) == 1
    ring = _max_messages(algorithms.program("allreduce", "ring", n))
    assert ring == 2 * (n - 1)


def test_allpairs_two_steps_of_all_peers():
    p = algorithms.program("allreduce", "allpairs", 5)
    for rp in p.ranks:
        assert len(rp.tbs) == 4
        for tb in rp.tbs:
            assert [s.op for s in tb.steps] == [Op.SEND, Op.RECV_REDUCE_COPY, Op.SEND, Op.RECV]


def test_bcube_radix():
    assert radix(1) == []
    assert radix(8) == [4, 2] and radix(16) == [4, 4] and radix(12) == [4, 3] and radix(6) == [3, 2]
    assert radix(31) == [31] and radix(33) == [11, 3]
    for n in range(1, 200):
        assert math.prod(radix(n)) == n


def test_halving_doubling_owns_bitreversed_chunks():
    """After the reduce-scatter half, rank v holds chunk bitreverse(v) (Gloo's note)."""
    p = algorithms.program("allreduce", "halving_doubling", 8)
    for r, rp in enumerate(p.ranks):
        rrc = [s for tb in rp.tbs for s in tb.steps if s.op is Op.RECV_REDUCE_COPY and s.cnt == 1]
        assert len(rrc) == 1
        assert rrc[0].dstoff == int(f"{r:03b}"[::-1], 2)


# ----------------------------------------------------------------------------- hosts
def _host_links(p, hosts) -> dict[tuple[int, int], int]:
    """Chunks sent from host a to host b per slice (summed over ranks and messages)."""
    where = {r: h for h, rs in enumerate(hosts) for r in rs}
    load: dict[tuple[int, int], int] = {}
    for rp in p.ranks:
        for tb in rp.tbs:
            if tb.send >= 0 and where[tb.send] != where[rp.rank]:
                key = (where[rp.rank], where[tb.send])
                load[key] = load.get(key, 0) + sum(s.cnt for s in tb.steps if s.op.sends)
    return load


def _inter_host_chunks(p, hosts) -> int:
    return sum(_host_links(p, hosts).values())


@pytest.mark.parametrize("H,L", [(2, 2), (2, 4), (4, 2), (4, 4), (3, 8)])
def test_hierarchical_allreduce_moves_fewer_bytes_across_hosts(H, L):
    """Per buffer: total bytes across hosts, and on the busiest host-to-host direction (what a
    uniform slow network makes the time of); MiCS trades total volume for less on each link."""
    n = H * L
    for hosts in (uniform_hosts(n, H), tuple(tuple(range(h, n, H)) for h in range(H))):
        ring = algorithms.program("allreduce", "ring", n)
        ring_total = _inter_host_chunks(ring, hosts) / ring.nchunksperloop
        ring_max = max(_host_links(ring, hosts).values()) / ring.nchunksperloop
        for name in ("hierarchical", "accl", "mics_2hop"):
            p = algorithms.program("allreduce", name, n, 1, 0, hosts)
            links = _host_links(p, hosts)
            assert max(links.values()) / p.nchunksperloop < ring_max, (name, hosts)
            if name != "mics_2hop":
                assert sum(links.values()) / p.nchunksperloop < ring_total, (name, hosts)
        h = algorithms.program("allreduce", "hierarchical", n, 1, 0, hosts)
        # MSCCL's count: every rank sends 2 (H-1)/(H L) of the buffer across hosts
        assert _inter_host_chunks(h, hosts) / h.nchunksperloop == pytest.approx(n * 2 * (H - 1) / (H * L))


@pytest.mark.parametrize("coll", ["allgather", "reducescatter", "alltoall"])
def test_hierarchical_blocked_collectives_cross_hosts_less(coll):
    hosts = uniform_hosts(8, 2)
    flat = {"allgather": "ring", "reducescatter": "ring", "alltoall": "pairwise"}[coll]
    name = "two_step" if coll == "alltoall" else "hierarchical"
    f = algorithms.program(coll, flat, 8)
    h = algorithms.program(coll, name, 8, 1, 0, hosts)
    fb, hb = _inter_host_chunks(f, hosts) / f.nchunksperloop, _inter_host_chunks(h, hosts) / h.nchunksperloop
    if coll == "alltoall":  # same bytes, far fewer messages
        inter = lambda p: sum(1 for rp in p.ranks for tb in rp.tbs for s in tb.steps  # noqa: E731
                              if s.op.sends and hosts[0].count(tb.send) != hosts[0].count(rp.rank))
        assert hb == fb and inter(h) * 4 == inter(f)
    else:
        assert hb < fb


def test_hierarchical_refuses_one_host_and_says_why():
    for coll, name in [("allreduce", "hierarchical"), ("allreduce", "accl"), ("allreduce", "mics_2hop"),
                       ("allgather", "hierarchical"), ("reducescatter", "hierarchical"), ("alltoall", "two_step")]:
        algo = algorithms.get(coll, name)
        for hosts in (None, ((0, 1, 2, 3),)):
            assert not algo.supports(4, hosts)
            with pytest.raises(InvalidArgument, match="at least 2 hosts"):
                algorithms.program(coll, name, 4, 1, 0, hosts)
        with pytest.raises(InvalidArgument, match="at least 2 hosts"):
            algorithms.program(coll, name, 1)
        assert algorithms.default(coll, 4).name != name
        assert algo.supports(4, ((0, 1), (2, 3)))
    with pytest.raises(InvalidArgument, match="same number of ranks on every host"):
        algorithms.program("alltoall", "two_step", 5, 1, 0, ((0, 1, 2), (3, 4)))
    assert algorithms.get("allreduce", "hierarchical").supports(5, ((0, 1, 2), (3, 4)))


def test_hosts_are_validated():
    assert normalize_hosts(4, None) is None
    assert normalize_hosts(4, [[0, 1, 2, 3]]) is None
    assert normalize_hosts(4, [[2, 0], [1, 3]]) == ((2, 0), (1, 3))
    for bad in ([[0, 1], [1, 2, 3]], [[0, 1], [2]], [[0, 1, 2, 3], []], "xy"):
        with pytest.raises(InvalidArgument):
            normalize_hosts(4, bad)
    with pytest.raises(InvalidArgument, match="partition"):
        algorithms.program("allreduce", "hierarchical", 4, 1, 0, ((0, 1), (2, 2)))


def test_shape_columns():
    s = Shape(((0, 1, 2, 3), (4, 5)), contiguous=False)
    assert [list(s.cols(1, l)) for l in range(2)] == [[0, 2], [1, 3]]
    assert [s.member(1, c) for c in range(4)] == [4, 5, 4, 5]
    assert s.column_blocks(1, 0) == [0, 2, 4]
    c = Shape(((0, 1, 2, 3), (4, 5)), contiguous=True)
    assert [list(c.cols(1, l)) for l in range(2)] == [[0, 1], [2, 3]]
    assert [c.channel(x) for x in range(4)] == [0, 1, 0, 1]
    assert group_size(2) == 1 and group_size(4) == 2 and group_size(8) == 2 and group_size(9) == 3


def test_mics_groups_hosts():
    hosts = uniform_hosts(8, 4)  # 4 hosts of 2: 2 groups of 2 hosts
    p = algorithms.program("allreduce", "mics_2hop", 8, 1, 0, hosts)
    h = algorithms.program("allreduce", "hierarchical", 8, 1, 0, hosts)
    assert p.nchunksperloop == 4 * 2 and h.nchunksperloop == 2 * 4
    assert "2g" in p.name


def test_relabelled_flat_programs_verify_for_shuffled_rank_orders():
    """Flat algorithms run on a host-contiguous ring order (pyxccl.ir.relabel) stay correct."""
    import random

    from pyxccl import algorithms
    from pyxccl.ir.relabel import relabel
    from pyxccl.ir.verify import verify

    rng = random.Random(7)
    checked = 0
    for coll in ("allreduce", "allgather", "reducescatter", "alltoall", "broadcast", "reduce", "gather", "scatter"):
        for name in algorithms.names(coll):
            algo = algorithms.get(coll, name)
            if algo.host_aware:
                continue
            for n in (2, 3, 5, 8):
                if not algo.supports(n):
                    continue
                order = list(range(n))
                rng.shuffle(order)
                root = n - 1
                prog = algorithms.program(coll, name, n, 1, order.index(root) if algo.rooted else 0)
                moved = relabel(prog, order)
                if moved is None:  # multi-block steps: the communicator keeps rank order
                    continue
                assert algo.rooted is False or moved.root == root
                for inplace in (True, False):
                    if moved.inplace if inplace else moved.outofplace:
                        verify(moved, inplace=inplace, nslots=4)
                        checked += 1
    assert checked > 100
