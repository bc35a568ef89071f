"""Authenticated membership under attack: a real 3-rank communicator (socket transport) keeps
working while a stranger hits every listening port it has, during init and after.

The ranks are subprocesses; this process hosts the bootstrap root (``get_unique_id``) and a
TCPStore protected by the unique id's secret, through which the ranks publish their listen
addresses. The attacker connects to every listening port of every rank (found in /proc,
so a listener nobody told this test about is attacked too) and to the root and the store,
with (a) random bytes, (b) a handshake answering the challenge with a wrong secret and
(c) the answer a legitimate client computes for one connection's challenge, replayed on a
new connection. Each connection must be closed by the listener, nothing the attacker sent
may take effect, and the collectives (allreduce, allgather, checked against numpy) must
keep completing with correct results. Only loopback addresses are targets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pyxccl.bootstrap import TCPStore, get_unique_id, net
from pyxccl.bootstrap import ring as ring_mod
from pyxccl.bootstrap import root as root_mod
from pyxccl.bootstrap import store as store_mod
from pyxccl.errors import PeerLostError
from pyxccl.transport.socket import wire as sk_wire

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

NRANKS = 3
WRONG = b"not the secret!!"
SRC = str(Path(__file__).resolve().parent.parent / "src")

_RANK = r"""
import json, os, sys
import numpy as np
import pyxccl
from pyxccl.bootstrap import TCPStore, UniqueId

rank, nranks, store_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
uid = UniqueId.from_string(sys.argv[3])
store = TCPStore("127.0.0.1", store_port, secret=uid.secret, timeout=60)
store.set(f"pid/{rank}", str(os.getpid()).encode())
if rank == nranks - 1:
    store.get("go")  # the other ranks wait in init (at the root) while the test attacks
comm = pyxccl.Communicator(nranks, uid, rank)

def check(it):
    base = np.arange(4096, dtype=np.float32)
    x = base * (rank + 1) + it
    comm.all_reduce(x)
    ref = sum(base * (r + 1) + it for r in range(nranks))
    assert np.array_equal(x, ref), f"rank {rank}: allreduce wrong at iteration {it}"
    out = np.empty(1024 * nranks, np.float32)
    comm.all_gather(np.full(1024, rank * 10 + it, np.float32), out)
    ref = np.repeat(np.arange(nranks, dtype=np.float32) * 10 + it, 1024)
    assert np.array_equal(out, ref), f"rank {rank}: allgather wrong at iteration {it}"

check(0)
tr = comm._transports["socket"]
store.set(f"addrs/{rank}", json.dumps({
    "ring": list(comm._bootstrap.address),
    "peers": [list(a) for a in comm._bootstrap.peer_addresses()],
    "transport": [tr._advertise, tr._port]}).encode())
it = 1
while True:  # collectives keep running while the attack goes on; all ranks agree when to stop
    check(it)
    flag = np.array([1 if store.check(["done"]) else 0], np.int32)
    comm.all_reduce(flag, op="max")
    it += 1
    if flag[0]:
        break
check(it)
store.set(f"result/{rank}", f"ok after {it} rounds".encode())
comm.destroy()
store.close()
"""


# ------------------------------------------------------------------ /proc: listening ports

def listening_ports(pid: int) -> set[int]:
    """Ports of the loopback/wildcard IPv4 TCP sockets that process ``pid`` listens on."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            ip_hex, port_hex = parts[1].split(":")
            ip = socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1])
            if parts[3] == "0A" and parts[9] in inodes and (ip.startswith("127.") or ip == "0.0.0.0"):
                ports.add(int(port_hex, 16))
    return ports


# ------------------------------------------------------------------ the attacks

