"""Fault trials: SIGKILL a random rank at a random moment of a loop of mixed collectives.

    python tests/_fault_runner.py --trials 50 --nranks 4 [--hosts NS_A,NS_B --addrs IP_A,IP_B]
                                  [--seed S] [--timeout T] [--out summary.json]

This process imports pyxccl once and, for each trial, forks ``nranks`` fresh rank
processes (cheap: nothing is imported again). With ``--hosts`` the first half of the
ranks enter network namespace NS_A and the rest NS_B (two emulated hosts: shm inside a
namespace, sockets between them); otherwise all ranks share this host (shm).

Each rank builds a communicator (rank 0 makes the unique id; this process relays it),
reports "ready", then runs allreduce / allgather / broadcast / alltoall / reducescatter /
send-recv / barrier calls of random sizes, checking results, until one fails. This
process kills a random rank with SIGKILL at a random moment (0-300 ms after every rank is
ready). Every survivor reports the error type, its message and when it raised
(CLOCK_MONOTONIC, comparable across processes); with ``--shrink`` it then builds a
communicator of the survivors (``comm.shrink(exclude=[lost rank])``) and checks an
allreduce on it. Then it exits through the normal exit path (atexit: no explicit abort
or destroy of the broken communicator). The summary (JSON) lists, per trial, the killed
rank, each survivor's error and latency, processes that had to be killed, wrong results
and the /dev/shm files the trial's processes left behind.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import random
import select
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.ensure_src_on_path()

import numpy as np  # noqa: E402

import pyxccl  # noqa: E402

CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move this (single-threaded, freshly forked) process into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name}) failed")
    finally:
        os.close(fd)


def send_msg(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode() + b"\n"
    while data:
        data = data[os.write(fd, data):]


def try_shrink(comm, lost: int, rank: int, nranks: int) -> str:
    """Go on without ``lost``: shrink, then an allreduce on the survivors; "ok" or what went wrong."""
    try:
        new = comm.shrink(exclude=[lost])
        x = np.full(1000, rank + 1, dtype=np.float64)
        new.all_reduce(x)
        expected = sum(r + 1 for r in range(nranks) if r != lost)
        new.destroy()
        return "ok" if np.all(x == expected) and new.size == nranks - 1 else f"wrong: {x[0]} != {expected}"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def rank_main(rank: int, nranks: int, seed: int, to_parent: int, from_parent: int, ns: str | None,
              addr: str | None, shrink: bool) -> None:
    """One rank of one trial (runs in a forked child; never returns)."""
    status = 0
    try:
        if ns:
            enter_netns(ns)
        if rank == 0:
            uid = pyxccl.get_unique_id(host=addr) if addr else pyxccl.get_unique_id()
            send_msg(to_parent, {"uid": uid.to_bytes().hex()})
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(from_parent, 4096)
            if not chunk:
                raise RuntimeError("runner went away")
            line += chunk
        uid = bytes.fromhex(json.loads(line)["uid"])
        comm = pyxccl.Communicator(nranks, uid, rank)
        send_msg(to_parent, {"ready": rank})
        rng = random.Random(seed * 1000 + 17)  # the same sequence on every rank
        wrong = 0
        try:
            for it in range(1_000_000):
                kind = rng.choice(["allreduce", "allgather", "broadcast", "alltoall", "reducescatter", "p2p", "barrier"])
                count = rng.choice([1, 7, 1000, 65536, 300000])
                if kind == "allreduce":
                    x = np.full(count, rank + 1, dtype=np.float32)
                    comm.all_reduce(x)
                    wrong += int(not np.all(x == nranks * (nranks + 1) / 2))
                elif kind == "allgather":
                    out = np.empty(count * nranks, dtype=np.int32)
                    comm.all_gather(np.full(count, rank, dtype=np.int32), out)
                    wrong += int(not np.array_equal(out, np.repeat(np.arange(nranks, dtype=np.int32), count)))
                elif kind == "broadcast":
                    root = it % nranks
                    x = np.full(count, rank, dtype=np.int64)
                    comm.broadcast(x, root=root)
                    wrong += int(not np.all(x == root))
                elif kind == "alltoall":
                    out = np.empty(count * nranks, dtype=np.int32)
                    comm.all_to_all(np.full(count * nranks, rank, dtype=np.int32), out)
                    wrong += int(not np.array_equal(out, np.repeat(np.arange(nranks, dtype=np.int32), count)))
                elif kind == "reducescatter":
                    out = np.empty(count, dtype=np.float64)
                    comm.reduce_scatter(np.ones(count * nranks, dtype=np.float64), out)
                    wrong += int(not np.all(out == nranks))
                elif kind == "p2p":
                    buf = np.empty(count, dtype=np.uint8)
                    with pyxccl.group():
                        comm.send(np.full(count, rank % 251, dtype=np.uint8), (rank + 1) % nranks)
                        comm.recv(buf, (rank - 1) % nranks)
                    wrong += int(not np.all(buf == ((rank - 1) % nranks) % 251))
                else:
                    comm.barrier()
            send_msg(to_parent, {"rank": rank, "error": None, "wrong": wrong})
        except Exception as exc:  # noqa: BLE001 - reported to the runner
            at = time.monotonic()
            report = {"rank": rank, "error": type(exc).__name__, "message": str(exc)[:600],
                      "lost_rank": getattr(exc, "rank", None), "at": at, "wrong": wrong}
            if shrink and isinstance(exc, pyxccl.PeerLostError) and exc.rank is not None:
                report["shrink"] = try_shrink(comm, exc.rank, rank, nranks)
            send_msg(to_parent, report)
    except BaseException:  # noqa: BLE001
        send_msg(to_parent, {"rank": rank, "error": "setup", "message": traceback.format_exc()[-1500:]})
        status = 3
    atexit._run_exitfuncs()
    atexit._run_exitfuncs()  # the normal exit path (what a plain `python` exit runs), then leave the fork
    os._exit(status)


def shm_files(pids: set[int]) -> list[str]:
    """/dev/shm files named after one of ``pids``."""
    left = []
    for name in os.listdir("/dev/shm"):
        if name.startswith("pyxccl-") and "." in name and name.rsplit(".", 1)[1].isdigit() \
                and int(name.rsplit(".", 1)[1]) in pids:
            left.append(name)
    return left


def trial(t: int, nranks: int, seed: int, hosts: list[str] | None, addrs: list[str] | None,
          limit: float, shrink: bool) -> dict:
    rng = random.Random(seed * 7919 + t)
    children: dict[int, int] = {}  # rank -> pid
    ups, downs = {}, {}
    for r in range(nranks):
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        h = (0 if r < (nranks + 1) // 2 else 1) if hosts else None
        pid = os.fork()
        if pid == 0:
            os.close(up_r)
            os.close(down_w)
            rank_main(r, nranks, seed * 100 + t, up_w, down_r, hosts[h] if hosts else None,
                      addrs[h] if addrs and r == 0 else None, shrink)
        os.close(up_w)
        os.close(down_r)
        children[r], ups[r], downs[r] = pid, up_r, down_w
    msgs: dict[int, list[dict]] = {r: [] for r in range(nranks)}
    bufs = {r: b"" for r in range(nranks)}

    def pump(timeout: float) -> None:
        ready, _, _ = select.select([ups[r] for r in ups], [], [], timeout)
        for fd in ready:
            r = next(k for k, v in ups.items() if v == fd)
            chunk = os.read(fd, 65536)
            if not chunk:
                os.close(fd)
                del ups[r]
                continue
            bufs[r] += chunk
            while b"\n" in bufs[r]:
                line, bufs[r] = bufs[r].split(b"\n", 1)
                msgs[r].append(json.loads(line))

    result: dict = {"trial": t, "problems": []}
    end = time.monotonic() + 60
    while not msgs[0] and time.monotonic() < end and 0 in ups:
        pump(0.1)
    if not msgs[0] or "uid" not in msgs[0][0]:
        result["problems"].append(f"rank 0 made no unique id: {msgs[0]}")
    else:
        line = (json.dumps(msgs[0].pop(0)) + "\n").encode()
        for r in range(nranks):
            os.write(downs[r], line)
        while time.monotonic() < end and not all(any("ready" in m for m in msgs[r]) for r in range(nranks)):
            if not ups:
                break
            pump(0.1)
        if not all(any("ready" in m for m in msgs[r]) for r in range(nranks)):
            result["problems"].append(f"not every rank got ready: {msgs}")
    victim = rng.randrange(nranks)
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(children[victim], signal.SIGKILL)
    killed_at = time.monotonic()
    result["victim"] = victim
    survivors = [r for r in range(nranks) if r != victim]
    deadline = killed_at + limit + 10
    while time.monotonic() < deadline and not all(any("error" in m for m in msgs[r]) for r in survivors):
        pump(0.1)
    reports = {}
    for r in survivors:
        rep = next((m for m in msgs[r] if "error" in m), None)
        reports[r] = rep
        if rep is None:
            result["problems"].append(f"rank {r} reported nothing within timeout + 10 s")
            continue
        latency = rep.get("at", killed_at) - killed_at
        rep["latency"] = round(latency, 3)
        named = rep.get("lost_rank") == victim or f"rank {victim}" in (rep.get("message") or "")
        if rep["error"] not in ("PeerLostError", "CollectiveTimeout") or not named:
            result["problems"].append(f"rank {r}: {rep['error']}: {rep.get('message')}")
        elif latency > limit + 5:
            result["problems"].append(f"rank {r} raised {latency:.1f} s after the kill (limit {limit + 5} s)")
        if shrink and rep.get("shrink", "ok") != "ok":
            result["problems"].append(f"rank {r}: shrink(exclude=[{victim}]) failed: {rep['shrink']}")
        if rep.get("wrong"):
            result["problems"].append(f"rank {r} saw {rep['wrong']} wrong results before the kill")
    result["reports"] = reports
    # every process must exit by itself (survivors through their normal exit path)
    exit_deadline = time.monotonic() + 20
    left = dict(children)
    statuses = {}
    while left and time.monotonic() < exit_deadline:
        for r, pid in list(left.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses[r] = status
                del left[r]
        if left:
            pump(0.05)
    for r, pid in left.items():
        result["problems"].append(f"rank {r} (pid {pid}) did not exit within 20 s; killed")
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    for fd in list(ups.values()) + list(downs.values()):
        try:
            os.close(fd)
        except OSError:
            pass
    leftovers = shm_files(set(children.values()))
    if leftovers:
        result["problems"].append(f"/dev/shm leftovers: {leftovers}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--nranks", type=int, default=4)
    ap.add_argument("--hosts", default="", help="NS_A,NS_B: two network namespaces")
    ap.add_argument("--addrs", default="", help="IP_A,IP_B: their addresses")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="")
    ap.add_argument("--shrink", action="store_true", help="survivors shrink(exclude=[lost]) and run an allreduce")
    args = ap.parse_args()
    limit = pyxccl.config.get().timeout
    hosts = args.hosts.split(",") if args.hosts else None
    addrs = args.addrs.split(",") if args.addrs else None
    t0 = time.monotonic()
    results = []
    for t in range(args.trials):
        results.append(trial(t, args.nranks, args.seed, hosts, addrs, limit, args.shrink))
    latencies = [rep["latency"] for r in results for rep in r.get("reports", {}).values() if rep and "latency" in rep]
    errors: dict[str, int] = {}
    for r in results:
        for rep in r.get("reports", {}).values():
            if rep:
                errors[rep["error"]] = errors.get(rep["error"], 0) + 1
    shrunk = sum(1 for r in results for rep in r.get("reports", {}).values() if rep and rep.get("shrink") == "ok")
    summary = {
        "shrink_ok": shrunk,
        "trials": args.trials, "nranks": args.nranks, "hosts": hosts, "timeout": limit,
        "seconds": round(time.monotonic() - t0, 1),
        "errors": errors,
        "latency_max": max(latencies, default=None),
        "latency_median": sorted(latencies)[len(latencies) // 2] if latencies else None,
        "failed_trials": [r for r in results if r["problems"]],
    }
    text = json.dumps(summary, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
