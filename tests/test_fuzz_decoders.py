"""Fuzzing (hypothesis) of every decoder of bytes that come from the network.

Property, for each: any input either decodes or raises the decoder's typed error (a
PyxcclError subclass, or ValueError where the API documents it) -- never another
exception type, and never a hang (every socket read here has a short deadline, and the
functions that serve a whole connection must return once the input ends).

Decoders that serve a connection (root hello, ring reader, store server, rpc frame reader)
are fed through a socketpair into the real function; the socket transport's listener
through a real TCP connection. Runs derandomized (fixed examples, no example database),
so CI sees the same inputs every time.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyxccl.bootstrap import Bootstrap, UniqueId, get_unique_id, net
from pyxccl.bootstrap import ring as ring_mod
from pyxccl.bootstrap import root as root_mod
from pyxccl.bootstrap import store as store_mod
from pyxccl.errors import InvalidArgument, MismatchError, PeerLostError, PyxcclError, TransportError
from pyxccl.runtime.host.p2p import P2POp, RecvLane, SendLane
from pyxccl.rpc import codec
from pyxccl.rpc import wire as rpc_wire
from pyxccl.rpc.errors import ProtocolError
from pyxccl.rpc.master import _node_info
from pyxccl.transport.base import RecvConnector, SendConnector
from pyxccl.transport.socket import wire as sk_wire
from pyxccl.transport.socket.connectors import SocketRecvConnector, SocketSendConnector

SECRET = b"fuzz-secret-0123"


def fuzz(n: int = 200) -> Callable[[Any], Any]:
    """Bounded, deterministic hypothesis settings (the whole file stays well under 40 s)."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` bytes with a few bytes overwritten and maybe truncated or extended."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, 3))
    if cut == 1:
        data = data[:draw(st.integers(0, len(data)))]
    elif cut == 2:
        data += draw(st.binary(max_size=16))
    return bytes(data)


def converse(handler: Callable[[socket.socket], None], make_input: Callable[[socket.socket], bytes],
             timeout: float = 5.0) -> bytes:
    """Run ``handler(conn)`` in a thread on one end of a socketpair; send it ``make_input(our end)``
    (which may first read a challenge), close our write side and collect what it writes until it
    closes or returns. Fails when the handler raises or is still running after ``timeout``."""
    ours, theirs = socket.socketpair()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            handler(theirs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True, name="fuzz-handler")
    t.start()
    out = bytearray()
    end = time.monotonic() + timeout
    try:
        ours.settimeout(timeout)
        try:
            payload = make_input(ours)
            ours.sendall(payload)
        except OSError:
            pass  # the handler closed early (it rejected what it read so far)
        with contextlib.suppress(OSError):
            ours.shutdown(socket.SHUT_WR)
        ours.settimeout(0.02)
        while time.monotonic() < end:
            try:
                chunk = ours.recv(65536)
            except socket.timeout:
                if not t.is_alive():
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        t.join(max(0.0, end - time.monotonic()))
    finally:
        ours.close()
    assert not t.is_alive(), "the handler hung on this input"
    if errors:
        raise errors[0]
    return bytes(out)


def read_challenge(sock: socket.socket) -> bytes:
    challenge = net.recv_exact(sock, net.CHALLENGE_BYTES, net.Deadline(3.0), "handler")
    assert bytes(challenge[:4]) == b"PXCH"
    return bytes(challenge[4:])


# ============================================================== unique id, addresses

def _addr_bytes() -> st.SearchStrategy[bytes]:
    ports = st.integers(0, 0xFFFF)
    return st.one_of(
        st.builds(lambda ip, p: b"\x04" + ip + struct.pack("!H", p), st.binary(min_size=4, max_size=4), ports),
        st.builds(lambda ip, p: b"\x06" + ip + struct.pack("!H", p), st.binary(min_size=16, max_size=16), ports),
        st.builds(lambda name, p: b"\x00" + bytes([len(name) % 256]) + name + struct.pack("!H", p),
                  st.binary(max_size=260), ports),
        st.binary(max_size=40))


