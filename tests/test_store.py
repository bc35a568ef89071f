"""TCPStore, FileStore and PrefixStore."""

from __future__ import annotations

import multiprocessing as mp
import socket
import struct
import threading
import time

import pytest

from pyxccl.bootstrap import FileStore, PrefixStore, Store, TCPStore
from pyxccl.errors import CollectiveTimeout, InvalidArgument


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pyxccl-store")]


@pytest.fixture
def server():
    s = TCPStore("127.0.0.1", 0, is_server=True, timeout=10.0)
    yield s
    s.close()


def _child(port: int, q) -> None:
    c = TCPStore("127.0.0.1", port, is_server=False, timeout=10.0)
    try:
        got = c.get("from_parent")  # blocks until the parent sets it
        c.set("from_child", b"child \x00 bytes")
        total = c.add("counter", 5)
        c.wait(["go", "from_parent"])
        flags = (c.check(["go"]), c.check(["go", "never"]))
        c.set("done", b"1")
        q.put((got, total, flags))
    finally:
        c.close()


def test_tcp_store_across_processes(server):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(server.port, q))
    p.start()
    time.sleep(0.1)
    server.set("from_parent", b"\x01\x02parent")
    assert server.get("from_child") == b"child \x00 bytes"
    assert server.add("counter", 2) in (2, 7)
    server.set("go", b"")
    assert server.get("done") == b"1"
    got, total, flags = q.get(timeout=10.0)
    p.join(10.0)
    assert p.exitcode == 0
    assert got == b"\x01\x02parent"
    assert total in (5, 7) and server.add("counter", 0) == 7
    assert server.get("counter") == b"7"
    assert flags == (True, False)


def test_tcp_store_basics_and_timeouts(server):
    client = TCPStore("127.0.0.1", server.port, timeout=5.0)
    try:
        client.set("k", b"v1")
        client.set("k", b"v2")
        assert server.get("k") == b"v2"
        assert server.check(["k"]) and not server.check(["k", "nope"])
        assert client.delete("k") and not client.delete("k")
        assert not server.check("k")
        t0 = time.monotonic()
        with pytest.raises(CollectiveTimeout, match="'missing-key'"):
            client.get("missing-key", timeout=0.3)
        with pytest.raises(CollectiveTimeout, match=r"\['b'\]"):
            server.set("a", b"")
            client.wait(["a", "b"], timeout=0.3)
        assert time.monotonic() - t0 < 2.0
        client.set("text", b"x")
        with pytest.raises(InvalidArgument, match="integer counter"):
            client.add("text", 1)
        for bad_key in ("", "nul\0inside", "k" * 70000, 7):
            with pytest.raises(InvalidArgument):
                client.set(bad_key, b"x")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            client.set("v", "not bytes")  # type: ignore[arg-type]
        assert client.add("neg", -3) == -3
    finally:
        client.close()


def test_blocked_get_does_not_block_other_threads(server):
    client = TCPStore("127.0.0.1", server.port, timeout=5.0)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(client.get("later")))
    t.start()
    time.sleep(0.1)
    client.set("later", b"ok")  # same client object, another connection from the pool
    t.join(5.0)
    assert got == [b"ok"]
    client.close()


def test_atomic_add_from_threads(server):
    clients = [TCPStore("127.0.0.1", server.port, timeout=5.0) for _ in range(4)]

    def bump(c: TCPStore) -> None:
        for _ in range(50):
            c.add("ctr", 1)

    ts = [threading.Thread(target=bump, args=(c,)) for c in clients]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10.0)
    assert server.add("ctr", 0) == 200
    for c in clients:
        c.close()


def test_client_retries_until_server_is_up():
    port = free_port()
    box: list[TCPStore] = []
    t = threading.Thread(target=lambda: box.append(TCPStore("127.0.0.1", port, timeout=5.0)))
    t.start()
    time.sleep(0.3)
    srv = TCPStore("127.0.0.1", port, is_server=True, timeout=5.0)
    t.join(5.0)
    box[0].set("x", b"y")
    assert srv.get("x") == b"y"
    box[0].close()
    srv.close()


def test_client_gives_up_at_deadline():
    t0 = time.monotonic()
    with pytest.raises(CollectiveTimeout, match="TCP store 127.0.0.1"):
        TCPStore("127.0.0.1", free_port(), timeout=0.3)
    assert time.monotonic() - t0 < 2.0


def test_server_survives_garbage_and_leaks_no_threads():
    before = len(store_threads())
    srv = TCPStore("127.0.0.1", 0, is_server=True, timeout=5.0)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3.0) as s:
        s.sendall(struct.pack("!BIII", 1, 0, 0xFFFFFFF0, 0xFFFFFFF0))  # absurd lengths
        assert s.recv(10) == b""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3.0) as s:
        s.sendall(struct.pack("!BIII", 99, 0, 1, 0) + b"k")  # unknown op
        status, n = struct.unpack("!BI", s.recv(5))
        assert status == 2 and b"unknown" in s.recv(n)
    srv.set("still", b"works")
    assert srv.get("still") == b"works"
    waiter = TCPStore("127.0.0.1", srv.port, timeout=5.0)
    errs: list[Exception] = []

    def wait_forever() -> None:
        try:
            waiter.get("never", timeout=30.0)
        except Exception as exc:  # noqa: BLE001
            errs.append(exc)

    t = threading.Thread(target=wait_forever)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    srv.close()
    t.join(5.0)
    assert time.monotonic() - t0 < 2.0 and errs  # the waiter was released
    waiter.close()
    assert len(store_threads()) == before


def test_file_store(tmp_path):
    a = FileStore(tmp_path / "store", timeout=5.0)
    b = FileStore(str(tmp_path / "store"), timeout=5.0)
    a.set("key/with/slashes", b"value")
    assert b.get("key/with/slashes") == b"value"
    assert b.check(["key/with/slashes"]) and not b.check(["key/with/slashes", "x"])
    threading.Timer(0.1, lambda: a.set("late", b"L")).start()
    assert b.get("late") == b"L"
    b.wait(["late", "key/with/slashes"])
    with pytest.raises(CollectiveTimeout, match="'absent'"):
        b.get("absent", timeout=0.2)
    with pytest.raises(CollectiveTimeout, match=r"\['absent'\]"):
        b.wait(["late", "absent"], timeout=0.2)
    stores = [FileStore(tmp_path / "store") for _ in range(4)]

    def bump(s: FileStore) -> None:
        for _ in range(25):
            s.add("ctr", 1)

    ts = [threading.Thread(target=bump, args=(s,)) for s in stores]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10.0)
    assert a.add("ctr", 0) == 100 and a.get("ctr") == b"100"
    assert a.delete("late") and not a.delete("late")
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "store").iterdir())


def test_prefix_store(server, tmp_path):
    for base in (server, FileStore(tmp_path, timeout=5.0)):
        p = PrefixStore("job7", base)
        p.set("a", b"1")
        assert base.get("job7/a") == b"1" and p.get("a") == b"1"
        assert p.add("n", 3) == 3 and base.get("job7/n") == b"3"
        assert p.check(["a"]) and not base.check(["a"])
        with pytest.raises(CollectiveTimeout, match="'b'"):
            p.wait(["a", "b"], timeout=0.2)
        assert p.delete("a") and not base.check(["job7/a"])
        p.close()  # a view: the base store stays usable
        base.set("after", b"x")


def test_store_is_abstract():
    with pytest.raises(TypeError):
        Store()  # type: ignore[abstract]