class Attacker:
    """Runs the three attacks against one port; records every connection it made."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.made = 0
        self.refused = 0
        self.lock = threading.Lock()

    def _connect(self, port: int, kind: str) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        except (ConnectionRefusedError, ConnectionResetError) as exc:
            # nothing listens there (any more: the root, once its rendezvous is over)
            if isinstance(exc, ConnectionResetError) and kind != "root":
                raise
            with self.lock:
                self.refused += 1
            return None
        with self.lock:
            self.made += 1
        return s

    def _challenge(self, s: socket.socket, kind: str) -> bytes | None:
        """The nonce of the listener's challenge; None when the root closed meanwhile (its
        rendezvous is over: it shuts every connection down and stops listening)."""
        try:
            got = net.recv_exact(s, net.CHALLENGE_BYTES, net.Deadline(5.0), "listener")
        except PeerLostError:
            if kind != "root":
                raise
            s.close()
            with self.lock:
                self.refused += 1
            return None
        assert bytes(got[:4]) == b"PXCH", f"no challenge: {bytes(got)!r}"
        return bytes(got[4:])

    @staticmethod
    def expect_closed(s: socket.socket, what: str, timeout: float = 12.0) -> None:
        """The listener must close the connection (EOF or reset) and send nothing but a challenge."""
        end = time.monotonic() + timeout
        s.settimeout(0.2)
        extra = b""
        try:
            while True:
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    assert time.monotonic() < end, f"{what}: the listener kept the attacker's connection"
                    continue
                except OSError:
                    return  # reset: closed
                if not chunk:
                    assert not extra or extra[:4] == b"PXCH", f"{what}: the listener answered {extra!r}"
                    return
                extra += chunk
        finally:
            s.close()

    def _legit(self, kind: str, nonce: bytes) -> bytes:
        """What a legitimate client of ``kind`` sends in answer to ``nonce`` (the real client code)."""
        if kind == "socket":
            return sk_wire.make_hello(sk_wire.new_token(), 0, 1, 512 * 1024, 4, self.secret, nonce)
        label = {"root": root_mod.ROOT_LABEL, "ring": ring_mod.RING_LABEL, "store": store_mod.STORE_LABEL}[kind]
        answer = net.answer(self.secret, label, nonce)
        if kind == "root":
            addr = net.pack_addr("127.0.0.1", 9)
            return answer + root_mod.HELLO.pack(0, NRANKS, len(addr)) + addr
        if kind == "ring":
            return answer + ring_mod.RANK.pack(0) + ring_mod.FRAME.pack(ring_mod.FRAME_MAGIC, 0, 77, 4) + b"evil"
        return answer + _store_set("attacker", b"was here")

    def garbage(self, port: int, kind: str) -> None:
        s = self._connect(port, kind)
        if s is None:
            return
        with contextlib.suppress(OSError):
            s.sendall(os.urandom(300))
            s.shutdown(socket.SHUT_WR)
        self.expect_closed(s, f"random bytes to {kind} port {port}")

    def wrong_secret(self, port: int, kind: str) -> None:
        s = self._connect(port, kind)
        if s is None:
            return
        try:
            nonce = self._challenge(s, kind)
        except Exception:
            s.close()
            raise
        if nonce is None:
            return
        if kind == "socket":
            payload = sk_wire.make_hello(sk_wire.new_token(), 0, 1, 512 * 1024, 4, WRONG, nonce)
        else:
            payload = net.answer(WRONG, ring_mod.RING_LABEL if kind == "ring" else
                                 root_mod.ROOT_LABEL if kind == "root" else store_mod.STORE_LABEL, nonce)
            payload += _store_set("attacker", b"wrong secret") if kind == "store" else os.urandom(64)
        with contextlib.suppress(OSError):
            s.sendall(payload)
        self.expect_closed(s, f"wrong secret to {kind} port {port}")

    def replay(self, port: int, kind: str) -> None:
        first = self._connect(port, kind)
        if first is None:
            return
        try:
            nonce1 = self._challenge(first, kind)
        finally:
            first.close()  # the recorded answer is never delivered where it was valid
        if nonce1 is None:
            return
        recorded = self._legit(kind, nonce1)
        s = self._connect(port, kind)
        if s is None:
            return
        try:
            nonce2 = self._challenge(s, kind)
        except Exception:
            s.close()
            raise
        if nonce2 is None:
            return
        assert nonce2 != nonce1, f"{kind} port {port} reused a challenge nonce"
        with contextlib.suppress(OSError):
            s.sendall(recorded)
        self.expect_closed(s, f"replayed handshake to {kind} port {port}")

    def all(self, port: int, kind: str) -> None:
        self.garbage(port, kind)
        self.wrong_secret(port, kind)
        self.replay(port, kind)


def _store_set(key: str, value: bytes) -> bytes:
    k = key.encode()
    return store_mod.REQ.pack(store_mod.OP_SET, 0, len(k), len(value)) + k + value


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# ------------------------------------------------------------------ the test

def test_attacks_during_and_after_init_do_not_disturb_the_communicator():
    warned = Warnings()
    logger = logging.getLogger("pyxccl")
    logger.addHandler(warned)
    uid = get_unique_id(timeout=120.0)  # the root runs in this process
    store = TCPStore("127.0.0.1", 0, is_server=True, timeout=60.0, secret=uid.secret)
    atk = Attacker(uid.secret)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
               PYXCCL_TRANSPORT="socket", PYXCCL_TIMEOUT="60", PYXCCL_DEBUG="WARN")
    logs = [tempfile.TemporaryFile() for _ in range(NRANKS)]
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(r), str(NRANKS), str(uid), str(store.port)],
                              env=env, stdout=logs[r], stderr=subprocess.STDOUT) for r in range(NRANKS)]
    stop = threading.Event()
    errors: list[BaseException] = []
    attacked: dict[str, set[int]] = {"init": set(), "after": set()}

    def tail(r: int) -> str:
        logs[r].seek(0)
        return logs[r].read().decode(errors="replace")[-3000:]

    def background() -> None:
        """Keeps attacking the root, the store and whatever the ranks listen on until init is over."""
        try:
            while not stop.is_set():
                atk.all(uid.port, "root")
                atk.garbage(store.port, "store")
                for p in procs:
                    for port in listening_ports(p.pid):
                        atk.all(port, "ring")  # during init: the ring (the transport's has the same fate)
                        attacked["init"].add(port)
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    bg = threading.Thread(target=background, daemon=True)
    try:
        # ranks 0 and 1 sit in init: wait until each has its ring listener up, attack everything once
        pids = {}
        end = time.monotonic() + 60
        while not all(r in pids and listening_ports(pids[r]) for r in range(NRANKS - 1)):
            assert time.monotonic() < end, "ranks did not start: " + tail(0)
            for r in range(NRANKS):
                assert procs[r].poll() is None, f"rank {r} died:\n{tail(r)}"
                if store.check([f"pid/{r}"]):
                    pids[r] = int(store.get(f"pid/{r}"))
            time.sleep(0.05)
        time.sleep(0.2)  # in the rendezvous now
        atk.all(uid.port, "root")
        atk.all(store.port, "store")
        for r in range(NRANKS - 1):
            for port in listening_ports(pids[r]):
                atk.all(port, "ring")
                attacked["init"].add(port)
        bg.start()
        store.set("go", b"1")  # the last rank joins; the background attacker goes on through init

        addrs = [json.loads(store.get(f"addrs/{r}", timeout=60)) for r in range(NRANKS)]
        stop.set()
        bg.join(60)
        assert not bg.is_alive() and not errors, errors
        # after init: every rank's ring listener (as its peers know it), transport listener, and
        # anything else it listens on; the root (its rendezvous is over) and the store
        known: dict[int, str] = {}
        for a in addrs:
            known[a["ring"][1]] = "ring"
            known[a["transport"][1]] = "socket"
            assert a["transport"][0].startswith("127.") and a["ring"][0].startswith("127.")
            assert sorted(map(tuple, a["peers"])) == sorted(tuple(b["ring"]) for b in addrs)
        for r, p in enumerate(procs):
            ports = listening_ports(p.pid)
            assert {addrs[r]["ring"][1], addrs[r]["transport"][1]} <= ports, (r, ports, addrs[r])
            for port in ports:
                atk.all(port, known.get(port, "ring"))
                attacked["after"].add(port)
        atk.all(uid.port, "root")
        atk.all(store.port, "store")
        assert not store.check(["attacker"])  # nothing sent without the secret took effect
        store.set("done", b"1")

        for r in range(NRANKS):
            assert procs[r].wait(90) == 0, f"rank {r} failed:\n{tail(r)}"
            assert store.get(f"result/{r}").startswith(b"ok"), tail(r)
        out = [tail(r) for r in range(NRANKS)]
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        store.close()
        logger.removeHandler(warned)
    print(f"\nattack: {atk.made} connections ({atk.refused} refused: nothing listening), ports attacked "
          f"during init {sorted(attacked['init'])}, after init {sorted(attacked['after'])}")
    assert attacked["init"] and len(attacked["after"]) >= 2 * NRANKS, attacked
    assert atk.made > 20
    # strangers were logged at WARN: by the ranks (ring, socket transport) and here (root, store)
    assert all("failed authentication" in o for o in out), out
    assert all("socket: dropped a connection" in o and "hello fails authentication" in o for o in out), out
    assert any("bootstrap root" in m and "failed authentication" in m for m in warned.messages)
    assert any("store server" in m and "failed authentication" in m for m in warned.messages)
