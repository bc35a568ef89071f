"""Bad arguments raise pyxccl.InvalidArgument naming the argument, before anything is sent.

Only rank 0 makes the bad calls (the other ranks make none); afterwards every rank runs
correct collectives and point-to-point calls and checks them, which proves that nothing
was sent by the rejected calls and nothing hangs.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import pyxccl
from harness import Case, expect_raises, run_cases


def _bad_calls(comm) -> list[tuple[str, str, object]]:
    """(label, the name the message must contain, call) for rank 0."""
    N = comm.size
    f32 = np.arange(12, dtype=np.float32)
    i32 = np.arange(12, dtype=np.int32)
    ro = np.zeros(12, dtype=np.float32)
    ro.flags.writeable = False
    ro_big = np.zeros(12 * N, dtype=np.float32)
    ro_big.flags.writeable = False
    big = np.zeros(12 * N, dtype=np.float32)
    calls = [
        # op / dtype
        ("premul_sum on int32 (all_reduce)", "op", lambda: comm.all_reduce(i32.copy(), op=pyxccl.premul_sum(0.5))),
        ("premul_sum on int32 (reduce)", "op", lambda: comm.reduce(i32.copy(), op=pyxccl.premul_sum(2.0))),
        ("premul_sum on uint8 (reduce_scatter)", "op",
         lambda: comm.reduce_scatter(np.zeros(N * 3, np.uint8), np.zeros(3, np.uint8), op=pyxccl.premul_sum(0.5))),
        ("unknown op name", "op", lambda: comm.all_reduce(f32.copy(), op="xor")),
        ("op of a wrong type", "op", lambda: comm.all_reduce(f32.copy(), op=3)),
        ("premul_sum scalar not a number", "premul_sum", lambda: pyxccl.premul_sum("half")),
        ("input not an array", "input", lambda: comm.all_reduce("not an array")),
        ("input None", "input", lambda: comm.all_reduce(None)),
        # contiguity
        ("non-contiguous input", "input", lambda: comm.all_reduce(f32[::2])),
        ("non-contiguous output", "output", lambda: comm.all_reduce(f32[:6].copy(), np.zeros(12, np.float32)[::2])),
        ("Fortran-order 2-D input", "input", lambda: comm.all_reduce(np.asfortranarray(np.zeros((3, 4), np.float32)))),
        ("non-contiguous send buffer", "buf", lambda: comm.send(f32[::3], (comm.rank + 1) % N)),
        ("non-contiguous recv buffer", "buf", lambda: comm.recv(f32.copy()[::3], (comm.rank + 1) % N)),
        # sizes
        ("all_reduce output too small", "output", lambda: comm.all_reduce(f32, np.zeros(11, np.float32))),
        ("broadcast output too small", "output", lambda: comm.broadcast(f32, np.zeros(11, np.float32))),
        ("reduce output too large", "output", lambda: comm.reduce(f32, np.zeros(13, np.float32))),
        ("all_gather output not nranks x count", "output",
         lambda: comm.all_gather(f32, np.zeros(12 * N + 1, np.float32))),
        ("all_gather without output", "output", lambda: comm.all_gather(f32, None)),
        ("reduce_scatter input not nranks x count", "input",
         lambda: comm.reduce_scatter(np.zeros(12 * N + 1, np.float32), np.zeros(12, np.float32))),
        ("all_to_all output size differs", "output",
         lambda: comm.all_to_all(np.zeros(12 * N, np.float32), np.zeros(12 * N + N, np.float32))),
        ("gather output wrong size on the root", "output", lambda: comm.gather(f32, np.zeros(12 * N - 1, np.float32))),
        ("gather without output on the root", "output", lambda: comm.gather(f32, None, root=0)),
        ("scatter input wrong size on the root", "input",
         lambda: comm.scatter(np.zeros(12 * N + 1, np.float32), np.zeros(12, np.float32))),
        ("scatter without input on the root", "input", lambda: comm.scatter(None, np.zeros(12, np.float32))),
        # dtype mismatch
        ("all_reduce output dtype differs", "output", lambda: comm.all_reduce(f32, np.zeros(12, np.float64))),
        ("broadcast output dtype differs", "output", lambda: comm.broadcast(f32, np.zeros(12, np.int32))),
        ("all_gather output dtype differs", "output", lambda: comm.all_gather(i32, np.zeros(12 * N, np.int64))),
        ("reduce_scatter output dtype differs", "output",
         lambda: comm.reduce_scatter(np.zeros(12 * N, np.float32), np.zeros(12, np.float16))),
        ("all_to_all output dtype differs", "output",
         lambda: comm.all_to_all(np.zeros(12 * N, np.int8), np.zeros(12 * N, np.uint8))),
        # read-only buffers
        ("read-only output", "output", lambda: comm.all_reduce(f32, ro)),
        ("read-only buffer in place", "input", lambda: comm.all_reduce(ro)),
        ("read-only broadcast buffer in place", "input", lambda: comm.broadcast(ro, root=0)),
        ("read-only all_gather output", "output", lambda: comm.all_gather(f32, ro_big)),
        ("read-only reduce_scatter input in place", "input", lambda: comm.reduce_scatter(ro_big)),
        ("read-only recv buffer", "buf", lambda: comm.recv(ro, (comm.rank + 1) % N)),
        # partial overlap
        ("output overlapping input partially", "output", lambda: comm.all_reduce(big[0:12], big[6:18])),
        # roots and peers
        ("broadcast root = nranks", "root", lambda: comm.broadcast(f32, root=N)),
        ("broadcast root = -1", "root", lambda: comm.broadcast(f32, root=-1)),
        ("reduce root = nranks", "root", lambda: comm.reduce(f32.copy(), root=N)),
        ("gather root = nranks + 3", "root", lambda: comm.gather(f32, big, root=N + 3)),
        ("scatter root = -2", "root", lambda: comm.scatter(big, f32.copy(), root=-2)),
        ("root of a wrong type", "root", lambda: comm.broadcast(f32, root=1.0)),
        ("send peer = nranks", "peer", lambda: comm.send(f32, N)),
        ("send peer = -1", "peer", lambda: comm.send(f32, -1)),
        ("recv peer = nranks", "peer", lambda: comm.recv(f32.copy(), N)),
        ("peer of a wrong type", "peer", lambda: comm.send(f32, "1")),
        ("transport_of peer out of range", "peer", lambda: comm.transport_of(N)),
    ]
    if N > 1:  # every size is a multiple of 1
        calls += [
            ("all_gather in place, output not a multiple of nranks", "output",
             lambda: comm.all_gather(None, np.zeros(12 * N + 1, np.float32))),
            ("reduce_scatter in place, input not a multiple of nranks", "input",
             lambda: comm.reduce_scatter(np.zeros(12 * N + 1, np.float32))),
            ("all_to_all input not a multiple of nranks", "input",
             lambda: comm.all_to_all(np.zeros(12 * N + 1, np.float32), np.zeros(12 * N + 1, np.float32))),
            ("all_gather in place with input not output's block of this rank", "input",
             lambda: comm.all_gather(big[12:24], big)),
        ]
    # the same rejections with async_op=True: raised by the call itself, not handed to a Work
    calls += [
        ("async: premul_sum on int32", "op",
         lambda: comm.all_reduce(i32.copy(), op=pyxccl.premul_sum(0.5), async_op=True)),
        ("async: output too small", "output", lambda: comm.all_gather(f32, np.zeros(3, np.float32), async_op=True)),
        ("async: root out of range", "root", lambda: comm.reduce(f32.copy(), root=N, async_op=True)),
        ("async: peer out of range", "peer", lambda: comm.send(f32, N + 1, async_op=True)),
    ]
    return calls


def _bad_dtype_calls(comm) -> list[tuple[str, str, object]]:
    """Unsupported element types: the message must say which argument has it."""
    N = comm.size
    return [
        ("unsupported dtype complex64", "input", lambda: comm.all_reduce(np.zeros(4, np.complex64))),
        ("unsupported dtype bool", "input", lambda: comm.broadcast(np.zeros(4, np.bool_))),
        ("big-endian input", "input", lambda: comm.all_reduce(np.zeros(4, ">f4"))),
        ("unsupported output dtype", "output",
         lambda: comm.all_gather(np.zeros(2, np.float32), np.zeros(2 * N, np.complex64))),
        ("unsupported recv dtype", "buf", lambda: comm.recv(np.zeros(2, np.float16).view(np.int16).astype(">i2"), 0)),
    ]


def job_bad_args_on_rank0(comm, which: str = "main") -> list[str]:
    N, me = comm.size, comm.rank
    failures: list[str] = []
    if me == 0:
        for label, name, call in (_bad_calls(comm) if which == "main" else _bad_dtype_calls(comm)):
            failures += expect_raises(pyxccl.InvalidArgument, call, label, contains=[name])
        # inside a group the bad call raises at once, and the group's recorded calls do not run
        dummy = np.zeros(4, np.float32)

        def grouped():
            with pyxccl.group():
                comm.send(dummy, N)

        failures += expect_raises(pyxccl.InvalidArgument, grouped, "bad peer inside a group", contains=["peer"])
        # invalid communicator arguments are rejected before any network traffic
        fake = pyxccl.UniqueId(b"\0" * 16, "127.0.0.1", 9)
        failures += expect_raises(pyxccl.InvalidArgument, lambda: pyxccl.Communicator(0, fake, 0), "nranks=0",
                                  contains=["nranks"])
        failures += expect_raises(pyxccl.InvalidArgument, lambda: pyxccl.Communicator(2, fake, 2), "rank=nranks",
                                  contains=["rank"])
        failures += expect_raises(pyxccl.InvalidArgument, lambda: pyxccl.Communicator(2, 12345, 0), "uid an int",
                                  contains=["uid"])
    # every rank: correct calls still work and see no stray data from the rejected ones
    t0 = time.monotonic()
    cases = [Case("all_reduce", "float32", 12, "sum", seed=11),
             Case("all_reduce", "int32", 12, "max", seed=11, async_op=True),
             Case("broadcast", "float32", 12, root=N - 1, seed=11),
             Case("all_gather", "int32", 12, seed=11),
             Case("reduce_scatter", "uint8", 3, "sum", seed=11),
             Case("all_to_all", "float32", 12, seed=11),
             Case("gather", "float32", 12, root=0, seed=11),
             Case("scatter", "float32", 12, root=0, seed=11)]
    failures += run_cases(comm, cases)
    x = np.full(5, me, np.int64)
    y = np.full(5, -1, np.int64)
    with pyxccl.group():
        comm.send(x, (me + 1) % N)
        comm.recv(y, (me - 1) % N)
    if not (y == (me - 1) % N).all():
        failures.append(f"send/recv after the rejected calls received {y.tolist()}")
    if time.monotonic() - t0 > 30:
        failures.append(f"the correct calls after the rejected ones took {time.monotonic() - t0:.1f} s")
    return failures


@pytest.mark.parametrize("nranks", (1, 2, 3))
def test_invalid_arguments_raise_before_sending(pool, nranks):
    pool(nranks).check(job_bad_args_on_rank0)


@pytest.mark.parametrize("nranks", (2,))
def test_unsupported_dtypes_name_the_argument(pool, nranks):
    pool(nranks).check(job_bad_args_on_rank0, which="dtype")
