"""pRPC across processes: load balancing, SIGKILL failover, a server coming back, accumulators.

The master runs in the pytest process; servers and clients are spawned processes (one
RpcService each) on loopback. Every wait is bounded; a child reports an exception as a
traceback string instead of a result.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
import pytest

from pyxccl import rpc

CTX = mp.get_context("spawn")
DEADLINE = 40.0
SID = "test.double"


def _child(fn: Callable[..., Any], q: Any, *args: Any) -> None:
    try:
        q.put(fn(*args))
    except BaseException:  # noqa: BLE001 - reported to the parent
        q.put({"error": traceback.format_exc()})


def _spawn(fn: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    q = CTX.Queue()
    p = CTX.Process(target=_child, args=(fn, q, *args), daemon=True)
    p.start()
    return p, q


def _result(q: Any, what: str, timeout: float = DEADLINE) -> Any:
    res = q.get(timeout=timeout)
    assert not (isinstance(res, dict) and "error" in res), f"{what} failed:\n{res['error']}"
    return res


def _reap(procs: list[Any]) -> None:
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


# ------------------------------------------------------------------ children

def _server(master: str, stop: Any, ready: Any) -> dict:
    svc = rpc.RpcService(master, timeout=10)
    served = [0]
    lock = threading.Lock()

    def handler(msg: dict) -> dict:
        with lock:
            served[0] += 1
        return {"key": msg["key"], "y": 2 * msg["x"] + 1, "server": svc.rank}

    srv = svc.create_server(SID).serve(handler, nthreads=2)
    ready.set()
    stop.wait(DEADLINE)
    srv.close()
    svc.close()
    return {"rank": svc.rank, "served": served[0]}


def _client_thread(client: rpc.ClientDealer, tag: tuple, n: int, window: int, out: dict,
                   progress: Any = None) -> None:
    """Send n requests (window 0: call(); else send_request with that many in flight)."""
    answered: dict[tuple, int] = {}
    dup = wrong = 0
    errors: list[tuple[str, float]] = []
    sent_at: dict[int, tuple[tuple, float, int]] = {}

    def check(key: tuple, x: int, resp: dict) -> None:
        nonlocal dup, wrong
        if key in answered:
            dup += 1
        answered[key] = resp["server"]
        if resp["y"] != 2 * x + 1 or tuple(resp["key"]) != key:
            wrong += 1

    k = 0
    while k < n or sent_at:
        if window == 0:
            key, x = (*tag, k), k * 7 + tag[-1]
            t0 = time.monotonic()
            try:
                check(key, x, client.call({"key": key, "x": x}))
            except rpc.RpcError as exc:
                errors.append((type(exc).__name__, time.monotonic() - t0))
                answered[key] = -1
            k += 1
        else:
            while k < n and len(sent_at) < window:
                key, x = (*tag, k), k * 7 + tag[-1]
                sent_at[client.send_request({"key": key, "x": x})] = (key, time.monotonic(), x)
                k += 1
            resp = client.recv_response(timeout=30)
            if resp.request_id not in sent_at:
                dup += 1
                continue
            key, t0, x = sent_at.pop(resp.request_id)
            if resp.ok:
                check(key, x, resp.payload)
            else:
                errors.append((type(resp.error).__name__, time.monotonic() - t0))
                answered[key] = -1
        if progress is not None:
            with progress.get_lock():
                progress.value += 1
    out[tag] = {"answered": answered, "dup": dup, "wrong": wrong, "errors": errors}


def _client(master: str, cid: int, nthreads: int, per_thread: int, timeout: float,
            progress: Any = None, idempotent: bool = False) -> dict:
    svc = rpc.RpcService(master, timeout=timeout)
    out: dict = {}
    threads = []
    for t in range(nthreads):
        client = svc.create_client(SID, idempotent=idempotent)
        client.wait_servers(2, 20)
        window = 0 if t % 2 == 0 else 16
        threads.append(threading.Thread(target=_client_thread, args=(
            client, (cid, t), per_thread, window, out, progress)))
    for th in threads:
        th.start()
    for th in threads:
        th.join(DEADLINE)
    svc.close()
    merged: dict = {"answered": {}, "dup": 0, "wrong": 0, "errors": [], "threads": len(out)}
    for r in out.values():
        merged["answered"].update(r["answered"])
        for f in ("dup", "wrong"):
            merged[f] += r[f]
        merged["errors"] += r["errors"]
    return merged


# ------------------------------------------------------------------ tests

@pytest.fixture
def master():
    m = rpc.Master("127.0.0.1", 0)
    yield m
    m.close()


def test_two_servers_two_clients_10000_requests(master):
    """4 processes: 2 servers of one id, 2 clients x 4 threads, 10,000 requests."""
    addr = master.address_str
    stop, readies = CTX.Event(), [CTX.Event(), CTX.Event()]
    servers = [_spawn(_server, addr, stop, r) for r in readies]
    clients = [_spawn(_client, addr, c, 4, 1250, 20.0) for c in range(2)]
    try:
        res = [_result(q, f"client {i}") for i, (_, q) in enumerate(clients)]
        stop.set()
        served = [_result(q, f"server {i}") for i, (_, q) in enumerate(servers)]
    finally:
        stop.set()
        _reap([p for p, _ in servers + clients])
    keys = {}
    for r in res:
        assert r["threads"] == 4
        assert r["dup"] == 0 and r["wrong"] == 0 and r["errors"] == []
        keys.update(r["answered"])
    assert len(keys) == 10_000
    per_server = {}
    for s in keys.values():
        per_server[s] = per_server.get(s, 0) + 1
    assert set(per_server) == {s["rank"] for s in served}, per_server
    assert all(n > 1000 for n in per_server.values()), per_server
    assert sum(s["served"] for s in served) == 10_000  # each request ran exactly once


def _phase_client(master: str, timeout: float, progress: Any, phase2: Any, q2: Any,
                  idempotent: bool) -> dict:
    res = _client(master, 0, 4, 1500, timeout, progress, idempotent)
    q2.put(res)
    if not phase2.wait(DEADLINE):
        raise TimeoutError("phase 2 never started")
    svc = rpc.RpcService(master, timeout=timeout)
    client = svc.create_client(SID)
    client.wait_servers(2, 20)
    used: dict[int, int] = {}
    for k in range(200):
        r = client.call({"key": (9, 9, k), "x": k})
        used[r["server"]] = used.get(r["server"], 0) + 1
    svc.close()
    return used


@pytest.mark.parametrize("idempotent", [False, True])
def test_sigkill_one_server_in_the_middle(master, idempotent):
    """Kill one server mid-run: every request is answered by the other one or fails with a
    typed error within its timeout (idempotent clients: every one is answered); a server
    that comes back is used again."""
    addr = master.address_str
    timeout = 5.0
    stop, stop_a, ra, rb = CTX.Event(), CTX.Event(), CTX.Event(), CTX.Event()
    a, aq = _spawn(_server, addr, stop_a, ra)  # its own stop: a killed waiter would block
    b, bq = _spawn(_server, addr, stop, rb)    # a shared Event's set() forever
    progress, phase2, q2 = CTX.Value("l", 0), CTX.Event(), CTX.Queue()
    procs = [a, b]
    try:
        assert ra.wait(DEADLINE) and rb.wait(DEADLINE)
        cl, clq = _spawn(_phase_client, addr, timeout, progress, phase2, q2, idempotent)
        procs.append(cl)
        end = time.monotonic() + DEADLINE
        while progress.value < 1500 and time.monotonic() < end:
            time.sleep(0.01)
        assert progress.value >= 1500, "client made no progress"
        os.kill(a.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        res = _result(q2, "client phase 1")
        assert time.monotonic() - t_kill < DEADLINE
        assert res["threads"] == 4
        assert res["dup"] == 0 and res["wrong"] == 0
        assert len(res["answered"]) == 6000  # every request has exactly one outcome
        if idempotent:  # requests lost in flight were resent to the other server
            assert res["errors"] == []
        typed = {"ServerLost", "NoSuchServer", "RpcTimeout"}
        for name, elapsed in res["errors"]:
            assert name in typed, res["errors"]
            assert elapsed <= timeout + 1.0, res["errors"]
        ranks = set(res["answered"].values()) - {-1}
        assert len(ranks) == 2  # both served before the kill
        # a server that comes back (a new process with the same service id) is used again
        rc = CTX.Event()
        c, cq = _spawn(_server, addr, stop, rc)
        procs.append(c)
        assert rc.wait(DEADLINE)
        phase2.set()
        used = _result(clq, "client phase 2")
        assert len(used) == 2 and all(n >= 50 for n in used.values()), used
    finally:
        stop.set()
        _reap(procs)


# ------------------------------------------------------------------ accumulator

def _acc_client(master: str, rank: int, n: int) -> bool:
    svc = rpc.RpcService(master, timeout=10)
    svc.wait_servers("pyxccl.accumulator", 1, 20)
    accs = {name: rpc.Accumulator(f"ex.{name}", name, flush_every=0.01, service=svc)
            for name in ("sum", "avg", "max", "min")}
    arr = rpc.Accumulator("ex.array", rpc.SUM, flush_every=0.01, service=svc)
    for i in range(n):
        v = (i + 1) * (rank + 1)
        for acc in accs.values():
            acc.write(v)
        arr.write(np.full(8, v, np.int64))
    for acc in [*accs.values(), arr]:
        acc.wait_empty(10)
        acc.close()
    svc.close()
    return True


def test_accumulator_example_across_processes(master):
    """pRPC's example: each of N clients writes (i+1)(rank+1), i < 1000; reads are exact."""
    nclients, n = 3, 1000
    host = rpc.RpcService(master.address_str, timeout=10)
    try:
        server = rpc.serve_accumulators(host)
        procs = [_spawn(_acc_client, master.address_str, r, n) for r in range(nclients)]
        try:
            assert all(_result(q, f"accumulator client {i}") for i, (_, q) in enumerate(procs))
        finally:
            _reap([p for p, _ in procs])
        total = sum((i + 1) * (r + 1) for r in range(nclients) for i in range(n))
        expect = {"sum": total, "avg": total / (nclients * n), "max": n * nclients, "min": 1}
        for name, want in expect.items():
            acc = rpc.Accumulator(f"ex.{name}", name, service=host)
            got = acc.read()
            assert got == want and type(got) is type(want), (name, got, want)
            acc.close()
        arr = rpc.Accumulator("ex.array", "sum", service=host)
        np.testing.assert_array_equal(arr.read(), np.full(8, total, np.int64))
        arr.erase()
        assert arr.read() is None
        arr.close()
        assert "ex.sum" in server.names()
        server.close()
    finally:
        host.close()
