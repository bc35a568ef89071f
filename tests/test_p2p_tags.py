"""Tagged point-to-point: matching by (peer, tag) in posting order, progress beside the call queue.

Unit tests drive the lanes of :mod:`pyxccl.runtime.host.p2p` over an in-memory connector pair;
the jobs run on rank processes: tags received out of order, a receive posted before the send
on every rank, a ring of irecv/isend on 3 ranks, a pending receive that holds up neither
other tags nor a collective, same-tag order, size mismatches and timeouts that name the
peer and the tag.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pytest
from harness import compare, expect_raises, fresh_comm, make_block, sentinel

import pyxccl
from pyxccl.runtime.host.p2p import HEADER, P2POp, RecvLane, SendLane

MiB = 1 << 20


# ---------------------------------------------------------------------------- lanes, in memory

class _Pipe:
    """A connector pair moving slots through a deque (``nslots`` in flight)."""

    def __init__(self, nslots: int = 4, slot_bytes: int = 64):
        self.q: deque[np.ndarray] = deque()
        self.nslots, self.slot_bytes = nslots, slot_bytes
        self.send, self.recv = _Send(self), _Recv(self)


class _Send:
    remote_min_bytes = 0

    def __init__(self, pipe: _Pipe):
        self.pipe, self.nslots = pipe, pipe.nslots
        self._slot = np.zeros(pipe.slot_bytes, np.uint8)

    def ready(self) -> bool:
        return len(self.pipe.q) < self.nslots

    def buffer(self) -> np.ndarray:
        return self._slot

    def post(self, nbytes: int) -> None:
        self.pipe.q.append(self._slot[:nbytes].copy())

    def remote_pending(self) -> bool:
        return False


class _Recv:
    remote_read = False

    def __init__(self, pipe: _Pipe):
        self.pipe = pipe

    def ready(self) -> bool:
        return bool(self.pipe.q)

    def buffer(self) -> np.ndarray:
        return self.pipe.q[0]

    def release(self) -> None:
        self.pipe.q.popleft()


def _op(kind: str, tag: int, data: np.ndarray) -> P2POp:
    return P2POp(kind, 1, tag, data, data, None, None, f"{kind} of {data.nbytes} B")


def _run(sender: SendLane, receiver: RecvLane, until: list[P2POp], finished: list[P2POp], steps: int = 10000) -> None:
    for _ in range(steps):
        moved = sender.advance(finished) | receiver.advance(finished)
        if all(op in finished for op in until):
            return
        if not moved:
            break
    raise AssertionError(f"stuck: finished {[op.what for op in finished]}")


def test_lanes_match_tags_out_of_order_and_take_unexpected_messages():
    pipe = _Pipe()
    s, r = SendLane(1, pipe.slot_bytes), RecvLane(1, pipe.recv)
    s.conn = pipe.send
    msgs = {tag: np.arange(n, dtype=np.uint8) + tag for tag, n in ((1, 10), (2, 300), (3, 0), (4, 47))}
    sends = [_op("send", tag, m) for tag, m in msgs.items()]
    s.queue.extend(sends)
    got = {tag: np.full(m.size, 255, np.uint8) for tag, m in msgs.items()}
    finished: list[P2POp] = []
    last = _op("recv", 4, got[4])
    r.post(last, finished)  # waits for tag 4: tags 1-3 arrive first and are kept
    _run(s, r, [last], finished)
    assert sorted(r.unexpected) == [1, 2, 3]
    later = [_op("recv", tag, got[tag]) for tag in (3, 2, 1)]
    for op in later:
        r.post(op, finished)
    assert all(op in finished and op.error is None for op in later + sends)
    for tag, m in msgs.items():
        assert (got[tag] == m).all(), tag
    assert not r.unexpected and r.cur is None


def test_lanes_a_receive_posted_midway_takes_the_rest_directly_and_same_tags_keep_their_order():
    pipe = _Pipe(nslots=2)
    s, r = SendLane(1, pipe.slot_bytes), RecvLane(1, pipe.recv)
    s.conn = pipe.send
    big, small = np.arange(1000, dtype=np.uint16).view(np.uint8), np.arange(5, dtype=np.uint8)
    s.queue.extend([_op("send", 7, big), _op("send", 7, small), _op("send", 8, small + 1)])
    finished: list[P2POp] = []
    r.post(_op("recv", 9, np.zeros(1, np.uint8)), finished)  # something posted: the lane reads
    s.advance(finished)
    r.advance(finished)  # the big message started arriving unexpected
    assert r.cur is not None and r.cur.arrival is not None and 0 < r.cur.off < big.size
    out_big, out_small = np.zeros_like(big), np.zeros_like(small)
    first, second = _op("recv", 7, out_big), _op("recv", 7, out_small)
    r.post(first, finished)
    r.post(second, finished)
    assert r.cur.op is first  # the rest of the message goes straight into the receive
    _run(s, r, [first, second], finished)
    assert (out_big == big).all() and (out_small == small).all()


def test_lanes_a_size_mismatch_fails_that_receive_only():
    pipe = _Pipe()
    s, r = SendLane(1, pipe.slot_bytes), RecvLane(1, pipe.recv)
    s.conn = pipe.send
    s.queue.extend([_op("send", 3, np.ones(100, np.uint8)), _op("send", 4, np.arange(16, dtype=np.uint8))])
    finished: list[P2POp] = []
    bad, good = _op("recv", 3, np.zeros(64, np.uint8)), _op("recv", 4, np.zeros(16, np.uint8))
    r.post(bad, finished)
    r.post(good, finished)
    _run(s, r, [bad, good], finished)
    assert isinstance(bad.error, pyxccl.MismatchError)
    assert "sent 100 bytes" in str(bad.error) and "expects 64" in str(bad.error) and "tag 3" in str(bad.error)
    assert good.error is None and (good.data == np.arange(16)).all()
    assert HEADER.size == 16


# ---------------------------------------------------------------------------- jobs

def payload(src: int, dst: int, tag: int, count: int, dtype: str = "float32") -> np.ndarray:
    return make_block(11, src, dst * 1000 + tag, dtype, count)


SIZES = {1: 7, 2: 3 * MiB // 4 + 5, 3: 0, 4: 1001, 5: MiB // 2 + 1}  # tag -> float32 elements


def job_tags_out_of_order(comm) -> list[str]:
    """Pairs: the even rank sends tags 1..5 in order (blocking), the odd one receives them 5..1."""
    me, n = comm.rank, comm.size
    partner = me ^ 1
    if partner >= n:
        return []
    f: list[str] = []
    if me % 2 == 0:
        for tag, count in SIZES.items():
            comm.send(payload(me, partner, tag, count), partner, tag=tag)
    else:
        for tag in sorted(SIZES, reverse=True):
            y = sentinel("float32", SIZES[tag])
            comm.recv(y, partner, tag=tag)
            f += compare(y, payload(partner, me, tag, SIZES[tag]), "bits", f"tag {tag} from {partner}")
    recs = [r for r in comm.pending_ops() if r["kind"] == "p2p"][-len(SIZES):]
    tags = [r["tag"] for r in recs]
    want = list(SIZES) if me % 2 == 0 else sorted(SIZES, reverse=True)
    if tags != want or any(r["state"] != "done" for r in recs):
        f.append(f"flight records: tags {tags} (expected {want}), states {[r['state'] for r in recs]}")
    return f


def job_recv_posted_first_everywhere(comm, count: int) -> list[str]:
    """Every rank posts an async recv from its partner, then sends to it blocking (MPI: fine; NCCL: a hang)."""
    me, n = comm.rank, comm.size
    partner = me ^ 1
    if partner >= n:
        return []
    y = sentinel("float32", count)
    w = comm.recv(y, partner, tag=5, async_op=True)
    comm.send(payload(me, partner, 5, count), partner, tag=5)
    w.wait(60)
    return compare(y, payload(partner, me, 5, count), "bits", f"{count} x float32 from {partner}")


def job_ring(comm, count: int, blocking_send: bool) -> list[str]:
    """irecv from the previous rank, then isend (or a blocking send) to the next; tags are the sender's rank."""
    me, n = comm.rank, comm.size
    nxt, prv = (me + 1) % n, (me - 1) % n
    y = sentinel("float32", count)
    wr = comm.recv(y, prv, tag=100 + prv, async_op=True)
    x = payload(me, nxt, 100 + me, count)
    if blocking_send:
        comm.send(x, nxt, tag=100 + me)
    else:
        comm.send(x, nxt, tag=100 + me, async_op=True).wait(60)
    wr.wait(60)
    return compare(y, payload(prv, me, 100 + prv, count), "bits", f"ring: {count} from {prv}")


