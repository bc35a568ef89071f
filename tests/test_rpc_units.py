"""pRPC pieces alone: the payload codec (and what it refuses), frames, the multi-producer
send queue, aggregators and the accumulator's buffers and errors."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import numpy as np
import pytest

from pyxccl import rpc
from pyxccl.errors import InvalidArgument, PeerLostError
from pyxccl.rpc import codec, wire
from pyxccl.rpc.errors import ProtocolError
from pyxccl.rpc.link import Link


# ------------------------------------------------------------------ codec

def _roundtrip(obj):
    meta, bufs = codec.encode(obj)
    return codec.decode(bytes(meta), [np.frombuffer(bytes(b), np.uint8).copy() for b in bufs])


def test_codec_roundtrip_and_zero_copy_buffers():
    obj = {"x": [1, 2.5, "s", b"b", None, True, (2**100, -3)], "a": np.arange(5000.0),
           "small": np.arange(3, dtype=np.int16), "g": np.float16(1.5)}
    meta, bufs = codec.encode(obj)
    assert len(bufs) == 1 and np.shares_memory(np.frombuffer(bufs[0], np.uint8), obj["a"])
    assert len(meta) < 200  # the big array is not in the meta
    out = _roundtrip(obj)
    assert out["x"] == obj["x"] and out["g"] == obj["g"] and out["g"].dtype == np.float16
    np.testing.assert_array_equal(out["a"], obj["a"])
    assert out["small"].dtype == np.int16 and out["small"].flags.writeable


def test_codec_refuses_what_it_cannot_carry():
    for bad in ({1}, object(), np.array([None], object),
                np.zeros(2, [("a", "i4")]), _deep(70)):
        with pytest.raises(InvalidArgument):
            codec.encode(bad)
        with pytest.raises(InvalidArgument):
            codec.check(bad)


def _deep(n):
    x: list = []
    for _ in range(n):
        x = [x]
    return x


@pytest.mark.parametrize("meta,bufs", [
    (b"", []), (b"Z", []), (b"s\xff\xff\xff\x7f", []), (b"l\x05\x00\x00\x00", []),
    (b"i\x00", []), (b"A\x07float32\x01" + struct.pack("<Q", 4) + b"\x00\x00\x00\x00",
                     [np.zeros(15, np.uint8)]),
    (b"A\x07float32\x01" + struct.pack("<Q", 4) + b"\x03\x00\x00\x00", []),
    (b"a\x06object\x00", []), (b"m\x01\x00\x00\x00l\x00\x00\x00\x00N", []),
    (b"NN", []), (b"l\x01\x00\x00\x00" * 80 + b"N", []),
    (b"a\x07float64\x01" + struct.pack("<Q", 1 << 60), []),
])
def test_codec_rejects_malformed_payloads(meta, bufs):
    with pytest.raises(ProtocolError):
        codec.decode(meta, bufs)


def test_codec_fuzz_never_raises_anything_but_protocol_error():
    rng = random.Random(7)
    meta, _ = codec.encode({"k": [1, "abc", 2.0, b"xy", (None, True)], "a": np.arange(4)})
    meta = bytes(meta)
    for _ in range(3000):
        m = bytearray(meta)
        for _ in range(rng.randint(1, 4)):
            m[rng.randrange(len(m))] = rng.randrange(256)
        m = m[:rng.randint(0, len(m))] if rng.random() < 0.3 else m
        try:
            codec.decode(bytes(m), [])
        except ProtocolError:
            pass


# ------------------------------------------------------------------ frames

def test_frames_over_a_socket():
    a, b = socket.socketpair()
    try:
        frames = []
        for rid in range(50):
            meta, bufs = codec.encode({"i": rid, "arr": np.full(rid * 100, rid, np.int32)})
            frames.append(wire.frame_parts(wire.KIND_REQUEST, 0, rid, b"svc", meta, bufs))
        t = threading.Thread(target=lambda: [wire.send_parts(a, p) for p, _ in frames])
        t.start()
        reader = wire.FrameReader(b, "peer")
        for rid in range(50):
            f = reader.read()
            assert f.rid == rid and f.sid == "svc" and f.kind == wire.KIND_REQUEST
            p = f.payload()
            assert p["i"] == rid and (p["arr"] == rid).all() and p["arr"].size == rid * 100
        t.join(5)
        a.sendall(b"\x00" * wire.HEADER.size)
        with pytest.raises(ProtocolError):
            reader.read()
    finally:
        a.close()
        b.close()


def test_frame_reader_eof():
    a, b = socket.socketpair()
    parts, _ = wire.response_parts(3, 0, np.arange(5000))
    head = bytes(parts[0])
    a.sendall(head)
    a.close()
    with pytest.raises(PeerLostError):
        wire.FrameReader(b, "peer").read()
    b.close()
    c, d = socket.socketpair()
    c.close()
    assert wire.FrameReader(d, "peer").read() is None
    d.close()


def test_hello_and_control_frames():
    assert wire.parse_hello(wire.make_hello(1, 5, b"t" * 16, 9)) == (1, 5, b"t" * 16, 9)
    with pytest.raises(ProtocolError):
        wire.parse_hello(b"XXXX" + wire.make_hello(0, 0, b"t" * 16, 1)[4:])
    a, b = socket.socketpair()
    a.sendall(wire.control_bytes(wire.C_JOIN, {"node": {"rank": 1}}))
    assert wire.read_control(b, None, "x") == (wire.C_JOIN, {"node": {"rank": 1}})
    a.sendall(struct.pack("<IBxxxI", 0x1234, 1, 0))
    with pytest.raises(ProtocolError):
        wire.read_control(b, None, "x")
    a.close()
    b.close()


# ------------------------------------------------------------------ send queue

class _SlowSock:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.writes: list[bytes] = []

    def sendall(self, data) -> None:
        self.gate.wait(5)
        self.writes.append(bytes(data))


class _FakeLink(Link):
    def __init__(self) -> None:
        super().__init__("fake", lambda *a: None, lambda *a: None, track=True)
        self.sock = _SlowSock()

    def prepare(self, lane):
        return self.sock


def test_first_producer_drains_others_only_enqueue():
    link = _FakeLink()
    worker = threading.Thread(target=link.send, args=(1, [b"one"], 3))
    worker.start()
    time.sleep(0.05)  # the worker is blocked writing frame 1
    t0 = time.monotonic()
    for rid in range(2, 6):
        assert link.send(rid, [b"f%d" % rid], 2)  # return at once: only enqueued
    assert time.monotonic() - t0 < 0.05 and worker.is_alive()
    link.sock.gate.set()
    worker.join(5)
    assert link.sock.writes == [b"one", b"f2f3f4f5"]  # the worker drained the rest in a batch
    assert link.in_flight == {1, 2, 3, 4, 5}
    assert link.senders[0].busy is False


def test_failed_link_hands_back_unsent_frames():
    failures = []

    class Refused(_FakeLink):
        def prepare(self, lane):
            raise ConnectionRefusedError("no")

    link = Refused()
    link.on_fail = lambda lk, unsent, exc: failures.append((sorted(unsent), type(exc)))
    link.send(1, [b"x"], 1)
    assert failures == [([1], ConnectionRefusedError)]
    assert link.send(2, [b"y"], 1) is False  # closed: the caller routes elsewhere


# ------------------------------------------------------------------ aggregators / accumulator

def test_aggregators():
    assert rpc.SUM.merge(rpc.SUM.merge(None, 2), 3) == 5
    assert rpc.AVG.final(rpc.AVG.merge(rpc.AVG.merge(None, 2), 3), 2) == 2.5
    assert rpc.MAX.merge(rpc.MAX.merge(None, 2), 3) == 3 and rpc.MIN.merge(4, 3) == 3
    user = np.array([1, 5, 2])
    acc = rpc.MAX.merge(None, user)
    acc = rpc.MAX.merge(acc, np.array([3, 1, 2]))
    assert acc.tolist() == [3, 5, 2] and user.tolist() == [1, 5, 2]  # the user's array untouched
    assert rpc.SUM.merge(np.array([1, 2]), np.array([0.5, 0.5])).tolist() == [1.5, 2.5]
    from pyxccl.rpc.accumulator import resolve_aggregator
    assert resolve_aggregator("Avg") is rpc.AVG and resolve_aggregator(rpc.Min) is rpc.MIN
    with pytest.raises(InvalidArgument):
        resolve_aggregator("median")


@pytest.fixture
def node_pair():
    m = rpc.Master()
    a = rpc.RpcService(m.address_str, timeout=5)
    b = rpc.RpcService(m.address_str, timeout=5)
    yield a, b
    b.close()
    a.close()
    m.close()


def test_accumulator_double_buffer_and_errors(node_pair):
    a, b = node_pair
    server = rpc.serve_accumulators(a)
    b.wait_servers("pyxccl.accumulator", 1, 5)
    acc = rpc.Accumulator("t", rpc.SUM, flush_every=60, service=b)
    acc.write(1)
    acc.write(np.int64(2))
    assert acc._slots[acc._filling][1] == 2  # merged locally, nothing sent yet
    acc.wait_empty(5)
    assert acc.read() == 3
    # a flush in progress: new writes fill the other buffer
    gate = threading.Event()
    real = acc._client.call
    acc._client.call = lambda *a, **k: (gate.wait(5), real(*a, **k))[1]
    acc.write(10)
    threading.Thread(target=acc.wait_empty, args=(5,)).start()
    time.sleep(0.1)
    assert acc._sending
    acc.write(100)
    assert acc._slots[acc._filling][0] == 100
    gate.set()
    acc.wait_empty(5)
    acc._client.call = real
    assert acc.read() == 113
    wrong = rpc.Accumulator("t", rpc.MAX, flush_every=60, service=b)
    wrong.write(1)
    with pytest.raises(rpc.RemoteError, match="aggregates with sum"):
        wrong.wait_empty(5)
    with pytest.raises(InvalidArgument):
        acc.write("3")
    acc.erase()
    assert acc.read() is None
    acc.close()
    wrong.close()
    server.close()
    lone = rpc.Accumulator("u", "avg", flush_every=0.01, service=b, timeout=2)
    lone.write(1.0)
    with pytest.raises(rpc.NoSuchServer):
        lone.wait_empty(5)  # no server left: kept locally and reported
    assert lone._slots[lone._filling][1] >= 1 or lone._slots[lone._filling ^ 1][1] >= 1
    lone.close()


def test_frame_reader_grows_with_the_bytes_that_arrive():
    a, b = socket.socketpair()
    reader = wire.FrameReader(b, "peer")
    big = ["x" * 1000] * 3000  # 3 MB of inline meta
    parts, n = wire.response_parts(1, 0, big)
    threading.Thread(target=wire.send_parts, args=(a, parts)).start()
    assert reader.read().payload() == big
    # a header announcing a huge meta allocates nothing up front: EOF ends it
    a.sendall(wire.HEADER.pack(wire.FRAME_MAGIC, wire.KIND_RESPONSE, 0, 0, 2, 1 << 29, 0))
    a.sendall(b"y" * 1000)
    a.close()
    with pytest.raises(PeerLostError):
        reader.read()
    assert len(reader.buf) < 1 << 20
    b.close()
