"""Unique id, interface selection, root rendezvous and the bootstrap ring."""

from __future__ import annotations

import hashlib
import hmac
import logging
import multiprocessing as mp
import socket
import threading
import time

import pytest

from pyxccl import config
from pyxccl.bootstrap import Bootstrap, UniqueId, get_unique_id
from pyxccl.bootstrap import net
from pyxccl.errors import (Aborted, CollectiveTimeout, ConfigError, InvalidArgument,
                           MismatchError, PeerLostError)


def run_ranks(n: int, fn, timeout: float = 20.0) -> list:
    """Run ``fn(rank)`` in n threads; return results by rank, re-raising the first error."""
    out: list = [None] * n
    errs: list = []

    def body(r: int) -> None:
        try:
            out[r] = fn(r)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errs.append(exc)

    ts = [threading.Thread(target=body, args=(r,)) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    assert not any(t.is_alive() for t in ts), "rank threads hung"
    if errs:
        raise errs[0]
    return out


def make_group(n: int, timeout: float = 10.0) -> list[Bootstrap]:
    uid = get_unique_id(timeout=timeout)
    return run_ranks(n, lambda r: Bootstrap(uid, r, n, timeout=timeout))


@pytest.fixture
def group():
    made: list[list[Bootstrap]] = []

    def make(n: int, timeout: float = 10.0) -> list[Bootstrap]:
        made.append(make_group(n, timeout))
        return made[-1]

    yield make
    for g in made:
        for b in g:
            b.close()


class Capture(logging.Handler):
    """Collects pyxccl log records (the pyxccl logger does not propagate to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_log():
    cap = Capture()
    logger = logging.getLogger("pyxccl")
    logger.addHandler(cap)
    yield cap.messages
    logger.removeHandler(cap)


# ---------------------------------------------------------------- unique id

def test_uid_round_trips_bytes_and_string():
    for host in ("10.1.2.3", "fd00::2", "node-17.cluster"):
        uid = UniqueId(bytes(range(16)), host, 29500)
        assert UniqueId.from_bytes(uid.to_bytes()) == uid
        assert UniqueId.from_string(str(uid)) == uid
        assert str(uid).startswith("pyxccl1-") and str(uid).isprintable()
    assert len(UniqueId(b"k" * 16, "10.0.0.1", 1).to_bytes()) == 4 + 16 + 1 + 4 + 2
    assert "secret=<16 bytes>" in repr(uid) and "\\x00" not in repr(uid)
    with pytest.raises(InvalidArgument, match="host name"):
        UniqueId(b"k" * 16, "h" * 300, 1).to_bytes()


@pytest.mark.parametrize("raw, why", [
    (b"", "magic"),
    (b"garbage that is not an id", "magic"),
    (b"PXU\x09" + b"s" * 16 + b"\x04\x7f\x00\x00\x01\x00\x01", "version"),
    (b"PXU\x01" + b"s" * 10, "truncated"),
    (b"PXU\x01" + b"s" * 16 + b"\x09abc", "family"),
    (b"PXU\x01" + b"s" * 16 + b"\x04\x7f\x00", "truncated"),
    (b"PXU\x01" + b"s" * 16 + b"\x04\x7f\x00\x00\x01\x00\x01junk", "trailing"),
    (b"PXU\x01" + b"s" * 16 + b"\x04\x7f\x00\x00\x01\x00\x00", "port"),
    (b"PXU" + b"x" * 5000, "longer"),
])
def test_garbage_uid_bytes_raise_invalid_argument(raw, why):
    with pytest.raises(InvalidArgument, match=why):
        UniqueId.from_bytes(raw)


def test_garbage_uid_strings_raise_invalid_argument():
    with pytest.raises(InvalidArgument, match="pyxccl1-"):
        UniqueId.from_string("nccl-abc")
    with pytest.raises(InvalidArgument, match="base64"):
        UniqueId.from_string("pyxccl1-a")
    with pytest.raises(InvalidArgument):
        UniqueId.from_string("pyxccl1-" + "QUFB" * 4)
    with pytest.raises(InvalidArgument):
        UniqueId(b"short", "1.2.3.4", 5)


def test_get_unique_id_defaults_to_loopback_or_the_given_host():
    uid = get_unique_id(timeout=2.0)
    expect = net.select_address(config.get().socket_ifname) if config.get().socket_ifname else "127.0.0.1"
    assert uid.host == expect
    assert get_unique_id(timeout=2.0, host="127.0.0.1").host == "127.0.0.1"
    assert net.route_address("127.0.0.1") == "127.0.0.1"
    assert 0 < uid.port < 65536 and len(uid.secret) == 16
    assert get_unique_id(timeout=2.0).secret != uid.secret


def test_get_unique_id_uses_comm_id(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PYXCCL_COMM_ID", f"127.0.0.1:{port}")
    config.reset()
    try:
        uid = get_unique_id(timeout=5.0)
        assert (uid.host, uid.port) == ("127.0.0.1", port)
        bs = run_ranks(2, lambda r: Bootstrap(uid, r, 2, timeout=5.0))
        assert run_ranks(2, lambda r: bs[r].allgather(bytes([r]))) == [[b"\0", b"\1"]] * 2
        for b in bs:
            b.close()
    finally:
        monkeypatch.delenv("PYXCCL_COMM_ID")
        config.reset()


# ---------------------------------------------------------------- interfaces

IFS = [net.Interface("lo", "127.0.0.1", True, True),
       net.Interface("docker0", "172.17.0.1", True, False),
       net.Interface("eth0", "10.0.0.5", True, False),
       net.Interface("eth10", "10.0.1.5", True, False),
       net.Interface("ib0", "192.168.0.5", False, False)]


def test_select_address_nccl_syntax():
    assert net.select_address("", IFS) == "10.0.0.5"
    assert net.select_address("", IFS[:2]) == "127.0.0.1"
    assert net.select_address("", []) == "127.0.0.1"
    assert net.select_address("eth1", IFS) == "10.0.1.5"
    assert net.select_address("=eth0", IFS) == "10.0.0.5"
    assert net.select_address("^eth,lo", IFS) == "172.17.0.1"
    assert net.select_address("^=eth0,lo,docker0", IFS) == "10.0.1.5"
    assert net.select_address("lo", IFS) == "127.0.0.1"
    with pytest.raises(ConfigError, match="PYXCCL_SOCKET_IFNAME"):
        net.select_address("ib", IFS)  # ib0 is down
    with pytest.raises(ConfigError, match="eth0=10.0.0.5"):
        net.select_address("=eth", IFS)


def test_list_interfaces_reads_this_namespace():
    ifs = net.list_interfaces()
    assert any(i.loopback and i.address.startswith("127.") for i in ifs)
    for i in ifs:
        socket.inet_aton(i.address)


# ---------------------------------------------------------------- ring collectives

@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_allgather(group, n):
    bs = group(n)
    assert [b.rank for b in bs] == list(range(n)) and all(b.nranks == n for b in bs)
    want = [bytes([r]) * (r * 3 + 1) for r in range(n)]
    assert run_ranks(n, lambda r: bs[r].allgather(want[r])) == [want] * n
    want2 = [b"" if r % 2 else f"second-{r}".encode() for r in range(n)]
    assert run_ranks(n, lambda r: bs[r].allgather(want2[r])) == [want2] * n
    addrs = bs[0].peer_addresses()
    assert addrs == [b.address for b in bs]


def test_tagged_send_recv_any_pair_out_of_order(group):
    n = 4
    bs = group(n)

    def body(r: int) -> dict:
        for peer in range(n):
            for tag in (0, 1, 2, 1 << 40):
                bs[r].send(peer, tag, f"{r}->{peer}:{tag}".encode())
        bs[r].send(r, 5, b"first")
        bs[r].send(r, 5, b"second")
        got = {}
        for peer in reversed(range(n)):
            for tag in (1 << 40, 2, 0, 1):
                got[(peer, tag)] = bs[r].recv(peer, tag)
        got["fifo"] = (bs[r].recv(r, 5), bs[r].recv(r, 5))
        return got

    for r, got in enumerate(run_ranks(n, body)):
        for peer in range(n):
            for tag in (0, 1, 2, 1 << 40):
                assert got[(peer, tag)] == f"{peer}->{r}:{tag}".encode()
        assert got["fifo"] == (b"first", b"second")


def test_large_message_and_bytes_like(group):
    bs = group(2)
    blob = bytes(range(256)) * 4096 + b"tail"
    bs[0].send(1, 3, memoryview(bytearray(blob)))
    assert bs[1].recv(0, 3) == blob


def test_broadcast(group):
    n = 5
    bs = group(n)
    assert run_ranks(n, lambda r: bs[r].broadcast(b"from two" if r == 2 else None, 2)) \
        == [b"from two"] * n
    assert run_ranks(n, lambda r: bs[r].broadcast(bytes([r]), 0)) == [b"\0"] * n
    with pytest.raises(InvalidArgument):
        bs[0].broadcast(None, 0)


def test_barrier_waits_for_everyone(group):
    n = 5
    bs = group(n)
    entered: list[float] = [0.0] * n

    def body(r: int) -> float:
        time.sleep(0.05 * r)
        entered[r] = time.monotonic()
        bs[r].barrier()
        return time.monotonic()

    left = run_ranks(n, body)
    assert min(left) >= max(entered)
    run_ranks(n, lambda r: bs[r].barrier())  # back to back barriers


def test_recv_timeout_names_peer_and_tag(group):
    bs = group(2)
    t0 = time.monotonic()
    with pytest.raises(CollectiveTimeout, match=r"rank 1 with tag 7"):
        bs[0].recv(1, 7, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 1.5


def test_invalid_arguments(group):
    bs = group(2)
    for bad in (2, -1, "1", True):
        with pytest.raises(InvalidArgument, match="peer"):
            bs[0].send(bad, 0, b"x")
    for bad in (-1, -4, 1 << 62, 1.5):
        with pytest.raises(InvalidArgument, match="tag"):
            bs[0].recv(1, bad)
    with pytest.raises(InvalidArgument, match="bytes"):
        bs[0].send(1, 0, "text")
    uid = UniqueId(b"s" * 16, "127.0.0.1", 1)
    with pytest.raises(InvalidArgument, match="rank"):
        Bootstrap(uid, 2, 2)
    with pytest.raises(InvalidArgument, match="nranks"):
        Bootstrap(uid, 0, 0)
    with pytest.raises(InvalidArgument, match="UniqueId"):
        Bootstrap(str(uid), 0, 1)  # type: ignore[arg-type]


def test_peer_lost_and_close(group):
    bs = group(3)
    assert run_ranks(3, lambda r: bs[r].allgather(b"x")) == [[b"x"] * 3] * 3
    bs[1].close()
    bs[1].close()  # idempotent
    t0 = time.monotonic()
    with pytest.raises(PeerLostError, match="rank 1"):
        bs[2].recv(1, 0, timeout=5.0)
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(Aborted):
        bs[1].recv(0, 0, timeout=1.0)
    with pytest.raises(Aborted):
        bs[1].send(0, 0, b"")


def test_close_wakes_a_waiting_recv(group):
    bs = group(2)
    threading.Timer(0.2, bs[0].close).start()
    with pytest.raises(Aborted):
        bs[0].recv(1, 0, timeout=5.0)


def test_wrong_secret_is_rejected_and_ring_still_works(group, warnings_log):
    bs = group(3)
    with socket.create_connection(bs[1].address, timeout=3.0) as s:
        challenge = net.recv_exact(s, 20, net.Deadline(3.0))
        assert challenge[:4] == b"PXCH"
        forged = hmac.new(b"not the secret!!", b"pyxccl-ring\0" + bytes(challenge[4:]),
                          hashlib.sha256).digest()
        s.sendall(forged + (0).to_bytes(4, "big") + b"\0" * 64)
        s.settimeout(3.0)
        assert s.recv(100) == b""  # closed by the listener
    assert any("failed authentication" in m for m in warnings_log)
    assert run_ranks(3, lambda r: bs[r].allgather(bytes([r]))) == [[b"\0", b"\1", b"\2"]] * 3
    bs[0].send(1, 9, b"still fine")
    assert bs[1].recv(0, 9) == b"still fine"


def test_root_drops_strangers_and_bad_hellos(warnings_log):
    uid = get_unique_id(timeout=10.0)
    idle = socket.create_connection((uid.host, uid.port))  # says nothing
    with socket.create_connection((uid.host, uid.port), timeout=3.0) as junk:
        junk.recv(20)
        junk.sendall(b"\xff" * 40)
        assert junk.recv(10) == b""
    first = threading.Thread(target=lambda: results.append(Bootstrap(uid, 0, 3, timeout=10.0)))
    results: list[Bootstrap] = []
    first.start()
    time.sleep(0.3)  # rank 0 is registered with nranks=3
    with pytest.raises(MismatchError, match="joined twice"):
        Bootstrap(uid, 0, 3, timeout=5.0)
    with pytest.raises(MismatchError, match="nranks=4"):
        Bootstrap(uid, 1, 4, timeout=5.0)
    rest = run_ranks(2, lambda r: Bootstrap(uid, r + 1, 3, timeout=10.0))
    first.join(10.0)
    bs = results + rest
    assert run_ranks(3, lambda r: bs[r].allgather(bytes([r]))) == [[b"\0", b"\1", b"\2"]] * 3
    assert any("failed authentication" in m for m in warnings_log)
    idle.close()
    for b in bs:
        b.close()


def test_root_timeout_names_missing_ranks():
    uid = get_unique_id(timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(CollectiveTimeout, match=r"ranks \[1, 2\] of 3"):
        Bootstrap(uid, 0, 3, timeout=5.0)
    assert time.monotonic() - t0 < 3.0


def test_rank_timeout_when_root_is_gone():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uid = UniqueId(b"s" * 16, "127.0.0.1", port)
    with pytest.raises(CollectiveTimeout, match="bootstrap root"):
        Bootstrap(uid, 0, 2, timeout=0.3)


def _process_rank(uid_text: str, rank: int, n: int, q) -> None:
    b = Bootstrap(UniqueId.from_string(uid_text), rank, n, timeout=10.0)
    got = b.allgather(f"proc{rank}".encode())
    b.send((rank + 1) % n, 4, f"hello from {rank}".encode())
    msg = b.recv((rank - 1) % n, 4)
    b.barrier()
    b.close()
    q.put((rank, got, msg))


def test_bootstrap_across_processes():
    ctx = mp.get_context("spawn")
    uid = get_unique_id(timeout=20.0)
    q = ctx.Queue()
    procs = [ctx.Process(target=_process_rank, args=(str(uid), r, 3, q)) for r in (1, 2)]
    for p in procs:
        p.start()
    b = Bootstrap(uid, 0, 3, timeout=15.0)
    got = b.allgather(b"proc0")
    b.send(1, 4, b"hello from 0")
    msg = b.recv(2, 4)
    b.barrier()
    res = sorted(q.get(timeout=15.0) for _ in procs)
    for p in procs:
        p.join(10.0)
        assert p.exitcode == 0
    b.close()
    want = [b"proc0", b"proc1", b"proc2"]
    assert got == want and msg == b"hello from 2"
    assert res == [(1, want, b"hello from 0"), (2, want, b"hello from 1")]


def _netns_ok() -> bool:
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"pxchk{os.getpid() % 100000}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


@pytest.mark.skipif(not _netns_ok(), reason="needs root and iproute2 network namespaces")
def test_rank_in_another_network_namespace(monkeypatch):
    """A rank in its own namespace advertises that namespace's interface address."""
    import os
    import subprocess
    import sys

    tag = os.getpid() % 100000
    ns, va, vb = f"pxns{tag}", f"pxa{tag}", f"pxb{tag}"
    sh = [["ip", "netns", "add", ns], ["ip", "link", "add", va, "type", "veth", "peer", "name", vb],
          ["ip", "link", "set", vb, "netns", ns], ["ip", "addr", "add", "10.213.0.1/24", "dev", va],
          ["ip", "link", "set", va, "up"],
          ["ip", "netns", "exec", ns, "ip", "addr", "add", "10.213.0.2/24", "dev", vb],
          ["ip", "netns", "exec", ns, "ip", "link", "set", vb, "up"],
          ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
    try:
        for cmd in sh:
            subprocess.run(cmd, check=True, capture_output=True)
        monkeypatch.setenv("PYXCCL_SOCKET_IFNAME", "=" + va)
        config.reset()
        uid = get_unique_id(timeout=10.0)
        assert uid.host == "10.213.0.1"
        code = ("import sys; from pyxccl.bootstrap import Bootstrap, UniqueId; "
                "b = Bootstrap(UniqueId.from_string(sys.argv[1]), 1, 2, timeout=10.0); "
                "g = b.allgather(b'ns'); b.barrier(); b.close(); print(g[0].decode())")
        env = {k: v for k, v in os.environ.items() if k != "PYXCCL_SOCKET_IFNAME"}
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, str(uid)],
                                 env=env, stdout=subprocess.PIPE, text=True)
        b = Bootstrap(uid, 0, 2, timeout=10.0)
        got = b.allgather(b"root")
        b.barrier()
        addrs = b.peer_addresses()
        b.close()
        out, _ = child.communicate(timeout=10.0)
        assert child.returncode == 0 and out.strip() == "root"
        assert got == [b"root", b"ns"] and addrs[1][0] == "10.213.0.2"
    finally:
        config.reset()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", va], capture_output=True)