def job_pending_recv_holds_nothing_up(comm) -> list[str]:
    """A receive waiting for tag 7 holds up neither a collective nor messages of tag 8 with the same peer."""
    me, n = comm.rank, comm.size
    nxt, prv = (me + 1) % n, (me - 1) % n
    f: list[str] = []
    late = sentinel("int32", 3)
    w7 = comm.recv(late, prv, tag=7, async_op=True)
    x = np.full(1000, me + 1, np.float32)
    comm.all_reduce(x)  # the pending receive must not hold it up
    if not (x == n * (n + 1) / 2).all():
        f.append(f"all_reduce next to a pending recv gave {x[:3]}")
    ws = comm.send(np.full(5, me, np.int64), nxt, tag=8, async_op=True)
    got8 = np.zeros(5, np.int64)
    comm.recv(got8, prv, tag=8)
    ws.wait(60)
    if not (got8 == prv).all():
        f.append(f"tag 8 from {prv} gave {got8}")
    if w7.is_completed():
        f.append("the recv of tag 7 completed before anything was sent with tag 7")
    comm.barrier()  # nobody sends tag 7 before every rank looked (a collective, the recv still pending)
    comm.send(np.full(3, 70 + me, np.int32), nxt, tag=7)
    w7.wait(60)
    if not (late == 70 + prv).all():
        f.append(f"tag 7 from {prv} gave {late}")
    return f


