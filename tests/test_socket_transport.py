"""The socket transport: two SocketTransports in one process, wired over 127.0.0.1."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pyxccl.errors import PeerLostError, TransportError
from pyxccl.memory.region import Region
from pyxccl.transport.base import Capability, PeerInfo, TransportContext
from pyxccl.transport.doorbell import Doorbell
from pyxccl.transport.socket import SocketTransport
from pyxccl.transport.socket.wire import chunk_range, decode_info, encode_info, frames_per_slot, make_hello

SLOT = 64 * 1024
NSLOTS = 4
SECRET = b"0123456789abcdef"
POOL = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8)  # slot contents come from here


def make_ctx(rank: int, *, slot_bytes: int = SLOT, nslots: int = NSLOTS, nstreams: int = 1,
             secret: bytes = SECRET, timeout: float = 10.0) -> TransportContext:
    peers = [PeerInfo(rank=r, host=f"host{r}", pid=0, doorbell="", hostname=f"node{r}") for r in range(2)]
    return TransportContext(rank=rank, nranks=2, comm_tag="t", peers=peers, doorbell=Doorbell.anonymous(),
                            slot_bytes=slot_bytes, nslots=nslots, timeout=timeout, address="127.0.0.1",
                            secret=secret, config=SimpleNamespace(socket_nstreams=nstreams))


class Pair:
    """Two transports (rank 0, rank 1) with connectors both ways on ``nchannels`` channels."""

    def __init__(self, nchannels: int = 2, **kw):
        self.ctx = [make_ctx(0, **kw), make_ctx(1, **kw)]
        self.tr = [SocketTransport(self.ctx[0]), SocketTransport(self.ctx[1])]
        self.send: list[list] = [[], []]  # send[r][c]: rank r's send connector to the other rank
        self.recv: list[list] = [[], []]
        self.infos: list[bytes] = []
        for c in range(nchannels):
            for r in (0, 1):
                rc, info = self.tr[1 - r].setup_recv(r, c)
                self.infos.append(info)
                self.recv[1 - r].append(rc)
                self.send[r].append(self.tr[r].connect_send(1 - r, c, info))

    def close(self) -> None:
        for t in self.tr:
            t.close(flush_timeout=0)  # an abort: tests may leave slots unreleased


@pytest.fixture
def pair():
    yield (p := Pair())
    p.close()


def pattern(pool: np.ndarray, seq: int, nbytes: int, salt: int) -> np.ndarray:
    off = (seq * 7919 + salt * 104729) % (len(pool) - nbytes + 1)
    return pool[off:off + nbytes]


def drive(bell: Doorbell, sends: list, recvs: list, sizes: list[int], pool: np.ndarray, errors: list,
          on_post=None, on_release=None, timeout: float = 15.0, check: bool = True) -> None:
    """An executor: post len(sizes) slots on every send connector, check them on every recv one."""
    try:
        nsent, nrecv, n = [0] * len(sends), [0] * len(recvs), len(sizes)
        deadline = time.monotonic() + timeout
        while min(nsent + nrecv, default=n) < n:
            seen = bell.value()
            progressed = False
            for k, conn in enumerate(sends):
                while nsent[k] < n and conn.ready():
                    seq, nbytes = nsent[k], sizes[nsent[k]]
                    if on_post:
                        on_post(conn)
                    if check:
                        conn.buffer()[:nbytes] = pattern(pool, seq, nbytes, conn.channel)
                    conn.post(nbytes)
                    nsent[k] += 1
                    progressed = True
            for k, conn in enumerate(recvs):
                while nrecv[k] < n and conn.ready():
                    seq = nrecv[k]
                    got = conn.buffer()
                    assert got.dtype == np.uint8 and len(got) == sizes[seq], (seq, len(got), sizes[seq])
                    assert not check or np.array_equal(got, pattern(pool, seq, sizes[seq], conn.channel)), seq
                    if on_release:
                        on_release(conn)
                    else:
                        conn.release()
                    nrecv[k] += 1
                    progressed = True
            if not progressed and not bell.wait(seen, deadline):
                raise TimeoutError(f"stuck: sent {nsent}, received {nrecv} of {n}")
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def run_both(p: Pair, sizes: list[int], **kw) -> None:
    errors: list = []
    threads = [threading.Thread(target=drive, args=(p.ctx[r].doorbell, p.send[r], p.recv[r], sizes, POOL, errors),
                                kwargs=kw) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads), errors


def until(cond, within: float = 2.0, what: str = "condition") -> None:
    """Poll ``cond()`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached within {within} s"
        time.sleep(0.001)


def test_socket_connectors_have_slots_only_and_say_where_they_live(pair):
    """Slots only (no direct read or write of a peer on another host); each end's slots are its
    own host memory: the sender's staging slots, the receiver's landing slots."""
    tx, rx = pair.send[0][0], pair.recv[1][0]
    for c in (tx, rx):
        assert c.capabilities == Capability.SLOTS
        assert c.remote_min_bytes == 0
    assert not rx.remote_read and tx.destination() is None
    for c in (tx, rx):
        whole = c.slot_region()
        assert whole.on_host and whole.nbytes == NSLOTS * SLOT
        assert [c.slot_region(i) for i in range(NSLOTS)] == [Region("cpu", whole.address + i * SLOT, SLOT)
                                                             for i in range(NSLOTS)]
    assert tx.slot_region().address != rx.slot_region().address
    until(tx.ready, what="a free slot")
    tx.buffer()[:4] = np.frombuffer(b"lane", np.uint8)
    tx.post(4)
    until(rx.ready, what="the slot")
    assert rx.buffer().tobytes() == b"lane" == ctypes.string_at(rx.slot_region(0).address, 4)
    rx.release()


def test_wire_chunks_cover_slot():
    for n in (0, 1, 4095, 65536, 65537, 300000, 1 << 20):
        for ns in (1, 2, 3, 4):
            ranges = [chunk_range(n, ns, j) for j in range(ns)]
            assert ranges[0][0] == 0 and max(hi for _, hi in ranges) == n
            covered = sorted((lo, hi) for lo, hi in ranges if hi > lo)
            assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
            assert frames_per_slot(n, ns) == max(1, len(covered))


def test_thousand_slots_both_ways_two_channels(pair):
    rng = np.random.default_rng(7)
    sizes = [int(x) for x in rng.integers(0, SLOT + 1, 1000)]
    sizes[:4] = [0, SLOT, 1, SLOT - 1]
    run_both(pair, sizes)


@pytest.mark.parametrize("nstreams", [2, 3])
def test_several_streams(nstreams):
    p = Pair(nchannels=1, slot_bytes=512 * 1024, nstreams=nstreams)
    try:
        rng = np.random.default_rng(nstreams)
        sizes = [int(x) for x in rng.integers(0, 512 * 1024 + 1, 200)]
        sizes[:3] = [0, 512 * 1024, 70000]
        run_both(p, sizes)
        assert all(len(s.lanes) == nstreams for s in p.send[0] + p.recv[0])
    finally:
        p.close()


def test_direct_sends_with_tiny_socket_buffers(monkeypatch):
    """Slots the executor writes itself, cut short by full socket buffers, finish in order."""
    from pyxccl.transport.socket import connectors

    monkeypatch.setattr(connectors, "DIRECT_BYTES", SLOT)
    p = Pair(nchannels=1)
    try:
        conns = p.send[0] + p.send[1]
        until(lambda: all(c.lanes for c in conns), what="attached lanes")
        for c in conns:  # (shrinking an established connection's receive buffer would stall TCP)
            c.lanes[0].sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sizes = [int(x) for x in np.random.default_rng(5).integers(0, SLOT + 1, 300)]
        run_both(p, sizes)
    finally:
        p.close()


def test_credits_bound_slots_in_flight(pair):
    lock = threading.Lock()
    released = {c: 0 for c in pair.recv[1]}
    posted = {c: 0 for c in pair.send[0]}
    peer_of = dict(zip(pair.send[0], pair.recv[1]))
    worst = [0]

    def on_post(conn):
        with lock:
            inflight = posted[conn] - released[peer_of[conn]]
        assert inflight < NSLOTS, f"{inflight} slots in flight before a post"
        worst[0] = max(worst[0], inflight + 1)
        posted[conn] += 1

    def on_release(conn):
        with lock:  # the credit leaves while the count already includes it
            released[conn] += 1
            conn.release()
            if released[conn] % 50 == 0:
                time.sleep(0.01)  # a slow consumer now and then: the sender must stall, not overrun

    sizes = [int(x) for x in np.random.default_rng(3).integers(0, SLOT + 1, 300)]
    errors: list = []
    t = threading.Thread(target=drive, args=(pair.ctx[1].doorbell, [], pair.recv[1], sizes, POOL, errors),
                         kwargs={"on_release": on_release})
    t.start()
    drive(pair.ctx[0].doorbell, pair.send[0], [], sizes, POOL, errors, on_post=on_post)
    t.join(20)
    assert not errors, errors
    assert worst[0] == NSLOTS


def test_sender_stalls_without_releases(pair):
    s, r = pair.send[0][0], pair.recv[1][0]
    for k in range(NSLOTS):
        until(s.ready)
        s.buffer()[:8] = k
        s.post(8)
    time.sleep(0.1)
    assert not s.ready() and s.in_flight() == NSLOTS
    until(r.ready)
    assert list(r.buffer()) == [0] * 8
    r.release()
    until(s.ready, what="the credit's return")


def wait_raises(conn, exc_type, within: float = 1.0) -> tuple[float, Exception]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            conn.ready()
        except exc_type as exc:
            return time.monotonic() - t0, exc
        time.sleep(0.005)
    raise AssertionError(f"{conn.who}: ready() did not raise {exc_type.__name__} within {within} s")


def test_peer_close_raises_peer_lost(pair):
    run_both(pair, [1000] * 20)
    pair.tr[1].close()
    pair.tr[1].close()  # idempotent
    for conn in pair.send[0] + pair.recv[0]:
        elapsed, exc = wait_raises(conn, PeerLostError)
        assert "rank 1" in str(exc) and "node1" in str(exc)
    with pytest.raises(PeerLostError):
        pair.send[0][0].post(0)
    with pytest.raises(TransportError):  # the closed side's own connectors fail too
        pair.send[1][0].ready()


def test_received_slots_survive_peer_close(pair):
    s, r = pair.send[0][0], pair.recv[1][0]
    s.buffer()[:3] = [1, 2, 3]
    s.post(3)
    until(r.ready)
    t0 = time.monotonic()
    pair.tr[0].close(flush_timeout=0.2)  # the slot is never released: flushing gives up
    assert 0.2 <= time.monotonic() - t0 < 1
    time.sleep(0.1)
    assert r.ready() and list(r.buffer()) == [1, 2, 3]
    r.release()  # the sender is gone: no error here, the loss shows at the next ready()
    wait_raises(r, PeerLostError)


def test_close_flushes_posted_slots(pair):
    """A rank that posts its last slots and closes at once: the peer still gets them all."""
    sizes = [SLOT] * 40
    errors: list = []
    t = threading.Thread(target=drive, args=(pair.ctx[1].doorbell, [], pair.recv[1][:1], sizes, POOL, errors))
    t.start()
    drive(pair.ctx[0].doorbell, pair.send[0][:1], [], sizes, POOL, errors)
    pair.tr[0].close()  # right after the last post
    t.join(10)
    assert not errors, errors
    wait_raises(pair.recv[1][0], PeerLostError)


_CHILD = """
import sys, time
from test_socket_transport import make_ctx
from pyxccl.transport.socket import SocketTransport
tr = SocketTransport(make_ctx(1))
conn, info = tr.setup_recv(0, 0)
print(info.hex(), flush=True)
while not conn.ready():
    time.sleep(0.001)
print("got", flush=True)
time.sleep(60)
"""


def test_killed_process_raises_peer_lost():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, env=env)
    tr = SocketTransport(make_ctx(0))
    try:
        conn = tr.connect_send(1, 0, bytes.fromhex(child.stdout.readline().strip()))
        for _ in range(NSLOTS):  # fill every credit: the child consumes nothing after the first
            until(conn.ready, 5)
            conn.post(SLOT)
        assert child.stdout.readline().strip() == "got"
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        elapsed, exc = wait_raises(conn, PeerLostError)
        assert "rank 1" in str(exc)
    finally:
        child.kill()
        child.wait()
        tr.close()


def test_close_is_bounded_with_busy_traffic(pair):
    errors: list = []
    t = threading.Thread(target=drive, args=(pair.ctx[0].doorbell, pair.send[0], [], [SLOT] * 100000,
                                             np.zeros(3 * SLOT, np.uint8), errors), kwargs={"timeout": 5})
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    pair.tr[1].close()
    pair.tr[0].close()
    assert time.monotonic() - t0 < 3
    t.join(5)
    assert not t.is_alive() and errors and isinstance(errors[0], TransportError)


def test_strangers_do_not_disturb(pair):
    messages: list[str] = []
    capture = logging.Handler(logging.WARNING)
    capture.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("pyxccl")
    logger.addHandler(capture)
    address, port, token = decode_info(pair.infos[0])  # rank 1's listener
    strangers = []
    try:
        def attack():
            for payload in (lambda nonce: b"GET / HTTP/1.0\r\n\r\n", lambda nonce: b"\x00" * 200,
                            lambda nonce: make_hello(b"x" * 16, 0, 1, SLOT, NSLOTS, SECRET, nonce),  # unknown token
                            lambda nonce: make_hello(token, 0, 1, SLOT, NSLOTS, b"wrong secret", nonce),  # bad HMAC
                            lambda nonce: b"PX"):  # a partial hello, then close
                s = socket.create_connection((address, port))
                s.settimeout(5)
                challenge = b""
                while len(challenge) < 20:
                    challenge += s.recv(20 - len(challenge))
                s.sendall(payload(challenge[4:]))
                strangers.append(s)
                time.sleep(0.01)
            strangers.append(socket.create_connection((address, port)))  # silent: stays pending
            strangers[0].close()
            strangers[-2].close()

        t = threading.Thread(target=attack)
        t.start()
        sizes = [int(x) for x in np.random.default_rng(11).integers(0, SLOT + 1, 400)]
        run_both(pair, sizes)
        t.join(5)
        until(lambda: len(messages) >= 5, what="5 warnings")
        for why in ("not a pyxccl connection", "unknown token", "authentication", "closed before a complete hello"):
            assert any(why in m for m in messages), (why, messages)
        run_both(pair, [SLOT, 0, 5])  # still working afterwards
    finally:
        logger.removeHandler(capture)
        for s in strangers:
            s.close()


def test_setup_errors():
    """Mismatched slot parameters, malformed info, and nobody listening: clear TransportErrors."""
    a = SocketTransport(make_ctx(0))
    b = SocketTransport(make_ctx(1, nslots=8, timeout=0.3))
    try:
        rc, info = a.setup_recv(1, 0)
        b.connect_send(0, 0, info)
        wait_raises(rc, TransportError)
        with pytest.raises(TransportError, match="PYXCCL_NSLOTS"):
            rc.ready()
        with pytest.raises(TransportError):
            b.connect_send(0, 1, b"junk")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        info = encode_info("127.0.0.1", s.getsockname()[1], b"t" * 16)
        s.close()  # nobody listens there
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="cannot connect"):
            b.connect_send(0, 2, info)
        assert time.monotonic() - t0 < 2
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("nstreams", [1, 2, 4])
def test_throughput_1mib(nstreams, capsys):
    """Not a check: prints the rate of 1 MiB slots (sender fills nothing, receiver checks the length)."""
    p = Pair(nchannels=1, slot_bytes=1 << 20, nstreams=nstreams)
    try:
        n, errors, pool = 400, [], np.zeros(3 << 20, np.uint8)
        args = ([1 << 20] * n, pool, errors)
        t = threading.Thread(target=drive, args=(p.ctx[0].doorbell, p.send[0], [], *args), kwargs={"check": False})
        t0 = time.perf_counter()
        t.start()
        drive(p.ctx[1].doorbell, [], p.recv[1], *args, check=False)
        dt = time.perf_counter() - t0
        t.join(5)
        assert not errors, errors
        with capsys.disabled():
            print(f"\nsocket throughput, 1 MiB slots x {NSLOTS}, {nstreams} stream(s), one process: "
                  f"{n / dt / 1024:.2f} GiB/s")
    finally:
        p.close()
