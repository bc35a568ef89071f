"""Device-path fault runs: a rank lost, or the communicator aborted, while device calls wait on it.

    PYXCCL_DEVICE_BACKEND=emulated python tests/_device_fault_runner.py
        --scenario absent|midway|straggler|abort|stuck [--count N] [--out summary.json]

Forks 3 rank processes the way tests/_fault_runner.py does (pyxccl imported once here; rank 0
makes the unique id, this process relays it). Every rank builds a communicator, runs a warm-up
all_reduce on device buffers of cuda:0 (the connectors exist from then on) and reports ready.
Then ranks 0 and 1 enqueue an all_reduce of ``count`` float32 on device buffers, which needs
rank 2, and:

- ``absent``: rank 2 never issues it; 0.3 s after the survivors enqueued, it dies (os._exit);
- ``midway``: rank 2 issues it too and dies 20 ms after enqueueing, its part half done;
- ``straggler``: as ``absent``, but rank 1 does not issue the call either (as a rank that
  learned of the loss first would not): rank 0's streams also wait on a survivor; rank 1 goes
  on 1 s after the death;
- ``abort``: rank 2 stays alive without issuing it; 0.3 s later ranks 0 and 1 call
  ``comm.abort()`` with their streams still blocked on rank 2;
- ``stuck``: as ``abort``, but the caller's stream of ranks 0 and 1 first waits on a word
  nobody writes until after ``abort()``, so the call cannot even start: ``abort()`` must give
  up draining (``ABORT_DRAIN``) and return, leaving its device memory mapped; then the rank
  writes the word, the released call runs through and ``device.synchronize()`` returns.

With ``absent`` the survivors issue the call with ``async_op=True`` and wait for its Work
(complete once enqueued: it must not wait for the device).

After a death each survivor reports when its ``device.synchronize()`` returned
(CLOCK_MONOTONIC, comparable with the dying rank's own report), what its next device call
raised, whether ``comm.shrink(exclude=[2])`` gave a 2-rank communicator whose device all_reduce
is correct, and how long destroying the old communicator took. After an abort each reports
whether its stream was still blocked when it aborted, how long ``abort()`` and the following
``device.synchronize()`` took and what a later call raised. The summary (JSON) holds the
reports and ``problems``: every check that failed (bounds: :data:`BOUND` s).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
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
from _fault_runner import send_msg, shm_files  # noqa: E402
from pyxccl.cuda import get_device  # noqa: E402
from pyxccl.dtypes import dtype_of  # noqa: E402
from pyxccl.memory import Buffer  # noqa: E402

NRANKS, VICTIM = 3, 2
BOUND = 5.0  # seconds: synchronize after a death, abort(), synchronize after an abort, destroy()
ISSUING = {"absent": (0, 1), "midway": (0, 1, 2), "straggler": (0,), "abort": (0, 1), "stuck": (0, 1)}
STUCK_BOUND = 4.0  # seconds abort() may take when the device work cannot finish (ABORT_DRAIN + slack)


class Lines:
    """JSON messages, one a line, read from a pipe."""

    def __init__(self, fd: int):
        self.fd, self.buf, self.eof = fd, b"", False

    def get(self, timeout: float) -> dict | None:
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if self.eof or left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def device_buffer(dev, values: np.ndarray) -> tuple[int, Buffer]:
    """A copy of ``values`` in device memory: (address, the Buffer a call takes)."""
    addr = dev.alloc(values.nbytes)
    dev.write(addr, values.tobytes())
    return addr, Buffer.on_device(values, dev.name, addr, values.nbytes, dtype_of(values.dtype))


def read_back(dev, addr: int, like: np.ndarray) -> np.ndarray:
    return np.frombuffer(dev.read(addr, like.nbytes), like.dtype)


def after_death(comm, dev, rank: int, count: int, report: dict) -> None:
    """A survivor's checks once its streams wait on a dead rank (see the module docstring)."""
    dev.synchronize()
    report["sync_at"] = time.monotonic()
    _, buf = device_buffer(dev, np.ones(count, np.float32))
    try:
        comm.all_reduce(buf)
        report["next_call"] = "returned"
    except Exception as exc:  # noqa: BLE001 - reported
        report["next_call"] = type(exc).__name__
        report["next_rank"], report["next_message"] = getattr(exc, "rank", None), str(exc)[:500]
    new = comm.shrink(exclude=[VICTIM])
    x = (np.arange(count) % 97).astype(np.float32) * (rank + 1)
    addr, buf = device_buffer(dev, x)
    new.all_reduce(buf)
    dev.synchronize()
    want = (np.arange(count) % 97).astype(np.float32) * 3  # ranks 0 and 1: factors 1 + 2
    report["shrink"] = {"size": new.size, "correct": bool(np.array_equal(read_back(dev, addr, x), want))}
    new.destroy()
    t = time.monotonic()
    comm.destroy()
    report["destroy_s"] = round(time.monotonic() - t, 3)