_UID_BYTES = st.one_of(
    st.binary(max_size=400),
    mutated(st.builds(lambda s, a: b"PXU\x01" + s + a, st.binary(min_size=16, max_size=16), _addr_bytes())))


@fuzz(300)
@given(_UID_BYTES)
def test_uid_from_bytes(raw):
    try:
        uid = UniqueId.from_bytes(raw)
    except InvalidArgument:
        return
    assert UniqueId.from_bytes(uid.to_bytes()) == uid


@fuzz(300)
@given(st.one_of(st.text(max_size=120),
                 st.builds(lambda t: "pyxccl1-" + t, st.text(max_size=120)),
                 st.builds(lambda b: "pyxccl1-" + base64.urlsafe_b64encode(b).decode().rstrip("="),
                           _UID_BYTES)))
def test_uid_from_string(text):
    try:
        uid = UniqueId.from_string(text)
    except InvalidArgument:
        return
    assert UniqueId.from_string(str(uid)) == uid


@fuzz(300)
@given(_addr_bytes(), st.integers(0, 8))
def test_unpack_addr(raw, offset):
    buf = bytes(offset) + raw
    try:
        host, port, end = net.unpack_addr(buf, offset)
    except ValueError:
        return
    assert isinstance(host, str) and host and 0 <= port <= 0xFFFF and offset < end <= len(buf)


@fuzz(200)
@given(st.text(max_size=60))
def test_split_host_port(text):
    try:
        host, port = net.split_host_port(text)
    except ValueError:
        return
    assert host and 0 < port <= 0xFFFF


# ============================================================== root rendezvous

@pytest.fixture(scope="module")
def root():
    r = root_mod._Root(SECRET, net.listen("127.0.0.1", 0), 600.0)
    yield r
    r.listener.close()


def _reset_root(r) -> None:
    with r.lock:
        for conn, _ in r.peers.values():
            net.close_quietly(conn)
        r.peers.clear()
        r.nranks = None


_HELLO_TAIL = st.one_of(
    st.binary(max_size=64),
    mutated(st.builds(lambda rank, n, a: root_mod.HELLO.pack(rank, n, len(a) % 256) + a,
                      st.integers(-2, 4), st.integers(-1, 4), _addr_bytes())))


@fuzz(200)
@given(st.booleans(), _HELLO_TAIL)
def test_root_handshake(root, authenticate, tail):
    def make_input(sock: socket.socket) -> bytes:
        if not authenticate:
            return tail  # garbage from the first byte
        return net.answer(SECRET, root_mod.ROOT_LABEL, read_challenge(sock)) + tail

    try:
        out = converse(lambda conn: root.handshake(conn, "fuzz"), make_input)
    finally:
        kept = len(root.peers)
        _reset_root(root)
    if not authenticate:
        assert kept == 0  # nothing registered without the secret
        assert out[:4] == b"PXCH"
        assert len(out) == net.CHALLENGE_BYTES  # and no answer
        return
    rest = out  # after the challenge make_input read
    if rest:  # an error frame: status, !H length, message
        assert rest[0] == root_mod.STATUS_MISMATCH and struct.unpack("!H", rest[1:3])[0] == len(rest) - 3


def _root_reply() -> st.SearchStrategy[bytes]:
    ok = st.builds(lambda a: b"\x00" + bytes([len(a) % 256]) + a, _addr_bytes())
    err = st.builds(lambda s, m: bytes([s]) + struct.pack("!H", len(m)) + m, st.integers(1, 255),
                    st.binary(max_size=40))
    return st.one_of(st.binary(max_size=64),
                     st.builds(lambda n, r: b"PXCH" + n + r, st.binary(min_size=16, max_size=16),
                               st.one_of(mutated(ok), mutated(err))))


