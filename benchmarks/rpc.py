"""pRPC benchmark: pyxccl.rpc against grpcio on loopback, in one run.

    python benchmarks/rpc.py                       # both, default sizes
    python benchmarks/rpc.py --seconds 3 --threads 1,8 --big-mib 64 --big-iters 8
    python benchmarks/rpc.py --no-grpc --json out.json

For each framework a server process and a client process (spawned, loopback only):

* ``latency``: one client thread, small request (32 bytes, echoed): p50 / p99 in µs;
* ``rps T``: T client threads calling back to back for ``--seconds``: requests / s;
* ``big``: one thread sends a ``--big-mib`` MiB float32 numpy array per call, the server
  checks its first and last element and answers a small ack: payload GB/s (10^9 B/s).

pyxccl sends the array zero-copy (an out-of-band buffer, ``sendmsg`` / ``recv_into``);
grpcio gets ``arr.tobytes()`` (included in the time: that is what a grpcio user pays) and
the server rebuilds it with ``np.frombuffer``; grpcio uses raw-bytes generic handlers (no
protobuf) and unlimited message sizes. grpcio is optional: when it is not installed the
benchmark says so and runs pyxccl alone (``pip install grpcio``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent import futures
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

SMALL = b"x" * 32
_MAX = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def _check_big(arr: np.ndarray) -> int:
    n = arr.size
    if n and (arr[0] != 1.0 or arr[-1] != float(n)):
        raise ValueError("big payload arrived corrupted")
    return n


# ------------------------------------------------------------------ servers

def _pyxccl_server(master: str, ready: Any, stop: Any, nthreads: int) -> None:
    from pyxccl import rpc

    svc = rpc.RpcService(master, timeout=60)
    echo = svc.create_server("bench.echo").serve(lambda p: p, nthreads)
    big = svc.create_server("bench.big").serve(lambda p: _check_big(p), 1)
    ready.set()
    stop.wait(600)
    echo.close()
    big.close()
    svc.close()


def _grpc_server(port_q: Any, stop: Any, nthreads: int) -> None:
    import grpc

    def echo(req: bytes, ctx: Any) -> bytes:
        return req

    def big(req: bytes, ctx: Any) -> bytes:
        return str(_check_big(np.frombuffer(req, np.float32))).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=nthreads), options=_MAX)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Big": grpc.unary_unary_rpc_method_handler(big)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_q.put(port)
    stop.wait(600)
    server.stop(1)


# ------------------------------------------------------------------ client measurements

def _measure(small: Callable[[], Any], big: Callable[[np.ndarray], Any], args: Any) -> dict:
    out: dict[str, Any] = {}
    for _ in range(300):
        small()
    lat = []
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end or len(lat) < 200:
        t0 = time.perf_counter()
        small()
        lat.append(time.perf_counter() - t0)
    lat.sort()
    out["p50_us"] = lat[len(lat) // 2] * 1e6
    out["p99_us"] = lat[int(len(lat) * 0.99)] * 1e6
    for nt in args.threads:
        counts = [0] * nt
        stop_at = [0.0]
        barrier = threading.Barrier(nt + 1)

        def worker(i: int) -> None:
            barrier.wait()
            n = 0
            while time.perf_counter() < stop_at[0]:
                small()
                n += 1
            counts[i] = n

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(nt)]
        for t in ts:
            t.start()
        stop_at[0] = time.perf_counter() + args.seconds
        t0 = time.perf_counter()
        barrier.wait()
        for t in ts:
            t.join()
        out[f"rps_{nt}"] = sum(counts) / (time.perf_counter() - t0)
    arr = np.arange(1, args.big_mib * (1 << 20) // 4 + 1, dtype=np.float32)
    big(arr)  # warm up (connection, page faults)
    t0 = time.perf_counter()
    for _ in range(args.big_iters):
        big(arr)
    dt = time.perf_counter() - t0
    out["big_gbps"] = arr.nbytes * args.big_iters / dt / 1e9
    return out


def _pyxccl_client(master: str, args: Any, q: Any) -> None:
    from pyxccl import rpc

    svc = rpc.RpcService(master, timeout=60)
    echo = svc.create_client("bench.echo")
    bigc = svc.create_client("bench.big")
    echo.wait_servers(1, 30)
    bigc.wait_servers(1, 30)
    n = args.big_mib * (1 << 20) // 4

    def small() -> Any:
        r = echo.call(SMALL)
        assert r == SMALL
        return r

    def big(arr: np.ndarray) -> Any:
        r = bigc.call(arr)
        assert r == n
        return r

    q.put(_measure(small, big, args))
    svc.close()


def _grpc_client(port: int, args: Any, q: Any) -> None:
    import grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=_MAX)
    grpc.channel_ready_future(ch).result(timeout=30)
    echo = ch.unary_unary("/bench/Echo")
    bigm = ch.unary_unary("/bench/Big")
    n = args.big_mib * (1 << 20) // 4

    def small() -> Any:
        r = echo(SMALL, timeout=60)
        assert r == SMALL
        return r

    def big(arr: np.ndarray) -> Any:
        r = bigm(arr.tobytes(), timeout=60)
        assert int(r) == n
        return r

    q.put(_measure(small, big, args))
    ch.close()


# ------------------------------------------------------------------ driver

def run_pyxccl(args: Any) -> dict:
    from pyxccl import rpc

    ctx = mp.get_context("spawn")
    master = rpc.Master("127.0.0.1", 0)
    ready, stop, q = ctx.Event(), ctx.Event(), ctx.Queue()
    srv = ctx.Process(target=_pyxccl_server, args=(master.address_str, ready, stop,
                                                    args.server_threads))
    srv.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("pyxccl server did not start")
        cli = ctx.Process(target=_pyxccl_client, args=(master.address_str, args, q))
        cli.start()
        res = q.get(timeout=600)
        cli.join(30)
    finally:
        stop.set()
        srv.join(30)
        if srv.is_alive():
            srv.kill()
        master.close()
    return res


def run_grpc(args: Any) -> dict:
    ctx = mp.get_context("spawn")
    port_q, stop, q = ctx.Queue(), ctx.Event(), ctx.Queue()
    srv = ctx.Process(target=_grpc_server, args=(port_q, stop, max(8, args.server_threads)))
    srv.start()
    try:
        port = port_q.get(timeout=60)
        cli = ctx.Process(target=_grpc_client, args=(port, args, q))
        cli.start()
        res = q.get(timeout=600)
        cli.join(30)
    finally:
        stop.set()
        srv.join(30)
        if srv.is_alive():
            srv.kill()
    return res


def _row(name: str, r: dict, threads: list[int]) -> str:
    cols = [f"{r['p50_us']:9.1f}", f"{r['p99_us']:9.1f}"]
    cols += [f"{r[f'rps_{t}']:10.0f}" for t in threads]
    cols.append(f"{r['big_gbps']:9.2f}")
    return f"{name:8s}" + " ".join(cols)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per latency/rps run")
    p.add_argument("--threads", default="1,8", help="client thread counts for rps")
    p.add_argument("--big-mib", type=int, default=64, help="big payload size, MiB")
    p.add_argument("--big-iters", type=int, default=8, help="big payload calls timed")
    p.add_argument("--server-threads", type=int, default=2, help="pyxccl handler threads")
    p.add_argument("--no-grpc", action="store_true", help="skip grpcio")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    have_grpc = False
    if not args.no_grpc:
        try:
            import grpc  # noqa: F401
            have_grpc = True
        except ImportError:
            print("grpcio is not installed: skipping it (pip install grpcio)", file=sys.stderr)
    results: dict[str, dict] = {"pyxccl": run_pyxccl(args)}
    if have_grpc:
        results["grpcio"] = run_grpc(args)
    head = f"{'':8s}{'p50 µs':>9s} {'p99 µs':>9s} " + " ".join(
        f"{'rps ' + str(t) + 'thr':>10s}" for t in args.threads)
    head += f" {'GB/s ' + str(args.big_mib) + 'M':>9s}"
    print(head)
    for name, r in results.items():
        print(_row(name, r, args.threads))
    if "grpcio" in results:
        g, x = results["grpcio"], results["pyxccl"]
        ratios = {f"rps_{t}": x[f"rps_{t}"] / g[f"rps_{t}"] for t in args.threads}
        ratios["big"] = x["big_gbps"] / g["big_gbps"]
        print("pyxccl / grpcio: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
        results["ratio"] = ratios
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
