"""Work handles, split, destroy/recreate, abort and collective timeouts.

Tests that break a communicator on purpose (abort, timeouts) do it on a fresh one made
for the job (harness.fresh_comm), never on the pool's, and resynchronise the ranks on
the pool's communicator afterwards.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

import pyxccl
from harness import expect_raises, fresh_comm

F32 = np.float32


def _sum_of_ranks_plus_one(ranks) -> float:
    return float(sum(r + 1 for r in ranks))


# ---------------------------------------------------------------------------- Work

def job_work_semantics(comm) -> list[str]:
    N, me = comm.size, comm.rank
    f: list[str] = []
    total = _sum_of_ranks_plus_one(range(N))

    # a call that completes
    x = np.full(10, me + 1, F32)
    w = comm.all_reduce(x, async_op=True)
    if not isinstance(w, pyxccl.Work):
        return [f"all_reduce(async_op=True) returned {type(w).__name__}, not a pyxccl.Work"]
    if w.wait(60) is not True:
        f.append("Work.wait() did not return True")
    if not w.is_completed():
        f.append("is_completed() is False after wait()")
    if w.exception() is not None:
        f.append(f"exception() is {w.exception()!r} after a successful call")
    if w.result() is not x:
        f.append("result() is not the (in-place) buffer")
    if not (x == total).all():
        f.append(f"async all_reduce gave {x[:3]} instead of {total}")

    # a call that cannot complete yet: the other ranks join 0.5 s late
    if N > 1:
        if me != 0:
            time.sleep(0.5)
        y = np.full(10, me + 1, F32)
        w = comm.all_reduce(y, async_op=True)
        if me == 0:
            if w.is_completed():
                f.append("is_completed() is True before the other ranks joined")
            if w.exception() is not None:
                f.append("exception() is not None while the call is pending")
            f += expect_raises(pyxccl.CollectiveTimeout, lambda: w.wait(timeout=0.05),
                               "Work.wait(timeout=0.05) on a pending call", contains=["allreduce"])
        w.wait(60)
        if not (y == total).all():
            f.append(f"the late all_reduce gave {y[:3]} instead of {total}")

    # a call that fails: its Work carries the error
    c = fresh_comm(comm, timeout=1.5)
    c.all_reduce(np.ones(4, F32))  # connect first
    if me == 0 and N > 1:
        w = c.all_reduce(np.ones(4, F32), async_op=True)
        f += expect_raises(pyxccl.CollectiveTimeout, lambda: w.wait(30), "wait() on a call the others never join")
        if not w.is_completed():
            f.append("is_completed() is False after the call failed")
        if not isinstance(w.exception(), pyxccl.CollectiveTimeout):
            f.append(f"exception() is {w.exception()!r}, expected the CollectiveTimeout")
        f += expect_raises(pyxccl.CollectiveTimeout, lambda: w.result(), "result() of a failed call")
        c.abort()
        comm.barrier()
    else:
        comm.barrier()
        c.abort()

    # async calls inside a group, next to a blocking one
    a = np.full(6, me + 1, np.int32)
    b = np.full(6, me, np.int64) if me == N - 1 else np.zeros(6, np.int64)
    g_in = np.full(3, me, np.int32)
    g_out = np.full(3 * N, -1, np.int32)
    with pyxccl.group():
        w1 = comm.all_reduce(a, op="max", async_op=True)
        w2 = comm.broadcast(b, root=N - 1, async_op=True)
        comm.all_gather(g_in, g_out)
    if not (g_out == np.repeat(np.arange(N), 3)).all():
        f.append(f"blocking all_gather inside a group not complete at the group's end: {g_out}")
    for name, work in (("all_reduce", w1), ("broadcast", w2)):
        if not isinstance(work, pyxccl.Work):
            f.append(f"{name}(async_op=True) inside a group returned {type(work).__name__}")
        else:
            work.wait(60)
    if not (a == N).all():
        f.append(f"grouped async all_reduce(max) gave {a}")
    if not (b == N - 1).all():
        f.append(f"grouped async broadcast gave {b}")
    return f


def job_work_callbacks(comm) -> list[str]:
    """add_done_callback on real calls: once each, after the data is in place, calls allowed from inside."""
    N, me = comm.size, comm.rank
    f: list[str] = []
    total = _sum_of_ranks_plus_one(range(N))
    seen: list[tuple[str, float]] = []
    done = threading.Event()

    def first(w):
        seen.append(("first", float(w.result()[0])))
        y = np.full(4, me + 1, F32)
        comm.all_reduce(y)  # a blocking call of the same communicator, from the callback
        seen.append(("nested", float(y[0])))
        z = np.full(2, me + 1, F32)
        comm.all_reduce(z, async_op=True).wait()  # an async one, waited for there
        seen.append(("nested async", float(z[0])))

    x = np.full(10, me + 1, F32)
    w = comm.all_reduce(x, async_op=True)
    w.add_done_callback(first)
    w.add_done_callback(lambda _w: done.set())
    w2 = comm.all_reduce(np.ones(3, F32), async_op=True)
    w.wait(60)
    w2.wait(60)
    if not done.wait(60):
        return f + ["the callbacks of an async all_reduce did not run"]
    if seen != [("first", total), ("nested", total), ("nested async", total)]:
        f.append(f"callbacks saw {seen}, expected the reduced value {total} three times")
    late = []
    w.add_done_callback(lambda x: late.append(threading.get_ident()))
    if late != [threading.get_ident()]:
        f.append("a callback added to a finished Work did not run at once on the caller's thread")
    # p2p inside a group: each call's Work runs its callbacks when the batch finishes
    if N > 1:
        nxt, prv = (me + 1) % N, (me - 1) % N
        got = np.zeros(4, np.int32)
        flags: list[str] = []
        with pyxccl.group():
            ws = comm.send(np.full(4, me, np.int32), nxt, async_op=True)
            wr = comm.recv(got, prv, async_op=True)
        ws.add_done_callback(lambda _w: flags.append("send"))
        wr.add_done_callback(lambda x: flags.append(f"recv {int(x.result()[0])}"))
        wr.wait(60)
        ws.wait(60)
        deadline = time.monotonic() + 30
        while len(flags) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        if sorted(flags) != sorted(["send", f"recv {prv}"]):
            f.append(f"grouped send/recv callbacks gave {flags}")
    return f


# ---------------------------------------------------------------------------- split

def job_split(comm) -> list[str]:
    N, me = comm.size, comm.rank
    f: list[str] = []

    def color_of(r: int):
        return None if (N >= 5 and r == 2) else r % 2

    color = color_of(me)
    sub = comm.split(color, key=-me)  # keys reverse the order inside each group
    if color is None:
        if sub is not None:
            f.append(f"split(None) returned {sub!r}, expected None")
    else:
        members = sorted((r for r in range(N) if color_of(r) == color), key=lambda r: (-r, r))
        if sub is None:
            return f + [f"split({color}) returned None"]
        if sub.size != len(members) or sub.rank != members.index(me):
            f.append(f"split({color}, key={-me}): size {sub.size} rank {sub.rank}, expected size "
                     f"{len(members)} rank {members.index(me)} (members by key: {members})")
        x = np.full(7, me + 1, np.int64)
        sub.all_reduce(x)
        if not (x == _sum_of_ranks_plus_one(members)).all():
            f.append(f"all_reduce in group {color} gave {x[0]}, expected {_sum_of_ranks_plus_one(members)}")
        y = np.full(5, float(me), np.float32)
        sub.all_reduce(y, op="min")
        if not (y == min(members)).all():
            f.append(f"all_reduce(min) in group {color} gave {y[0]}, expected {min(members)}")
        z = np.full(3, me, np.int32)
        sub.broadcast(z, root=0)  # the member with the smallest key: the highest rank
        if not (z == members[0]).all():
            f.append(f"broadcast from the group's rank 0 gave {z[0]}, expected {members[0]}")
        sub.destroy()
    # a second split of the same communicator: everybody, same order
    dup = comm.split(0, key=0)
    if dup is None or dup.size != N or dup.rank != me:
        f.append(f"split(0, 0) gave {dup!r}")
    if dup is not None:
        x = np.full(4, me + 1, F32)
        dup.all_reduce(x)
        if not (x == _sum_of_ranks_plus_one(range(N))).all():
            f.append(f"all_reduce on the duplicate gave {x[0]}")
        dup.destroy()
    # the parent still works
    x = np.full(4, 1, np.int32)
    comm.all_reduce(x)
    if not (x == N).all():
        f.append(f"the parent's all_reduce after split gave {x[0]}")
    return f


# ---------------------------------------------------------------------------- destroy / recreate

def _allreduce_ok(c, label: str) -> list[str]:
    x = np.full(9, c.rank + 1, F32)
    c.all_reduce(x)
    want = _sum_of_ranks_plus_one(range(c.size))
    return [] if (x == want).all() else [f"{label}: all_reduce gave {x[0]}, expected {want}"]


def job_destroy_and_recreate(comm) -> list[str]:
    f: list[str] = []
    c = fresh_comm(comm)
    f += _allreduce_ok(c, "first new communicator")
    c.destroy()
    try:
        c.destroy()
    except Exception as exc:  # noqa: BLE001
        f.append(f"a second destroy() raised {exc!r}")
    f += expect_raises(pyxccl.PyxcclError, lambda: c.all_reduce(np.ones(3, F32)), "all_reduce after destroy()",
                       contains=["destroy"])
    comm.barrier()
    c2 = fresh_comm(comm)
    f += _allreduce_ok(c2, "communicator made after a destroy")
    with fresh_comm(comm) as c3:  # a second one alive at the same time, destroyed by the with block
        f += _allreduce_ok(c3, "communicator used as a context manager")
    f += expect_raises(pyxccl.PyxcclError, lambda: c3.all_reduce(np.ones(3, F32)), "all_reduce after the with block")
    f += _allreduce_ok(c2, "communicator still alive next to a destroyed one")
    c2.destroy()
    f += _allreduce_ok(comm, "the pool's communicator")
    return f


# ---------------------------------------------------------------------------- abort

def job_abort(comm) -> list[str]:
    N, me = comm.size, comm.rank
    f: list[str] = []
    x = np.ones(1000, F32)

    # 1. async calls queued behind one that cannot complete (connections already made)
    c = fresh_comm(comm, timeout=30)
    c.all_reduce(np.ones(4, F32))
    if me == 0:
        works = [c.all_reduce(x.copy(), async_op=True) for _ in range(3)] if N > 1 else []
        time.sleep(0.2)
        t0 = time.monotonic()
        c.abort()
        took = time.monotonic() - t0
        if took > 2.0:
            f.append(f"abort() took {took:.2f} s with calls pending")
        for i, w in enumerate(works):
            f += expect_raises(pyxccl.Aborted, lambda: w.wait(10), f"pending async call #{i} after abort()")
        f += expect_raises(pyxccl.Aborted, lambda: c.all_reduce(x.copy()), "all_reduce after abort()")
        f += expect_raises(pyxccl.Aborted, lambda: c.all_reduce(x.copy(), async_op=True).wait(10),
                           "async all_reduce after abort()")
        f += expect_raises(pyxccl.Aborted, lambda: c.send(x, 0), "send after abort()")
        t0 = time.monotonic()
        try:
            c.abort()
            c.destroy()
        except Exception as exc:  # noqa: BLE001
            f.append(f"a second abort() / destroy() after abort raised {exc!r}")
        if time.monotonic() - t0 > 1.0:
            f.append("a second abort() was not immediate")
    comm.barrier()
    if me != 0:
        c.abort()

    # 2. a blocking call running on another thread is woken by abort()
    if N > 1:
        c = fresh_comm(comm, timeout=30)
        c.all_reduce(np.ones(4, F32))
        if me == 0:
            outcome: list = []

            def blocking():
                try:
                    c.all_reduce(x.copy())
                    outcome.append("completed")
                except BaseException as exc:  # noqa: BLE001
                    outcome.append(exc)

            th = threading.Thread(target=blocking, daemon=True)
            th.start()
            time.sleep(0.3)
            t0 = time.monotonic()
            c.abort()
            th.join(5)
            if th.is_alive():
                f.append("a blocking call was still running 5 s after abort()")
            elif not isinstance(outcome[0], pyxccl.Aborted):
                f.append(f"a blocking call interrupted by abort() ended with {outcome[0]!r}, expected Aborted")
            elif time.monotonic() - t0 > 3.0:
                f.append(f"the blocking call took {time.monotonic() - t0:.1f} s to fail after abort()")
        comm.barrier()
        if me != 0:
            c.abort()

    # 3. a call still setting up its connections (nobody else called yet) fails with Aborted
    if N > 1:
        c = fresh_comm(comm, timeout=30)
        if me == 0:
            w = c.all_reduce(x.copy(), async_op=True)
            time.sleep(0.2)
            t0 = time.monotonic()
            c.abort()
            if time.monotonic() - t0 > 2.0:
                f.append(f"abort() took {time.monotonic() - t0:.2f} s during connection set-up")
            f += expect_raises(pyxccl.Aborted, lambda: w.wait(10), "a call setting up connections, after abort()")
        comm.barrier()
        if me != 0:
            c.abort()
    f += _allreduce_ok(comm, "the pool's communicator after the aborts")
    return f


# ---------------------------------------------------------------------------- timeouts

def job_timeout(comm, connected: bool) -> list[str]:
    """Every rank but the last calls all_reduce on a communicator with timeout=2; the last never does."""
    N, me = comm.size, comm.rank
    f: list[str] = []
    c = fresh_comm(comm, timeout=2)
    if connected:
        c.all_reduce(np.ones(4, F32))
    if me != N - 1:
        t0 = time.monotonic()
        label = f"all_reduce that rank {N - 1} never joins ({'connected' if connected else 'not yet connected'})"
        try:
            c.all_reduce(np.ones(1000, F32))
            f.append(f"{label}: completed")
        except pyxccl.CollectiveTimeout as exc:
            took = time.monotonic() - t0
            msg = str(exc)
            if not 1.5 <= took <= 10:
                f.append(f"{label}: raised after {took:.1f} s with timeout=2")
            if not re.search(r"wait\w*\b.*\brank \d+", msg):
                f.append(f"{label}: the message does not say which rank it waited for: {msg!r}")
            if connected and "allreduce" not in msg:
                f.append(f"{label}: the message does not name the call: {msg!r}")
        except Exception as exc:  # noqa: BLE001
            f.append(f"{label}: raised {type(exc).__name__} (expected CollectiveTimeout): {exc}")
        comm.barrier()  # a rank that aborts counts as lost to the others: all time out first
        c.abort()
    else:
        comm.barrier()
        c.abort()
    f += _allreduce_ok(comm, "the pool's communicator after the timeout")
    return f


# ---------------------------------------------------------------------------- tests

@pytest.mark.parametrize("nranks", (1, 2, 3))
def test_work_semantics(pool, nranks):
    pool(nranks).check(job_work_semantics)


@pytest.mark.parametrize("nranks", (1, 2, 3))
def test_work_callbacks(pool, nranks):
    pool(nranks).check(job_work_callbacks)


@pytest.mark.parametrize("nranks", (2, 4, 5))
def test_split_into_groups(pool, nranks):
    pool(nranks).check(job_split)


@pytest.mark.parametrize("nranks", (1, 3))
def test_destroy_then_new_communicator(pool, nranks):
    pool(nranks).check(job_destroy_and_recreate)


@pytest.mark.parametrize("nranks", (1, 2, 3))
def test_abort(pool, nranks):
    pool(nranks).check(job_abort)


@pytest.mark.parametrize("connected", (True, False), ids=("connected", "connecting"))
@pytest.mark.parametrize("nranks", (2, 3))
def test_collective_timeout(pool, nranks, connected):
    pool(nranks).check(job_timeout, connected=connected)


@pytest.mark.parametrize("nranks", (2,))
def test_socket_life(pool, nranks):
    p = pool(nranks, "socket")
    p.check(job_work_semantics)
    p.check(job_split)
    p.check(job_destroy_and_recreate)
    p.check(job_abort)
    p.check(job_timeout, connected=True)