@fuzz(150)
@given(_root_reply())
def test_rendezvous_reply(reply):
    """The rank side of the rendezvous against a fake root that answers ``reply``."""
    lsock = net.listen("127.0.0.1", 0)

    def fake_root() -> None:
        with contextlib.suppress(OSError):
            conn, _ = lsock.accept()
            with conn:
                conn.settimeout(3.0)
                conn.sendall(reply)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):
                    pass

    t = threading.Thread(target=fake_root, daemon=True)
    t.start()
    try:
        host, port = root_mod.rendezvous(SECRET, "127.0.0.1", lsock.getsockname()[1], 0, 2,
                                         net.pack_addr("127.0.0.1", 1), net.Deadline(3.0))
        assert isinstance(host, str) and 0 <= port <= 0xFFFF
    except PyxcclError:
        pass
    finally:
        t.join(5.0)
        lsock.close()
    assert not t.is_alive()


# ============================================================== bootstrap ring: frame header + hello

@pytest.fixture(scope="module")
def ring():
    uid = get_unique_id(timeout=30.0)
    out: list = [None, None]

    def make(r: int) -> None:
        out[r] = Bootstrap(uid, r, 2, timeout=30.0)

    ts = [threading.Thread(target=make, args=(r,)) for r in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30.0)
    assert all(out)
    yield uid, out[0]
    for b in out:
        b.close()


def _frames() -> st.SearchStrategy[bytes]:
    frame = st.builds(
        lambda magic, frm, tag, length, payload: ring_mod.FRAME.pack(magic, frm, tag, length) + payload,
        st.one_of(st.just(ring_mod.FRAME_MAGIC), st.integers(0, 0xFFFFFFFF)),
        st.integers(-1, 2), st.one_of(st.integers(-6, 3), st.integers(-(1 << 63), (1 << 63) - 1)),
        st.one_of(st.integers(0, 80), st.integers(0, (1 << 64) - 1)), st.binary(max_size=80))
    return st.one_of(st.binary(max_size=120), st.lists(frame, max_size=4).map(b"".join))


@fuzz(200)
@given(st.sampled_from(["garbage", "wrong-secret", "auth"]), st.integers(-1, 3), _frames())
def test_ring_reader(ring, mode, src, frames):
    uid, bs = ring

    def make_input(sock: socket.socket) -> bytes:
        if mode == "garbage":
            return frames
        nonce = read_challenge(sock)
        secret = uid.secret if mode == "auth" else b"not the secret!!"
        return net.answer(secret, ring_mod.RING_LABEL, nonce) + ring_mod.RANK.pack(src) + frames

    try:
        out = converse(lambda conn: bs._reader(conn, "fuzz"), make_input)
    finally:
        with bs._cond:
            bs._mail.clear()
            bs._lost.clear()
            bs._live.clear()
    # the reader never answers (make_input read the challenge, except for garbage)
    assert out == b"" if mode != "garbage" else (out[:4] == b"PXCH" and len(out) == net.CHALLENGE_BYTES)


# ============================================================== TCPStore server

@pytest.fixture(scope="module")
def stores():
    open_srv = store_mod._Server(0, False)
    open_srv.closed = True  # waits return at once: a fuzzed wait timeout cannot stall the test
    secret_srv = store_mod._Server(0, False, SECRET)
    yield open_srv, secret_srv
    open_srv.listener.close()
    secret_srv.close()


def _store_requests() -> st.SearchStrategy[bytes]:
    req = st.builds(
        lambda op, tmo, key, value: store_mod.REQ.pack(op, tmo, len(key), len(value)) + key + value,
        st.integers(0, 8), st.integers(0, 20), st.binary(max_size=12),
        st.one_of(st.binary(max_size=16), st.integers(-(1 << 63), (1 << 63) - 1).map(lambda v: struct.pack("!q", v))))
    return st.one_of(st.binary(max_size=200), st.lists(mutated(req), max_size=5).map(b"".join))