def after_abort(comm, dev, count: int, report: dict, inbox: Lines, gate: int | None) -> None:
    """A survivor's abort while its streams wait on a live rank that did not issue the call (and,
    with ``gate``, its caller's stream on that word)."""
    marker = dev.event()
    dev.record(marker, dev.external_stream(0))  # the caller's stream: done once the call is
    if inbox.get(60) != {"abort": True}:
        raise RuntimeError("no abort order came")
    report["blocked_before"] = not dev.event_done(marker)
    t = time.monotonic()
    comm.abort()
    report["abort_s"] = round(time.monotonic() - t, 3)
    if gate is not None:
        dev.host_write_value(gate, 1)
    t = time.monotonic()
    dev.synchronize()
    report["sync_after_abort_s"] = round(time.monotonic() - t, 3)
    _, buf = device_buffer(dev, np.ones(count, np.float32))
    try:
        comm.all_reduce(buf)
        report["next_call"] = "returned"
    except Exception as exc:  # noqa: BLE001 - reported
        report["next_call"] = type(exc).__name__


def rank_main(rank: int, scenario: str, count: int, up: int, down: int) -> None:
    """One rank (a forked child; never returns)."""
    inbox = Lines(down)
    report: dict = {"rank": rank}
    status = 0
    try:
        if rank == 0:
            send_msg(up, {"uid": pyxccl.get_unique_id().to_bytes().hex()})
        comm = pyxccl.Communicator(NRANKS, bytes.fromhex(inbox.get(60)["uid"]), rank)
        dev = get_device("cuda:0")
        x = np.full(count, rank + 1, np.float32)
        addr, buf = device_buffer(dev, x)
        t = time.monotonic()
        comm.all_reduce(buf)
        dev.synchronize()
        warm_s = time.monotonic() - t
        send_msg(up, {"ready": rank, "warm_ok": bool(np.all(read_back(dev, addr, x) == 6)), "warm_s": warm_s})
        if inbox.get(60) != {"go": True}:
            raise RuntimeError("no go order came")
        issues = rank in ISSUING[scenario]
        gate = None
        if issues:
            _, buf = device_buffer(dev, x)
            if scenario == "stuck":
                gate = dev.alloc(4)
                dev.host_write_value(gate, 0)
                dev.wait_value(gate, 1, dev.external_stream(0))
            work = comm.all_reduce(buf, async_op=scenario == "absent")
            if scenario == "absent":
                work.wait(BOUND)
            send_msg(up, {"enqueued": rank})
        if rank == VICTIM:
            if scenario == "midway":
                time.sleep(0.02)
            elif inbox.get(60) is None:  # "die" (absent) or "exit" (abort)
                raise RuntimeError("no order came")
            if scenario not in ("abort", "stuck"):
                send_msg(up, {"dying_at": time.monotonic()})
                os._exit(1)
            report["exit"] = True
        elif scenario in ("abort", "stuck"):
            after_abort(comm, dev, count, report, inbox, gate)
        else:
            if not issues and inbox.get(60) != {"proceed": True}:
                raise RuntimeError("no proceed order came")
            after_death(comm, dev, rank, count, report)
    except BaseException:  # noqa: BLE001 - reported to the runner
        report["error"] = traceback.format_exc()[-1500:]
        status = 3
    send_msg(up, {"report": report})
    atexit._run_exitfuncs()  # the normal exit path, then leave the fork
    os._exit(status)


