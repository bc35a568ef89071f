"""Point to point: send/recv between pairs, rings inside pyxccl.group(), several messages to one
peer matched in order, sends to self, every dtype, sizes 0 / 1 / odd / several MiB, and
mismatched sizes raising an error instead of hanging."""

from __future__ import annotations

import time

import numpy as np
import pytest

import pyxccl
from harness import DTYPE_NAMES, compare, expect_raises, fresh_comm, make_block, sentinel, unchanged

MiB = 1 << 20
#: (count, dtype): empty, one byte, odd, bf16, > the slot ring (several MiB, odd), float64
SIZES = ((0, "uint8"), (1, "uint8"), (7, "float32"), (1001, "bfloat16"), (5 * MiB + 3, "uint8"),
         (3 * MiB // 8 + 1, "float64"))
SMALL_SIZES = SIZES[:4]


def payload(src: int, dst: int, tag: int, count: int, dtype: str, seed: int = 3) -> np.ndarray:
    """What ``src`` sends to ``dst`` as message ``tag``: every rank can rebuild it."""
    return make_block(seed, src, dst * 1000 + tag, dtype, count)


def _check(got: np.ndarray, src: int, dst: int, tag: int, count: int, dtype: str, label: str) -> list[str]:
    return compare(got, payload(src, dst, tag, count, dtype), "bits", label)


# ---------------------------------------------------------------------------- jobs

def job_pairs(comm, async_op: bool = False, sizes=SIZES) -> list[str]:
    """Ranks 2k and 2k+1 exchange one message of every size (even sends first); an odd last rank idles."""
    me, n = comm.rank, comm.size
    partner = me ^ 1
    if partner >= n:
        return []
    failures = []
    for i, (count, dtype) in enumerate(sizes):
        label = f"pair {me}<->{partner} {count} x {dtype} {'async' if async_op else 'sync'}"
        x = payload(me, partner, i, count, dtype)
        sent = x.copy()
        y = sentinel(dtype, count)
        order = [("send", x), ("recv", y)] if me % 2 == 0 else [("recv", y), ("send", x)]
        works = []
        for kind, buf in order:
            ret = getattr(comm, kind)(buf, partner, async_op=async_op)
            if async_op:
                if not isinstance(ret, pyxccl.Work):
                    failures.append(f"{label}: {kind}(async_op=True) returned {type(ret).__name__}")
                    return failures
                works.append(ret)
        for w in works:
            w.wait(60)
        failures += _check(y, partner, me, i, count, dtype, label)
        failures += unchanged(x, sent, f"{label}: send buffer")
    return failures


def job_ring_group(comm, sizes=SIZES, async_op: bool = False, recv_first: bool = False) -> list[str]:
    """Inside one group every rank sends to r+1 and receives from r-1 (1 rank: to and from itself)."""
    me, n = comm.rank, comm.size
    nxt, prv = (me + 1) % n, (me - 1) % n
    failures = []
    for i, (count, dtype) in enumerate(sizes):
        label = f"ring {count} x {dtype}{' async' if async_op else ''}{' recv-first' if recv_first else ''}"
        x = payload(me, nxt, i, count, dtype)
        y = sentinel(dtype, count)
        with pyxccl.group():
            if recv_first:
                wr = comm.recv(y, prv, async_op=async_op)
                ws = comm.send(x, nxt, async_op=async_op)
            else:
                ws = comm.send(x, nxt, async_op=async_op)
                wr = comm.recv(y, prv, async_op=async_op)
        if async_op:
            for w in (ws, wr):
                if not isinstance(w, pyxccl.Work):
                    return failures + [f"{label}: async_op=True inside a group returned {type(w).__name__}"]
                w.wait(60)
        failures += _check(y, prv, me, i, count, dtype, label)
    return failures


def job_both_directions(comm) -> list[str]:
    """In one group: send to next and previous, receive from previous and next (2 ranks: same peer twice)."""
    me, n = comm.rank, comm.size
    nxt, prv = (me + 1) % n, (me - 1) % n
    count, dtype = 100003, "int32"
    a = payload(me, nxt, 1, count, dtype)
    b = payload(me, prv, 2, count, dtype)
    y_prev, y_next = sentinel(dtype, count), sentinel(dtype, count)
    with pyxccl.group():
        comm.send(a, nxt)
        comm.send(b, prv)
        comm.recv(y_prev, prv)
        comm.recv(y_next, nxt)
    return (_check(y_prev, prv, me, 1, count, dtype, "from previous (its send to next)")
            + _check(y_next, nxt, me, 2, count, dtype, "from next (its send to previous)"))


def job_many_to_one_peer(comm) -> list[str]:
    """Five messages of different sizes to the same peer in one group arrive in order."""
    me, n = comm.rank, comm.size
    nxt, prv = (me + 1) % n, (me - 1) % n
    msgs = ((0, "float32"), (1, "int64"), (1000, "float16"), (300001, "uint8"), (3, "float8_e4m3"))
    ys = [sentinel(d, c) for c, d in msgs]
    with pyxccl.group():
        for i, (c, d) in enumerate(msgs):
            comm.send(payload(me, nxt, i, c, d), nxt)
        for y in ys:
            comm.recv(y, prv)
    failures = []
    for i, ((c, d), y) in enumerate(zip(msgs, ys)):
        failures += _check(y, prv, me, i, c, d, f"message #{i} ({c} x {d}) from {prv}")
    return failures


def job_self(comm) -> list[str]:
    """Send to self inside a group (twice, matched in order, next to ring traffic); outside a group it errors."""
    me, n = comm.rank, comm.size
    nxt, prv = (me + 1) % n, (me - 1) % n
    failures = []
    a, b = payload(me, me, 1, 1001, "float64"), payload(me, me, 2, 17, "uint8")
    ya, yb = sentinel("float64", 1001), sentinel("uint8", 17)
    r = payload(me, nxt, 3, 999, "int8")
    yr = sentinel("int8", 999)
    with pyxccl.group():
        comm.send(a, me)
        comm.send(r, nxt)
        comm.send(b, me)
        comm.recv(ya, me)
        comm.recv(yr, prv)  # on 1 rank this is the second send to self: the order still matches
        comm.recv(yb, me)
    failures += _check(ya, me, me, 1, 1001, "float64", "first send to self")
    failures += _check(yb, me, me, 2, 17, "uint8", "second send to self")
    failures += _check(yr, prv, me, 3, 999, "int8", "ring message next to the self sends")
    # a lone send to self outside a group cannot be matched: an error, not a hang
    t0 = time.monotonic()
    failures += expect_raises(pyxccl.PyxcclError, lambda: comm.send(a, me), "send to self outside a group")
    if time.monotonic() - t0 > 5:
        failures.append(f"send to self outside a group took {time.monotonic() - t0:.1f} s to fail")
    return failures


def job_every_dtype(comm) -> list[str]:
    me, n = comm.rank, comm.size
    nxt, prv = (me + 1) % n, (me - 1) % n
    xs = {d: payload(me, nxt, i, 7, d) for i, d in enumerate(DTYPE_NAMES)}
    ys = {d: sentinel(d, 7) for d in DTYPE_NAMES}
    with pyxccl.group():
        for d in DTYPE_NAMES:
            comm.send(xs[d], nxt)
            comm.recv(ys[d], prv)
    failures = []
    for i, d in enumerate(DTYPE_NAMES):
        failures += _check(ys[d], prv, me, i, 7, d, f"7 x {d}")
    return failures


def job_mismatch(comm, send_bytes: int, recv_bytes: int) -> list[str]:
    """Rank 0 sends ``send_bytes`` to rank 1, which receives ``recv_bytes``: an error, not a hang.

    Runs on a fresh communicator (timeout 5 s) that every rank aborts once all are done.
    """
    me = comm.rank
    c = fresh_comm(comm, timeout=5)
    failures = []
    label = f"send of {send_bytes} B received into {recv_bytes} B"
    t0 = time.monotonic()
    outcome = None
    try:
        if me == 0:
            c.send(np.ones(send_bytes, np.uint8), 1)
        elif me == 1:
            c.recv(np.zeros(recv_bytes, np.uint8), 0)
        outcome = "ok"
    except Exception as exc:  # noqa: BLE001 - classified below
        outcome = exc
    took = time.monotonic() - t0
    if me == 1:
        if outcome == "ok":
            failures.append(f"{label}: the recv completed without an error")
        elif not isinstance(outcome, (pyxccl.MismatchError, pyxccl.InvalidArgument)):
            failures.append(f"{label}: the recv raised {type(outcome).__name__} after {took:.1f} s "
                            f"(expected MismatchError or InvalidArgument): {outcome}")
    if me == 0 and outcome != "ok" and not isinstance(outcome, (pyxccl.MismatchError, pyxccl.InvalidArgument)):
        failures.append(f"{label}: the send raised {type(outcome).__name__} after {took:.1f} s: {outcome}")
    comm.barrier()  # a rank that aborts counts as lost to the others: 0 and 1 finish first
    c.abort()
    return failures


# ---------------------------------------------------------------------------- tests

NRANKS = (1, 2, 3, 4, 5, 8)


@pytest.mark.parametrize("nranks", (2, 3, 4, 5, 8))
def test_pairs_sync(pool, nranks):
    pool(nranks).check(job_pairs)


@pytest.mark.parametrize("nranks", (2, 3))
def test_pairs_async(pool, nranks):
    pool(nranks).check(job_pairs, async_op=True)


@pytest.mark.parametrize("nranks", NRANKS)
def test_ring_in_group(pool, nranks):
    p = pool(nranks)
    p.check(job_ring_group)
    p.check(job_ring_group, sizes=SMALL_SIZES, async_op=True, recv_first=True)


@pytest.mark.parametrize("nranks", NRANKS)
def test_both_directions_in_one_group(pool, nranks):
    pool(nranks).check(job_both_directions)


@pytest.mark.parametrize("nranks", NRANKS)
def test_several_sends_to_one_peer_match_in_order(pool, nranks):
    pool(nranks).check(job_many_to_one_peer)


@pytest.mark.parametrize("nranks", (1, 2, 3))
def test_send_to_self(pool, nranks):
    pool(nranks).check(job_self)


@pytest.mark.parametrize("nranks", (2, 5))
def test_every_dtype(pool, nranks):
    pool(nranks).check(job_every_dtype)


@pytest.mark.parametrize("send_bytes,recv_bytes", [(100, 64), (64, 100), (0, 16), (16, 0)])
def test_mismatched_sizes_raise(pool, send_bytes, recv_bytes):
    pool(2).check(job_mismatch, send_bytes=send_bytes, recv_bytes=recv_bytes)


@pytest.mark.parametrize("send_bytes,recv_bytes", [(MiB, MiB // 2), (MiB // 2, MiB)])
def test_mismatched_sizes_raise_at_slot_multiples(pool, send_bytes, recv_bytes):
    """Sizes that are whole multiples of the transport slot: the last slot's size cannot tell."""
    pool(3).check(job_mismatch, send_bytes=send_bytes, recv_bytes=recv_bytes)


@pytest.mark.parametrize("nranks", (2, 3))
def test_socket_p2p(pool, nranks):
    p = pool(nranks, "socket")
    p.check(job_pairs)
    p.check(job_ring_group)
    p.check(job_many_to_one_peer)
    p.check(job_both_directions)


@pytest.mark.parametrize("layout", ("AABB", "ABABA"))
def test_emulated_two_hosts_p2p(pool, layout):
    """Ranks spread over two emulated hosts (PYXCCL_HOSTID): shm inside a host, sockets across."""
    p = pool(len(layout), f"hosts:{layout}")
    p.check(job_pairs)
    p.check(job_ring_group)
    p.check(job_both_directions)