def _check_replies(out: bytes) -> None:
    pos = 0
    while pos < len(out):
        status, n = store_mod.RESP.unpack_from(out, pos)
        assert status in (store_mod.ST_OK, store_mod.ST_TIMEOUT, store_mod.ST_ERROR)
        pos += store_mod.RESP.size + n
        assert pos <= len(out)


@fuzz(200)
@given(_store_requests())
def test_store_server_requests(stores, data):
    open_srv, _ = stores
    _check_replies(converse(lambda conn: open_srv.serve(conn, "fuzz"), lambda sock: data))


@fuzz(150)
@given(st.sampled_from(["garbage", "wrong-secret", "auth"]), _store_requests())
def test_store_server_with_secret(stores, mode, data):
    _, srv = stores

    def make_input(sock: socket.socket) -> bytes:
        if mode == "garbage":
            return data
        nonce = read_challenge(sock)
        secret = SECRET if mode == "auth" else b"not the secret!!"
        return net.answer(secret, store_mod.STORE_LABEL, nonce) + data

    with srv.cond:  # any wait a fuzzed request asks for returns at once
        srv.closed = True
    try:
        out = converse(lambda conn: srv.serve(conn, "fuzz"), make_input)
    finally:
        with srv.cond:
            srv.closed = False
    if mode == "garbage":  # no request read or answered without the secret
        assert out[:4] == b"PXCH" and len(out) == net.CHALLENGE_BYTES
    elif mode == "wrong-secret":
        assert out == b""
    else:
        _check_replies(out)


# ============================================================== socket transport

@fuzz(300)
@given(st.one_of(st.binary(min_size=sk_wire.HELLO_BYTES - 4, max_size=sk_wire.HELLO_BYTES + 4),
                 st.builds(lambda b: sk_wire.MAGIC + b[4:],
                           st.binary(min_size=sk_wire.HELLO_BYTES, max_size=sk_wire.HELLO_BYTES)),
                 mutated(st.builds(lambda s, n, sb, ns, tok: sk_wire.make_hello(tok, s, n, sb, ns, SECRET, b"N" * 16),
                                   st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFFFFFF),
                                   st.integers(0, 0xFFFFFFFF), st.binary(min_size=16, max_size=16)))))
def test_socket_parse_hello(data):
    try:
        hello = sk_wire.parse_hello(data, SECRET, b"N" * 16)
    except ValueError:
        return
    assert 0 <= hello.lane < hello.nlanes and len(hello.token) == sk_wire.TOKEN_BYTES


@fuzz(200)
@given(st.one_of(st.binary(max_size=40),
                 mutated(st.builds(lambda p, tok: sk_wire.encode_info("127.0.0.1", p, tok),
                                   st.integers(0, 0xFFFF), st.binary(min_size=16, max_size=16)))))
def test_socket_decode_info(info):
    try:
        address, port, token = sk_wire.decode_info(info)
    except ValueError:
        return
    assert isinstance(address, str) and 0 <= port <= 0xFFFF and len(token) == sk_wire.TOKEN_BYTES


@fuzz(200)
@given(st.integers(1, 4), st.lists(st.tuples(st.integers(0, 4), st.one_of(st.integers(0, 12), st.integers(0, (1 << 64) - 1)),
                                             st.one_of(st.integers(0, 300000), st.integers(0, 0xFFFFFFFF))), max_size=12))
def test_socket_frame_headers(nstreams, headers):
    """The receiver's check of each frame header (seq u64, nbytes u32) as the progress thread reads it."""
    slot = 256 * 1024
    conn = SocketRecvConnector(0, 0, slot, 4, None, "fuzz")  # type: ignore[arg-type]
    conn.nlanes = nstreams
    for stream, seq, nbytes in headers:
        seq, nbytes = sk_wire.FRAME.unpack(sk_wire.FRAME.pack(seq, nbytes))
        if stream >= nstreams:
            continue  # the progress thread only reads streams that were bound
        try:
            chunk = conn.begin_frame(stream, seq, nbytes)
        except ValueError:
            continue
        assert len(chunk) <= slot and conn.tail <= seq < conn.tail + 4
        if conn.frame_done(seq) and conn.done_seq[conn.tail % 4] == conn.tail:
            assert conn.ready()
            conn.tail += 1


