"""One path choice per host (pyxccl.runtime.host.path_board): the host's lowest rank decides, the others follow.

The board's entries (the call number, its path and the forecast of the next); a leader and a
follower sharing a board in one process, the follower ahead of the leader and behind it; and
rank processes: with the leader's choices scripted into an order no rank would choose by
itself, every follower takes the leader's path on every call after the first, with exact
results; on emulated hosts each host's lowest rank leads.
"""

from __future__ import annotations

import mmap

import harness
import numpy as np
import pytest

from pyxccl.runtime.host.path_board import ENTRIES, Board, board_key
from pyxccl.runtime.host.path_choice import DIRECT, MIXED, PUT, SLOTS, TRY_CALLS, PathChooser
from pyxccl.transport.shm import cma

NBYTES = 16 << 20


def _board() -> Board:
    return Board(memoryview(mmap.mmap(-1, mmap.PAGESIZE))[64:])


def test_an_entry_answers_its_call_and_the_next():
    board, key = _board(), board_key(object(), NBYTES)
    assert board.follow(key, 1) is None  # nothing published yet
    board.publish(key, 5, PUT, SLOTS)
    assert board.follow(key, 5) == PUT  # the leader's call 5
    assert board.follow(key, 6) == SLOTS  # the leader has not started call 6: its forecast
    assert board.follow(key, 7) is None and board.follow(key, 4) is None  # counts that differ otherwise
    assert board.follow(key ^ 1, 5) is None  # another key
    board.publish(key, (1 << 24) - 1, MIXED, DIRECT)  # the call number wraps at 24 bits
    assert board.follow(key, 1 << 24) == DIRECT and board.follow(key, 2 * (1 << 24) - 1) == MIXED


def test_keys_agree_between_processes_and_a_small_area_is_refused():
    class Program:
        collective, name = "allgather", "ring"
    assert board_key(Program(), 3 << 20) == board_key(Program(), 2 << 20) != board_key(Program(), 4 << 20)
    assert board_key(Program(), 0) != 0
    with pytest.raises(ValueError, match="needs"):
        Board(memoryview(bytearray(ENTRIES * 8 - 1)))


class _Run:
    """A stand-in for :class:`pyxccl.runtime.host.executor.HostCall`: its program and the candidates it offers."""

    def __init__(self, program: object) -> None:
        self.program, self.mixed_differs, self.put_differs, self.path = program, False, True, DIRECT


def _machine(path: int) -> float:
    """A machine where the put is fastest, single copy close and the slots far behind."""
    return {DIRECT: 1.0, PUT: 0.9, SLOTS: 2.5}[path] * NBYTES * 1e-10


@pytest.mark.parametrize("follower_first", [False, True])
def test_the_follower_takes_the_leaders_path(monkeypatch, follower_first):
    """The follower takes the path the leader took in that call: it reads the entry after the
    leader published it, or before (the follower ahead: the forecast), which misses only where
    the leader's previous call moved its choice."""
    board = _board()
    leader, follower = PathChooser(board=board, leads=True), PathChooser(board=board, leads=False)
    assert leader.leads and not follower.leads and PathChooser().leads
    program = object()
    clock = [0.0]
    monkeypatch.setattr("pyxccl.runtime.host.path_choice.time.perf_counter", lambda: clock[0])
    runs = {leader: _Run(program), follower: _Run(program)}
    taken: dict[PathChooser, list[int]] = {leader: [], follower: []}

    def call(chooser: PathChooser) -> None:
        run = runs[chooser]

        def drive() -> None:
            clock[0] += _machine(run.path)
        chooser.drive(run, NBYTES, drive)
        taken[chooser].append(run.path)

    moves = 0
    for i in range(300):
        best = leader.best(leader.key(program, NBYTES))
        for chooser in ((follower, leader) if follower_first and i else (leader, follower)):
            call(chooser)
        moves += best is not None and leader.best(leader.key(program, NBYTES)) != best
    first = [DIRECT] * TRY_CALLS + [SLOTS] * TRY_CALLS + [PUT] * TRY_CALLS  # each candidate measured in turn
    assert taken[leader][:3 * TRY_CALLS] == first and taken[leader].count(PUT) > 250
    missed = [i for i, (a, b) in enumerate(zip(taken[leader], taken[follower])) if a != b]
    if follower_first:
        assert len(missed) <= moves + 1  # the first call and where the choice moved
    else:
        assert not missed
    assert not any(rec.cost != [None] * 4 for rec in follower._records.values())  # the follower timed nothing


def test_a_follower_without_an_entry_chooses_alone():
    follower = PathChooser(board=_board(), leads=False)
    run = _Run(object())
    ran = []
    for _ in range(3 * TRY_CALLS):
        follower.drive(run, NBYTES, lambda: ran.append(run.path))
    assert ran == [DIRECT] * TRY_CALLS + [SLOTS] * TRY_CALLS + [PUT] * TRY_CALLS  # its own first calls: each candidate


def _script(seq: int) -> int:
    """The leader's scripted path of its call ``seq``: an order no chooser would take."""
    return (DIRECT, SLOTS, PUT, PUT, DIRECT)[seq * 3 % 5]


def job_followers_follow(comm, count: int = 70001, calls: int = 24) -> list[int] | list[str]:
    """Every rank runs ``calls`` all-gathers (exact results); the leader's choices follow
    :func:`_script`. Returns the paths this rank took, or the failures."""
    r, n = comm.rank, comm.size
    chooser = comm._paths
    fails: list[str] = []
    if chooser.leads:
        chooser.choose = lambda key, candidates=None: _script(chooser._records[key].seq)
        chooser.forecast = lambda key, candidates, ran: _script(chooser._records[key].seq + 1)
    taken: list[int] = []
    drive = chooser.drive
    chooser.drive = lambda run, nbytes, d: (drive(run, nbytes, d), taken.append(run.path))
    try:
        x = np.arange(count, dtype=np.float32)
        for i in range(calls):
            out = np.zeros(n * count, np.float32)
            comm.all_gather(x + r + i, out)
            fails += harness.expect_equal(f"allgather #{i}", out, np.concatenate([x + q + i for q in range(n)]))
    finally:
        for name in ("choose", "forecast", "drive"):
            chooser.__dict__.pop(name, None)
    return fails or taken


needs_cma = pytest.mark.skipif(not cma.available(), reason="process_vm_readv is not available")


@needs_cma
@pytest.mark.parametrize("nranks", [2, 3])
def test_ranks_follow_their_hosts_leader(env_pools, nranks):
    results = env_pools(nranks, PYXCCL_SLOT_BYTES="16K", PYXCCL_CMA_MIN_BYTES="1K").run(job_followers_follow)
    for r, got in enumerate(results):
        assert got and all(isinstance(p, int) for p in got), f"rank {r}: {got}"
    leader = results[0]
    assert leader[1:] == [_script(seq) for seq in range(2, len(leader) + 1)]
    for r, got in enumerate(results[1:], 1):
        assert got[1:] == leader[1:], f"rank {r} took {got}, its leader {leader}"


def job_leads(comm) -> bool:
    return comm._paths.leads


@needs_cma
def test_each_host_has_its_own_leader(pool):
    """On emulated hosts AABB, ranks 0 and 2 decide, ranks 1 and 3 follow."""
    assert pool(4, "hosts:AABB").run(job_leads) == [True, False, True, False]
