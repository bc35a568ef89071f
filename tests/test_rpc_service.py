"""pRPC nodes in one process (each RpcService is a node with its own sockets): the master's
view, dealers, payloads over the wire, the same-node path, lazy front ends, failover,
timeouts, lanes, and the pyxccl-master console script."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import ml_dtypes
import numpy as np
import pytest

from pyxccl import config, rpc
from pyxccl.errors import CollectiveTimeout, ConfigError, InvalidArgument, PeerLostError

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture
def master():
    m = rpc.Master("127.0.0.1", 0)
    yield m
    m.close()


@pytest.fixture
def nodes(master):
    made: list[rpc.RpcService] = []

    def make(n: int = 1, **kw) -> list[rpc.RpcService]:
        new = [rpc.RpcService(master.address_str, timeout=kw.pop("timeout", 10), **kw)
               for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for svc in made:
        svc.close()


def _until(pred, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def test_master_view_join_update_leave(master, nodes):
    a, b, c = nodes(3)
    assert sorted([a.rank, b.rank, c.rank]) == [0, 1, 2]
    _until(lambda: all(len(n.view()) == 3 for n in (a, b, c)))
    assert a.view()[b.rank].port == b.address[1]
    srv = b.create_server("svc")
    assert a.wait_servers("svc", 1, 5) == [b.rank]
    _until(lambda: c.servers_of("svc") == [b.rank])
    assert master.nodes()[b.rank]["services"] == ["svc"]
    srv.close()
    _until(lambda: a.servers_of("svc") == [] and c.servers_of("svc") == [])
    c.close()
    _until(lambda: c.rank not in a.view() and c.rank not in b.view())
    d, = nodes(1)
    assert d.rank == 3  # ranks are never reused
    _until(lambda: d.rank in a.view())


def test_wrong_secret_is_refused():
    with rpc.Master("127.0.0.1", 0, secret=b"right") as m:
        with pytest.raises(rpc.RpcError):
            rpc.RpcService(m.address_str, secret=b"wrong", timeout=5)
        ok = rpc.RpcService(m.address_str, secret=b"right", timeout=5)
        ok.close()


PAYLOADS = [
    None, True, False, 0, -1, 2**63 - 1, -2**63, 2**200, -(2**90), 1.5, float("inf"), "", "héllo",
    b"", b"\x00\xff" * 10, b"z" * 200_000, bytearray(b"ab"), [], (), {}, [1, [2, [3, (4,)]]],
    {"a": 1, 2: "b", (1, 2): None, None: [b"x"], 1.5: True}, np.float32(2.5), np.int64(-7),
]


def _arrays() -> list[np.ndarray]:
    out = [np.arange(n, dtype=dt) for dt in (np.int8, np.uint16, np.int32, np.int64, np.float16,
                                             np.float32, np.float64, np.complex64)
           for n in (0, 3, 5000)]
    out += [np.array(3.5), np.zeros((0, 4)), np.arange(24.0).reshape(2, 3, 4),
            np.arange(100.0)[::3], np.arange(10, dtype=">i4"), np.ones(3000, bool),
            np.arange(4000).astype(ml_dtypes.bfloat16), np.asfortranarray(np.ones((40, 50)))]
    return out


def _same(x, y) -> bool:
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.shape == y.shape and \
            x.dtype.newbyteorder("=") == y.dtype.newbyteorder("=") and \
            np.array_equal(x.astype(y.dtype), y)
    if isinstance(x, (bytearray, memoryview)):
        return y == bytes(x)
    return type(x) is type(y) and x == y


def test_payloads_over_the_wire(nodes):
    a, b = nodes(2)
    a.create_server("echo").serve(lambda p: p)
    client = b.create_client("echo")
    client.wait_servers(1, 5)
    for p in PAYLOADS + _arrays():
        got = client.call(p)
        assert _same(p, got), (p, got)
    got = client.call({"w": np.arange(1 << 18, dtype=np.float32), "b": np.arange(5)})
    assert got["w"].flags.writeable and got["w"].base is not None  # a view of its own buffer
    with pytest.raises(InvalidArgument):
        client.call({1, 2})
    with pytest.raises(InvalidArgument):
        client.call(np.array([object()]))


def test_same_node_server_is_reached_without_the_network(nodes):
    a, = nodes(1)
    seen = []
    a.create_server("local").serve(lambda p: seen.append(p) or p)
    client = a.create_client("local")
    arr = np.arange(10)
    assert client.call(arr) is arr and seen[0] is arr  # the very object: no encoding, no copy
    assert a._fes == {} and a._links == {}
    with pytest.raises(InvalidArgument):
        client.call(object())


def test_front_end_connects_lazily(nodes):
    a, b = nodes(2)
    a.create_server("lazy").serve(lambda p: p + 1)
    client = b.create_client("lazy")
    client.wait_servers(1, 5)
    time.sleep(0.1)
    assert b._fes == {} and a._links == {}
    assert client.call(1) == 2
    fe = b._fes[a.rank]
    assert all(s is not None for s in fe.socks)
    _until(lambda: len(a._links) == 1)


def test_no_such_server_fails_at_once(nodes):
    a, = nodes(1)
    client = a.create_client("nobody")
    t0 = time.monotonic()
    with pytest.raises(rpc.NoSuchServer) as info:
        client.call(1)
    assert info.value.code == "ENOSUCHSERVER" and time.monotonic() - t0 < 0.5
    rid = client.send_request(2)
    resp = client.recv_response(timeout=1)
    assert resp.request_id == rid and isinstance(resp.error, rpc.NoSuchServer)
    with pytest.raises(rpc.NoSuchServer):
        resp.result()


def test_every_call_has_a_timeout(nodes):
    a, b = nodes(2)
    mute = a.create_server("mute")  # never answers
    client = b.create_client("mute", timeout=0.3)
    client.wait_servers(1, 5)
    t0 = time.monotonic()
    with pytest.raises(rpc.RpcTimeout) as info:
        client.call(1)
    assert 0.3 <= time.monotonic() - t0 < 1.5
    assert isinstance(info.value, CollectiveTimeout) and info.value.code == "ETIMEDOUT"
    rids = {client.send_request(i, timeout=0.2 + 0.05 * i) for i in range(4)}
    got = {}
    for _ in range(4):
        r = client.recv_response(timeout=3)
        got[r.request_id] = r
    assert set(got) == rids and all(isinstance(r.error, rpc.RpcTimeout) for r in got.values())
    # the server gets the requests late and answers: the answers are dropped, never delivered
    req = mute.recv_request(timeout=1)
    mute.send_response(req, "late")
    with pytest.raises(rpc.RpcTimeout):
        client.recv_response(timeout=0.3)
    for _ in range(4):
        mute.recv_request(timeout=1)  # the four timed-out ones
    with pytest.raises(rpc.RpcTimeout):
        mute.recv_request(timeout=0.05)
    with pytest.raises(rpc.RpcTimeout):
        b.wait_servers("nobody", 1, timeout=0.05)


def test_server_errors_are_typed(nodes):
    a, b = nodes(2)

    def handler(p):
        raise KeyError(p)

    a.create_server("bad").serve(handler)
    client = b.create_client("bad")
    client.wait_servers(1, 5)
    with pytest.raises(rpc.RemoteError, match="KeyError"):
        client.call("k")
    srv = a.create_server("manual")
    c2 = b.create_client("manual")
    c2.wait_servers(1, 5)
    rid = c2.send_request("q")
    req = srv.recv_request(timeout=5)
    assert req.id == rid and req.payload == "q" and req.client == b.rank
    srv.send_error(req, "nope")
    with pytest.raises(InvalidArgument):
        srv.send_response(req, 1)  # exactly one answer per request
    assert str(c2.recv_response(timeout=5).error) == "nope"


def test_load_is_spread_and_closed_servers_fail_over(nodes):
    a, b, c = nodes(3)
    for n in (a, b):
        n.create_server("lb").serve(lambda p, r=n.rank: r, nthreads=2)
    client = c.create_client("lb")
    client.wait_servers(2, 5)
    used = [client.call(i) for i in range(40)]
    assert used.count(a.rank) == used.count(b.rank) == 20
    # b's last server closes with requests queued: they are forwarded to a
    srv_b = b.create_server("slow")
    a_srv = a.create_server("slow").serve(lambda p: ("a", p))
    client2 = c.create_client("slow")
    client2.wait_servers(2, 5)
    rids = [client2.send_request(i) for i in range(20)]
    _until(lambda: srv_b._chan.queue.qsize() > 0)
    srv_b.close()
    got = [client2.recv_response(timeout=5) for _ in rids]
    assert sorted(r.request_id for r in got) == sorted(rids)
    assert all(r.ok and r.payload[0] == "a" for r in got)
    # no server left at all: NoSuchServer at once
    a_srv.close()
    _until(lambda: client2.servers() == [])
    with pytest.raises(rpc.NoSuchServer):
        client2.call(1)
    # a server that comes back is used again
    b.create_server("slow").serve(lambda p: ("b", p))
    client2.wait_servers(1, 5)
    assert client2.call(7) == ("b", 7)


def test_broken_front_end_forwards_its_messages(nodes):
    a, b, c = nodes(3)
    for n in (a, b):
        n.create_server("fo").serve(lambda p, r=n.rank: r)
    client = c.create_client("fo")
    client.wait_servers(2, 5)
    # a's listener dies without the master knowing: c's first connect is refused
    a._listener.close()
    used = [client.call(i) for i in range(10)]
    assert used == [b.rank] * 10  # nothing failed: every message went to b
    assert a.rank in c._broken


def test_lost_in_flight_requests_fail_or_are_resent(nodes):
    a, b, c = nodes(3)
    hold = threading.Event()
    for n in (a, b):
        n.create_server("inflight").serve(
            lambda p, r=n.rank: hold.wait(5) and r, nthreads=4)
    for idem in (False, True):
        client = c.create_client("inflight", idempotent=idem, policy="first", timeout=5)
        client.wait_servers(2, 5)
        first = min(a.rank, b.rank)
        victim = a if a.rank == first else b
        rids = [client.send_request(i) for i in range(4)]
        _until(lambda: len(victim._links) == 1)
        time.sleep(0.1)
        for link in list(victim._links.values()):
            link.close()  # the connection breaks with the requests out
        hold.set()
        got = [client.recv_response(timeout=5) for _ in rids]
        hold.clear()
        if idem:
            assert all(r.ok and r.payload != first for r in got)
        else:
            assert all(isinstance(r.error, rpc.ServerLost) for r in got)
            assert isinstance(got[0].error, PeerLostError) and got[0].error.code == "EPIPE"
        c._broken.clear()


def test_large_messages_do_not_block_small_ones(nodes):
    a, b = nodes(2)
    a.create_server("mix").serve(lambda p: p if isinstance(p, int) else int(p.size), nthreads=2)
    client = b.create_client("mix")
    client.wait_servers(1, 5)
    client.call(0)
    big = np.ones(96 << 20 >> 3)  # 96 MiB
    done = {}

    def send_big():
        done["big"] = client.call(big)
        done["big_t"] = time.monotonic()

    fe = b._fes[a.rank]
    t = threading.Thread(target=send_big)
    t.start()
    bulk = fe.senders[1]
    _until(lambda: bulk.helper is not None and not bulk.queue)  # the helper is writing it
    small = [client.call(i) for i in range(5)]
    small_t = time.monotonic()
    t.join(30)
    assert small == list(range(5)) and done["big"] == big.size
    assert small_t < done["big_t"]


def test_dealers_close_and_wake(nodes):
    a, = nodes(1)
    srv = a.create_server("w")
    out = []
    t = threading.Thread(target=lambda: out.append(pytest.raises(rpc.RpcClosed,
                                                                 srv.recv_request)))
    t.start()
    time.sleep(0.05)
    srv.close()
    t.join(5)
    assert not t.is_alive() and out
    client = a.create_client("w")
    client.close()
    with pytest.raises(rpc.RpcClosed):
        client.call(1)
    with pytest.raises(rpc.RpcClosed):
        client.recv_response(timeout=1)
    with pytest.raises(InvalidArgument):
        a.create_client("w", policy="random")
    with pytest.raises(InvalidArgument):
        a.create_server("")


def test_default_service_and_config(master, monkeypatch):
    monkeypatch.setenv("PYXCCL_RPC_MASTER", master.address_str)
    monkeypatch.setenv("PYXCCL_RPC_TIMEOUT", "7")
    config.reset()
    try:
        svc = rpc.init()
        assert svc.timeout == 7.0 and rpc.init() is svc and rpc.get_service() is svc
        rpc.create_server("dflt").serve(lambda p: p * 2)
        assert rpc.create_client("dflt").call(21) == 42
    finally:
        rpc.shutdown()
        monkeypatch.delenv("PYXCCL_RPC_MASTER")
        config.reset()
    with pytest.raises(ConfigError, match="PYXCCL_RPC_MASTER"):
        rpc.RpcService()


def test_master_console_script():
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "pyxccl.rpc.master", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("pyxccl-master listening on 127.0.0.1:"), line
        addr = line.rsplit(" ", 1)[1].strip()
        with rpc.RpcService(addr, timeout=5) as a, rpc.RpcService(addr, timeout=5) as b:
            a.create_server("cli").serve(lambda p: -p)
            c = b.create_client("cli")
            c.wait_servers(1, 5)
            assert c.call(3) == -3
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    from pyxccl.rpc.master import main
    assert callable(main)