@fuzz(100)
@given(st.lists(st.binary(min_size=1, max_size=8), max_size=6))
def test_socket_credits(chunks):
    conn = SocketSendConnector(0, 0, 64, 4, None, "fuzz", 1)  # type: ignore[arg-type]
    conn.posted = 4
    for data in chunks:
        try:
            conn.add_credits(sum(data))
        except ValueError:
            assert conn.credited + sum(data) > conn.posted
        assert 0 <= conn.credited <= conn.posted


@pytest.fixture(scope="module")
def transport():
    from types import SimpleNamespace

    from pyxccl.transport.base import PeerInfo, TransportContext
    from pyxccl.transport.doorbell import Doorbell
    from pyxccl.transport.socket import SocketTransport

    def ctx(rank: int) -> TransportContext:
        peers = [PeerInfo(rank=r, host=f"h{r}", pid=0, doorbell="", hostname=f"n{r}") for r in range(2)]
        return TransportContext(rank=rank, nranks=2, comm_tag="fuzz", peers=peers, doorbell=Doorbell.anonymous(),
                                slot_bytes=256, nslots=2, timeout=5.0, address="127.0.0.1", secret=SECRET,
                                config=SimpleNamespace(socket_nstreams=1))

    rx, tx = SocketTransport(ctx(1)), SocketTransport(ctx(0))
    _, info = rx.setup_recv(0, 0)
    yield rx, tx, info
    rx.close(flush_timeout=0)
    tx.close(flush_timeout=0)