def check(scenario: str, reports: dict, dying_at: float | None) -> list[str]:
    """The problems of one run (empty: every check passed)."""
    problems = []
    for r in (0, 1):
        rep = reports.get(r)
        if rep is None or "error" in rep:
            problems.append(f"rank {r}: {rep and rep.get('error') or 'no report'}")
            continue
        if scenario in ("abort", "stuck"):
            bound = STUCK_BOUND if scenario == "stuck" else BOUND
            if not rep["blocked_before"]:
                problems.append(f"rank {r}: its stream was not blocked when it aborted")
            if rep["abort_s"] > bound or rep["sync_after_abort_s"] > BOUND:
                problems.append(f"rank {r}: abort() took {rep['abort_s']} s (bound {bound} s), synchronize "
                                f"after it {rep['sync_after_abort_s']} s (bound {BOUND} s)")
            if rep["next_call"] != "Aborted":
                problems.append(f"rank {r}: a call after abort(): {rep['next_call']}, not Aborted")
            continue
        latency = rep["sync_at"] - dying_at if dying_at is not None else None
        rep["sync_latency_s"] = None if latency is None else round(latency, 3)
        if latency is None or not 0 <= latency <= BOUND:
            problems.append(f"rank {r}: device.synchronize() returned {latency} s after rank {VICTIM} died "
                            f"(want 0 .. {BOUND} s: blocked on it, then released)")
        if rep["next_call"] != "PeerLostError" or rep.get("next_rank") != VICTIM \
                or f"rank {VICTIM}" not in rep.get("next_message", ""):
            problems.append(f"rank {r}: the next device call: {rep['next_call']} {rep.get('next_message')}")
        if rep["shrink"] != {"size": 2, "correct": True}:
            problems.append(f"rank {r}: shrink(exclude=[{VICTIM}]) then a device all_reduce: {rep['shrink']}")
        if rep["destroy_s"] > BOUND:
            problems.append(f"rank {r}: destroy() of the old communicator took {rep['destroy_s']} s")
    return problems


def run(scenario: str, count: int) -> dict:
    pids, ups, downs = {}, {}, {}
    for r in range(NRANKS):
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(up_r)
            os.close(down_w)
            rank_main(r, scenario, count, up_w, down_r)
        os.close(up_w)
        os.close(down_r)
        pids[r], ups[r], downs[r] = pid, Lines(up_r), down_w
    out: dict = {"scenario": scenario, "count": count, "problems": []}
    reports: dict = {}
    dying_at = None
    try:
        uid = ups[0].get(60)
        for r in range(NRANKS):
            send_msg(downs[r], uid)
        ready = {r: ups[r].get(120) for r in range(NRANKS)}
        out["ready"] = ready
        if not all(m and m.get("warm_ok") for m in ready.values()):
            raise RuntimeError(f"warm-up failed: {ready}")
        for r in range(NRANKS):
            send_msg(downs[r], {"go": True})
        enq = {r: ups[r].get(60) for r in ISSUING[scenario]}
        if not all(m == {"enqueued": r} for r, m in enq.items()):
            raise RuntimeError(f"not every rank enqueued: {enq}")
        time.sleep(0.3)
        if scenario in ("absent", "straggler"):
            send_msg(downs[VICTIM], {"die": True})
        else:
            for r in (0, 1):
                send_msg(downs[r], {"abort": True})
        aborting = scenario in ("abort", "stuck")
        if not aborting:
            msg = ups[VICTIM].get(30)
            dying_at = msg.get("dying_at") if msg else None
            out["dying_at"] = dying_at
        if scenario == "straggler":
            time.sleep(1.0)
            send_msg(downs[1], {"proceed": True})
        for r in (0, 1):
            msg = ups[r].get(60)
            reports[r] = msg.get("report") if msg else None
        if aborting:
            send_msg(downs[VICTIM], {"exit": True})
            msg = ups[VICTIM].get(30)
            reports[VICTIM] = msg.get("report") if msg else None
        out["problems"] += check(scenario, reports, dying_at)
    except Exception:  # noqa: BLE001 - recorded
        out["problems"].append(traceback.format_exc()[-1500:])
    out["reports"] = reports
    end = time.monotonic() + 30
    left = dict(pids)
    while left and time.monotonic() < end:
        for r, pid in list(left.items()):
            if os.waitpid(pid, os.WNOHANG)[0]:
                del left[r]
        time.sleep(0.05)
    for r, pid in left.items():
        out["problems"].append(f"rank {r} (pid {pid}) did not exit within 30 s; killed")
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    leftovers = shm_files(set(pids.values()))
    if leftovers:
        out["problems"].append(f"/dev/shm leftovers: {leftovers}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=sorted(ISSUING), required=True)
    ap.add_argument("--count", type=int, default=1 << 18)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if pyxccl.config.get().device_backend not in ("emulated", "cuda"):  # cuda: a real GPU (ranks forked
        raise SystemExit("run with PYXCCL_DEVICE_BACKEND=emulated or cuda")  # before any touches it)
    t0 = time.monotonic()
    summary = run(args.scenario, args.count)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(summary, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
