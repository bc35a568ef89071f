"""The symbolic verifier catches real bugs and names the step at fault."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pyxccl.errors import InvalidArgument, VerificationError
from pyxccl.ir.builder import ProgramBuilder
from pyxccl.ir.program import Buf, Program
from pyxccl.ir.verify import verify, verify_all

I, O, S = Buf.INPUT, Buf.OUTPUT, Buf.SCRATCH
XML_DIR = "/work/shared/data/msccl-xml"


def allreduce2(*, dep: tuple[int, ...] = (0, 1), double: bool = False) -> Program:
    """2-rank allreduce, 1 chunk: tb0 sends the input, tb1 reduces the peer's data into the output."""
    b = ProgramBuilder("ar2", "allreduce", 2, 1)
    for r in range(2):
        tx = b.threadblock(r, send=1 - r)
        rx = b.threadblock(r, recv=1 - r)
        sent = tx.send(I, 0)
        rx.recv_reduce_copy(I, 0, O, 0, deps=[sent] if r in dep else [])
        if double and r == 0:
            rx.reduce(I, 0, O, 0)
    return b.build()


def raises(program: Program, *parts: str, inplace: bool = False, nslots: int = 1) -> str:
    with pytest.raises(VerificationError) as e:
        verify(program, inplace=inplace, nslots=nslots)
    msg = str(e.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


def test_correct_program_passes_both_modes():
    p = allreduce2()
    verify(p, inplace=True)
    verify(p, inplace=False)


def test_missing_step_gives_wrong_output():
    # allgather on 2 ranks: rank 1 forgets to copy its own block into its output
    b = ProgramBuilder("ag2", "allgather", 2, 2)
    for r in range(2):
        tb = b.threadblock(r, send=1 - r, recv=1 - r)
        if r == 0:
            tb.copy(I, 0, O, 0)
        tb.send(I, 0)
        tb.recv(O, 1 - r)
    p = b.build()
    raises(p, "wrong result", "rank 1 output chunk 1", "never written")
    verify(p, inplace=True)  # in place the block is already there


def test_double_counted_contribution():
    raises(allreduce2(double=True), "rank 0 output chunk 0", "counted twice: 0:0", "rank 0 tb 1 step 1 (re)")


def test_deadlock_both_receive_first():
    b = ProgramBuilder("dl", "allreduce", 2, 1)
    for r in range(2):
        tb = b.threadblock(r, send=1 - r, recv=1 - r)
        tb.recv_reduce_copy(I, 0, O, 0)
        tb.send(O, 0)
    msg = raises(b.build(), "deadlock",
                 "rank 0 tb 0 step 0 (rrc) waits for a message from rank 1 on channel 0",
                 "rank 1 tb 0 step 0 (rrc) waits for a message from rank 0 on channel 0")
    assert msg.count("waits for") == 2


def test_deadlock_on_dependency_and_room():
    b = ProgramBuilder("dl2", "broadcast", 2, 1, root=0)
    t0 = b.threadblock(0, send=1)
    t1 = b.threadblock(0)
    for _ in range(3):
        t0.send(I, 0)  # rank 1 takes only the first: the third finds no room with one slot
    t1.copy(I, 0, O, 0, deps=[(0, 2)])
    b.threadblock(1, recv=0).recv(O, 0)
    raises(b.build(), "rank 0 tb 0 step 2 (s) waits for room towards rank 1 on channel 0",
           "rank 0 tb 1 step 0 (cpy) waits for dependency (tb 0, step 2)")


def test_mismatched_cnt():
    b = ProgramBuilder("cnt", "broadcast", 2, 2, root=0)
    b.threadblock(0, send=1).send(I, 0, cnt=2)
    b.threadblock(0).copy(I, 0, O, 0, cnt=2)
    b.threadblock(1, recv=0).recv(O, 0, cnt=1)
    raises(b.build(), "cnt mismatch", "rank 1 tb 0 step 0 (r) receives cnt=1",
           "rank 0 tb 0 step 0 (s) carries cnt=2")


def test_unmatched_send():
    b = ProgramBuilder("um", "broadcast", 2, 1, root=0)
    tb = b.threadblock(0, send=1)
    tb.copy(I, 0, O, 0)
    tb.send(I, 0)
    tb.send(I, 0)
    b.threadblock(1, recv=0).recv(O, 0)
    raises(b.build(), "unmatched send: rank 0 tb 0 step 2 (s)", "to rank 1 on channel 0", nslots=2)


def test_race_without_dependency_in_place():
    p = allreduce2(dep=(1,))  # rank 0's receive may overwrite what its send still reads
    verify(p, inplace=False)  # out of place input and output are distinct
    raises(p, "data race on rank 0 output chunk 0", "rank 0 tb 1 step 0 (rrc) writes it",
           "rank 0 tb 0 step 0 (s) which reads it", inplace=True)


def test_write_write_race_in_scratch():
    b = ProgramBuilder("ww", "allreduce", 1, 1)
    b.threadblock(0).copy(I, 0, S, 0)
    b.threadblock(0).copy(I, 0, S, 0)
    b.threadblock(0).copy(I, 0, O, 0)
    raises(b.build(), "data race on rank 0 scratch chunk 0", "rank 0 tb 1 step 0 (cpy) writes it",
           "rank 0 tb 0 step 0 (cpy) which writes it too")


def test_transitive_ordering_through_messages_is_not_a_race():
    # rank 0: tb0 sends input to 1; rank 1 sends it back; tb1 of rank 0 receives it and
    # then overwrites the input chunk tb0 read: ordered through the round trip.
    b = ProgramBuilder("rt", "allreduce", 2, 1)
    b.threadblock(0, send=1).send(I, 0)
    t = b.threadblock(1, send=0, recv=0)
    t.recv_reduce_copy(I, 0, O, 0)
    t.send(O, 0)
    b.threadblock(0, recv=1).recv(O, 0)
    p = b.build()
    verify(p, inplace=True)
    verify(p, inplace=False)


def test_chunk_class_violation():
    b = ProgramBuilder("cc", "allgather", 1, 2)  # k = 2 chunks per block
    tb = b.threadblock(0)
    tb.copy(I, 0, O, 1)
    tb.copy(I, 1, O, 0)
    raises(b.build(), "rank 0 tb 0 step 0 (cpy) writes rank 0 output chunk 1", "chunk class",
           "wrong for counts not divisible by k")


def test_chunk_class_free_in_scratch():
    b = ProgramBuilder("cs", "allgather", 1, 2)
    tb = b.threadblock(0)
    tb.copy(I, 0, S, 1)
    tb.copy(I, 1, S, 0)
    tb.copy(S, 1, O, 0)
    tb.copy(S, 0, O, 1)
    verify(b.build(), inplace=False)


def test_out_of_place_must_not_write_input():
    b = ProgramBuilder("wi", "allreduce", 1, 1)
    tb = b.threadblock(0)
    tb.reduce(I, 0, I, 0)
    tb.copy(I, 0, O, 0)
    raises(b.build(), "rank 0 tb 0 step 0 (re) writes rank 0 input chunk 0 in out-of-place mode")


def test_uninitialised_data_reaches_output():
    b = ProgramBuilder("un", "allreduce", 1, 1)
    b.threadblock(0).copy(S, 0, O, 0)
    raises(b.build(), "rank 0 output chunk 0 holds <uninitialised: rank 0 scratch chunk 0 read by "
           "rank 0 tb 0 step 0 (cpy)")


def test_barrier_union_semantics():
    # a 4-rank dissemination barrier that forgets its second round: rank r hears only r-1
    b = ProgramBuilder("bar", "barrier", 4, 1, outofplace=False)
    for r in range(4):
        tb = b.threadblock(r, send=(r + 1) % 4, recv=(r - 1) % 4)
        tb.send(I, 0)
        tb.recv_reduce_copy(I, 0, I, 0)
    raises(b.build(), "rank 0 input chunk 0", "missing: 1:0, 2:0", inplace=True)


def test_undeclared_mode_and_invalid_program():
    b = ProgramBuilder("ip", "allreduce", 1, 1, outofplace=False)
    b.threadblock(0).reduce(I, 0, I, 0)
    p = b.build()
    assert p.ranks[0].o_chunks == 0
    raises(p, "does not declare out-of-place support")
    raises(p, "counted twice", inplace=True)
    bad = dataclasses.replace(p, nchunksperloop=0)
    raises(bad, "invalid program")


def test_builder_rejects_cross_rank_dependency():
    b = ProgramBuilder("x", "allreduce", 2, 1)
    ref = b.threadblock(0).copy(I, 0, O, 0)
    with pytest.raises(InvalidArgument, match="another rank"):
        b.threadblock(1).copy(I, 0, O, 0, deps=[ref])


def test_builder_sizes():
    b = ProgramBuilder("sz", "alltoall", 3, 6)
    b.threadblock(1).copy(I, 0, S, 4)
    p = b.build()
    assert (p.ranks[1].i_chunks, p.ranks[1].o_chunks, p.ranks[1].s_chunks) == (6, 6, 5)
    assert (p.ranks[0].i_chunks, p.ranks[0].o_chunks, p.ranks[0].s_chunks) == (6, 6, 0)


def test_verify_all_reports_parameters():
    def build(n: int, *, nchannels: int = 1, root: int = 0) -> Program:
        b = ProgramBuilder("bc", "broadcast", n, 1, root=root)
        b.threadblock(root).copy(I, 0, O, 0)
        return b.build()

    assert verify_all(build, [1]) == 2
    with pytest.raises(VerificationError, match="nranks=2 nchannels=1 root=0 in-place"):
        verify_all(build, [2])


@pytest.mark.skipif(not os.path.isdir(XML_DIR), reason=f"{XML_DIR} (shared MSCCL XML examples) is absent")
def test_dependencies_matter_for_a_real_program():
    from pyxccl.ir.msccl_xml import load

    path = os.path.join(XML_DIR, "ar_hier_12_Simple.xml")
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent")
    p = load(path)
    verify(p, inplace=True)
    for rp in p.ranks:
        for tb in rp.tbs:
            tb.steps = [dataclasses.replace(st, deps=()) for st in tb.steps]
    raises(p, "data race", inplace=True)