def _tcp_converse(address: tuple[str, int], make_input: Callable[[socket.socket], bytes], timeout: float = 5.0) -> bytes:
    """Connect, send ``make_input(sock)``, close our write side, read until the listener closes."""
    out = bytearray()
    with socket.create_connection(address, timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(make_input(s))
            s.shutdown(socket.SHUT_WR)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise AssertionError("the listener kept a connection that sent garbage") from None
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return bytes(out)


@fuzz(120)
@given(st.sampled_from(["garbage", "replay", "hello+frames"]),
       st.one_of(st.binary(max_size=120),
                 st.lists(st.builds(lambda seq, n, body: sk_wire.FRAME.pack(seq, n) + body, st.integers(0, 6),
                                    st.one_of(st.integers(0, 300), st.integers(0, 0xFFFFFFFF)), st.binary(max_size=300)),
                          max_size=4).map(b"".join)))
def test_socket_listener(transport, mode, data):
    """The listener end to end: garbage, a replayed hello, and frames after a valid hello."""
    rx, _, info = transport
    address, port, _ = sk_wire.decode_info(info)
    progress = rx._progress
    conn = None

    def make_input(sock: socket.socket) -> bytes:
        nonce = read_challenge(sock)
        if mode == "garbage":
            return data
        token = sk_wire.new_token()
        if mode == "replay":  # a hello that was valid for another connection's challenge
            rx_conn, _ = rx.setup_recv(0, 1000)
            tok = next(t for t, c in progress.tokens.items() if c is rx_conn)
            return sk_wire.make_hello(tok, 0, 1, 256, 2, SECRET, b"an older nonce!!") + data
        nonlocal conn
        conn, rinfo = rx.setup_recv(0, 1001)
        token = sk_wire.decode_info(rinfo)[2]
        return sk_wire.make_hello(token, 0, 1, 256, 2, SECRET, nonce) + data

    out = _tcp_converse((address, port), make_input)
    assert out == b""  # after the challenge (read by make_input), a receiver only sends credits
    if conn is not None:  # frames after a valid hello: the connector delivers or fails, typed
        end = time.monotonic() + 5.0
        while conn.failure is None and time.monotonic() < end:
            try:
                while conn.ready():
                    conn.buffer()
                    conn.release()
            except TransportError:
                break
            time.sleep(0.002)
        assert isinstance(conn.failure, TransportError), conn.failure
    assert progress._thread.is_alive()


def test_socket_listener_still_works_after_fuzzing(transport):
    rx, tx, _ = transport
    rc, rinfo = rx.setup_recv(0, 7)
    sc = tx.connect_send(1, 7, rinfo)
    end = time.monotonic() + 5.0
    while not sc.ready():
        assert time.monotonic() < end
        time.sleep(0.001)
    sc.buffer()[:5] = np.frombuffer(b"hello", np.uint8)
    sc.post(5)
    while not rc.ready():
        assert time.monotonic() < end
        time.sleep(0.001)
    assert bytes(rc.buffer()) == b"hello"
    rc.release()


# ============================================================== p2p size header

class _FakeSend(SendConnector):
    peer = 1

    def __init__(self, slot_bytes: int) -> None:
        self.buf = np.zeros(slot_bytes, np.uint8)
        self.out: list[bytes] = []

    def ready(self) -> bool:
        return True

    def buffer(self) -> np.ndarray:
        return self.buf

    def post(self, n: int) -> None:
        self.out.append(self.buf[:n].tobytes())


class _FakeRecv(RecvConnector):
    peer = 0

    def __init__(self, slots: list[bytes]) -> None:
        self.slots = list(slots)

    def ready(self) -> bool:
        return bool(self.slots)

    def buffer(self) -> np.ndarray:
        return np.frombuffer(self.slots[0], np.uint8)

    def release(self) -> None:
        self.slots.pop(0)


@st.composite
def _p2p_case(draw):
    slot = draw(st.sampled_from([16, 17, 32, 64]))  # a message header takes 16 bytes of the first slot
    sizes = draw(st.lists(st.integers(0, 150), min_size=1, max_size=3))
    send = _FakeSend(slot)
    lane = SendLane(1, slot)
    lane.conn = send
    finished: list = []
    lane.queue.extend(P2POp("send", 1, 0, np.arange(n, dtype=np.uint8), None, None, None, "send") for n in sizes)
    while len(finished) < len(sizes):
        assert lane.advance(finished)
    honest = draw(st.booleans())
    if honest:
        slots = send.out
    else:
        slots = [draw(mutated(st.just(s))) for s in send.out]
        slots = draw(st.one_of(st.just(slots), st.lists(st.binary(max_size=slot), max_size=6)))
    recv_sizes = sizes if draw(st.booleans()) else draw(st.lists(st.integers(0, 150), min_size=1, max_size=3))
    return slot, sizes, recv_sizes, slots, honest


@fuzz(300)
@given(_p2p_case())
def test_p2p_message_header(case):
    """Whatever arrives, a receiving lane completes its receives, names a size mismatch on the receive
    (MismatchError) or calls the stream corrupt (TransportError): never another error, never a wrong result."""
    slot, sizes, recv_sizes, slots, honest = case
    outs = [np.zeros(n, np.uint8) for n in recv_sizes]
    lane = RecvLane(0, _FakeRecv(slots))
    finished: list = []
    ops = [P2POp("recv", 0, 0, o, o, None, None, "recv") for o in outs]
    for op in ops:
        lane.post(op, finished)
    try:
        lane.advance(finished)
    except TransportError:
        assert not honest
        return
    assert all(op.error is None or isinstance(op.error, MismatchError) for op in finished)
    if honest:
        assert finished == ops[:len(finished)]
        for op, n in zip(finished, sizes):
            assert (op.error is None) == (op.data.size == n)
    if honest and recv_sizes == sizes:
        assert finished == ops and all(np.array_equal(o, np.arange(len(o), dtype=np.uint8)) for o in outs)


# ============================================================== rpc: codec, hello, frames, control

_PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
              st.binary(max_size=8),
              st.builds(lambda n, dt: np.arange(n).astype(dt), st.integers(0, 300),
                        st.sampled_from(["int8", "float32", "uint64", "bool", "bfloat16"]))),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.tuples(kids, kids),
                           st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), kids, max_size=3)),
    max_leaves=8)