def job_same_tag_in_order(comm) -> list[str]:
    """Four messages of one tag, arriving before their receives are posted (behind another tag), keep order."""
    me, n = comm.rank, comm.size
    partner = me ^ 1
    if partner >= n:
        return []
    sizes = (10, 200001, 30, 0)
    if me % 2 == 0:
        works = [comm.send(payload(me, partner, i, c), partner, tag=5, async_op=True) for i, c in enumerate(sizes)]
        comm.send(np.ones(1, np.float32), partner, tag=6)
        for w in works:
            w.wait(60)
        return []
    comm.recv(np.zeros(1, np.float32), partner, tag=6)  # tag 5's messages arrived first: kept
    ys = [sentinel("float32", c) for c in sizes]
    ws = [comm.recv(y, partner, tag=5, async_op=True) for y in ys]
    f: list[str] = []
    for i, (w, y) in enumerate(zip(ws, ys)):
        w.wait(60)
        f += compare(y, payload(partner, me, i, sizes[i]), "bits", f"message #{i} of tag 5")
    return f


def job_errors_name_peer_and_tag(comm) -> list[str]:
    """Size mismatches and timeouts on a fresh communicator (ranks 0 and 1); the peers stay usable."""
    me = comm.rank
    c = fresh_comm(comm, timeout=30)
    f: list[str] = []
    try:
        # a send nobody receives (rank 1 never posted a receive from rank 0: no connection yet),
        # then a recv nobody sends to: timeouts that name the peer and the tag
        if me == 0:
            t0 = time.monotonic()
            f += expect_raises(pyxccl.CollectiveTimeout, lambda: c.send(np.ones(MiB, np.uint8), 1, tag=11, timeout=0.5),
                               "send never received", contains=["rank 1", "tag 11"])
            if time.monotonic() - t0 > 5:
                f.append(f"the send's timeout of 0.5 s took {time.monotonic() - t0:.1f} s")
        c.barrier()
        if me == 1:
            f += expect_raises(pyxccl.CollectiveTimeout, lambda: c.recv(np.zeros(4, np.uint8), 0, tag=9, timeout=0.5),
                               "recv never sent", contains=["rank 0", "tag 9"])
        c.barrier()
        if me == 0:
            c.send(np.ones(100, np.uint8), 1, tag=3)
        elif me == 1:
            f += expect_raises(pyxccl.MismatchError, lambda: c.recv(np.zeros(64, np.uint8), 0, tag=3),
                               "recv of 64 B for a 100 B message", contains=["100", "64", "tag 3", "rank 0"])
        c.barrier()
        # both directions still work
        if me in (0, 1):
            other = 1 - me
            y = np.zeros(16, np.int32)
            w = c.recv(y, other, tag=12, async_op=True)
            c.send(np.arange(16, dtype=np.int32) + me, other, tag=12)
            w.wait(30)
            if not (y == np.arange(16) + other).all():
                f.append(f"after the errors, tag 12 from {other} gave {y}")
        bad_tags = (True, 1.5, 1 << 63, -(1 << 63) - 1, "1")
        for tag in bad_tags:
            f += expect_raises(pyxccl.InvalidArgument, lambda t=tag: c.send(np.ones(1), (me + 1) % c.size, tag=t),
                               f"send with tag={tag!r}", contains=["tag"])
    finally:
        c.destroy()
    return f