def _encoded(obj: Any) -> tuple[bytes, list[bytes]]:
    meta, bufs = codec.encode(obj)
    return bytes(meta), [bytes(b) for b in bufs]


@fuzz(300)
@given(st.one_of(st.tuples(st.binary(max_size=80), st.lists(st.binary(max_size=32), max_size=2)),
                 st.builds(_encoded, _PLAIN).flatmap(
                     lambda mb: st.tuples(mutated(st.just(mb[0])), st.just(mb[1])))))
def test_rpc_codec_decode(case):
    meta, bufs = case
    arrays = [np.frombuffer(bytearray(b), np.uint8) for b in bufs]
    try:
        codec.decode(meta, arrays)
    except ProtocolError:
        pass


@fuzz(200)
@given(st.one_of(st.binary(max_size=48),
                 mutated(st.builds(rpc_wire.make_hello, st.integers(0, 3), st.integers(-5, 5),
                                   st.binary(min_size=16, max_size=16), st.integers(0, (1 << 64) - 1)))))
def test_rpc_parse_hello(data):
    try:
        lane, _rank, token, _link = rpc_wire.parse_hello(data)
    except ProtocolError:
        return
    assert lane in (0, 1) and len(token) == rpc_wire.TOKEN_BYTES


def _rpc_frames() -> st.SearchStrategy[bytes]:
    def frame(kind, status, rid, sid, obj):
        meta, bufs = codec.encode(obj)
        parts, _ = rpc_wire.frame_parts(kind, status, rid, sid, meta, bufs)
        return b"".join(bytes(memoryview(p).cast("B")) for p in parts)

    one = st.builds(frame, st.integers(1, 2), st.integers(0, 6), st.integers(0, 9), st.binary(max_size=6), _PLAIN)
    return st.one_of(st.binary(max_size=120), st.lists(mutated(one), max_size=3).map(b"".join))


@fuzz(200)
@given(_rpc_frames())
def test_rpc_frame_reader(data):
    results: list[Any] = []

    def read_all(conn: socket.socket) -> None:
        reader = rpc_wire.FrameReader(conn, "fuzz")
        try:
            while True:
                f = reader.read()
                if f is None:
                    return
                if f.status == 0:
                    with contextlib.suppress(ProtocolError):
                        results.append(f.payload())
                else:
                    results.append(f.message())
        except (PeerLostError, ProtocolError):
            pass
        finally:
            conn.close()

    converse(read_all, lambda sock: data)


def _control(ctype: int, body: dict) -> bytes:
    try:
        return rpc_wire.control_bytes(ctype, body)
    except InvalidArgument:  # a large array: control frames carry everything inline
        return rpc_wire.control_bytes(ctype, {})


@fuzz(150)
@given(st.one_of(st.binary(max_size=60),
                 mutated(st.builds(_control, st.integers(0, 9),
                                   st.dictionaries(st.text(max_size=5), _PLAIN, max_size=3)))))
def test_rpc_read_control(data):
    def read_all(conn: socket.socket) -> None:
        try:
            while True:
                _, body = rpc_wire.read_control(conn, net.Deadline(3.0), "fuzz")
                assert isinstance(body, dict)
                with contextlib.suppress(ProtocolError):
                    _node_info(body, 0)
        except (PeerLostError, ProtocolError):
            pass
        finally:
            conn.close()

    converse(read_all, lambda sock: data)