def job_cancel_a_pending_recv(comm) -> list[str]:
    """A receive cancelled before its message came fails with Aborted; the message goes to the next one."""
    me = comm.rank
    f: list[str] = []
    if me == 0:
        old = np.zeros(4, np.int32)
        w = comm.recv(old, 1, tag=20, async_op=True)
        w.cancel()
        f += expect_raises(pyxccl.Aborted, lambda: w.wait(30), "a cancelled recv", contains=["cancelled", "tag 20"])
    comm.barrier()
    if me == 1:
        comm.send(np.arange(4, dtype=np.int32), 0, tag=20)
    elif me == 0:
        y = np.zeros(4, np.int32)
        comm.recv(y, 1, tag=20)
        if not (y == np.arange(4)).all() or (old != 0).any():
            f.append(f"after the cancel: the next recv got {y}, the cancelled one holds {old}")
    return f


# ---------------------------------------------------------------------------- tests

@pytest.mark.parametrize("nranks", (2, 4))
def test_tags_received_out_of_order(pool, nranks):
    pool(nranks).check(job_tags_out_of_order)


@pytest.mark.parametrize("count", (7, 5 * MiB // 4 + 3))
def test_recv_posted_before_send_on_both_ranks(pool, count):
    pool(2).check(job_recv_posted_first_everywhere, count=count)


@pytest.mark.parametrize("blocking_send", (False, True))
def test_ring_of_irecv_isend_on_3_ranks(pool, blocking_send):
    p = pool(3)
    p.check(job_ring, count=5, blocking_send=blocking_send)
    p.check(job_ring, count=MiB + 1, blocking_send=blocking_send)


@pytest.mark.parametrize("nranks", (2, 3))
def test_a_pending_recv_holds_up_no_collective_and_no_other_tag(pool, nranks):
    pool(nranks).check(job_pending_recv_holds_nothing_up)


def test_same_tag_keeps_posting_order(pool):
    pool(2).check(job_same_tag_in_order)


def test_errors_name_peer_and_tag(pool):
    pool(2).check(job_errors_name_peer_and_tag)


def test_cancel_a_pending_recv(pool):
    pool(2).check(job_cancel_a_pending_recv)


@pytest.mark.parametrize("transport", ("socket", "hosts:AB"))
def test_tags_over_sockets(pool, transport):
    p = pool(2, transport)
    p.check(job_tags_out_of_order)
    p.check(job_recv_posted_first_everywhere, count=MiB + 3)
    p.check(job_pending_recv_holds_nothing_up)
