"""Flight recorder (pending_ops, dumps on timeout and SIGUSR1), pyxccl-doctor, and PYXCCL_CHECK.

Pool jobs record on the pool's communicator (the recorder is on by default); tests that
need PYXCCL_CHECK build a fresh communicator with the variable set for its creation only.
The timeout + SIGUSR1 + doctor test runs two plain rank processes of its own (the pool's
workers keep their faulthandler on SIGUSR1 and their 60 s timeout).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from harness import SRC_DIR, expect_raises, fresh_comm

import pyxccl
from pyxccl import config
from pyxccl.reliability import mismatch as check
from pyxccl.reliability import flight
from pyxccl.cli import doctor

HERE = os.path.abspath(__file__)


def _where(r: dict) -> bool:
    return r["call_site"].startswith(HERE + ":") or os.path.basename(HERE) in r["call_site"]


# ---------------------------------------------------------------------------- pending_ops

def job_pending_ops(comm) -> list[str]:
    N, me = comm.size, comm.rank
    f: list[str] = []
    before = [r for r in comm.pending_ops() if r["kind"] == "collective"]
    base = before[-1]["seq"] if before else 0
    t0 = time.time()

    x = np.full(10, me + 1, np.float32)
    comm.all_reduce(x)
    if not (x == N * (N + 1) / 2).all():
        f.append(f"all_reduce gave {x[:3]}")
    y = np.full(3, me, np.int64)
    comm.broadcast(y, root=N - 1)
    if not (y == N - 1).all():
        f.append(f"broadcast gave {y}")
    out = np.empty(4 * N, np.int32)
    w = comm.all_gather(np.full(4, me, np.int32), out, async_op=True)
    w.wait(60)
    if not (out == np.repeat(np.arange(N, dtype=np.int32), 4)).all():
        f.append(f"all_gather gave {out}")
    got = np.empty(5, np.float64)
    with pyxccl.group():
        comm.send(np.full(5, me, np.float64), (me + 1) % N)
        comm.recv(got, (me - 1) % N)
    if not (got == (me - 1) % N).all():
        f.append(f"recv gave {got}")

    recs = comm.pending_ops()
    colls = [r for r in recs if r["kind"] == "collective"][-3:]
    want = [(base + 1, "allreduce", "float32", 10, None, "sum"), (base + 2, "broadcast", "int64", 3, N - 1, None),
            (base + 3, "allgather", "int32", 4, None, None)]
    got_c = [(r["seq"], r["op"], r["dtype"], r["count"], r["root"], r["reduce_op"]) for r in colls]
    if got_c != want:
        f.append(f"collective records {got_c}, expected {want}")
    p2p = [r for r in recs if r["kind"] == "p2p"][-2:]
    got_p = [(r["op"], r["peers"], r["dtype"], r["count"]) for r in p2p]
    want_p = [("send", [(me + 1) % N], "float64", 5), ("recv", [(me - 1) % N], "float64", 5)]
    if got_p != want_p:
        f.append(f"p2p records {got_p}, expected {want_p}")
    if len(p2p) == 2 and p2p[1]["seq"] != p2p[0]["seq"] + 1:
        f.append(f"p2p seqs {p2p[0]['seq']}, {p2p[1]['seq']} are not consecutive")
    for r in colls + p2p:
        if r["state"] != "done":
            f.append(f"#{r['seq']} {r['op']}: state {r['state']!r}, expected 'done'")
        if not (t0 <= r["enqueued"] <= r["started"] <= r["ended"] <= time.time()):
            f.append(f"#{r['seq']} {r['op']}: timestamps out of order: {r}")
        if r["duration"] is None or abs(r["duration"] - (r["ended"] - r["started"])) > 1e-9:
            f.append(f"#{r['seq']} {r['op']}: duration {r['duration']}")
        if not _where(r):
            f.append(f"#{r['seq']} {r['op']}: call site {r['call_site']!r} is not in {HERE}")
        if r["kind"] == "collective" and (r["peers"] != "all" or not r["algorithm"]):
            f.append(f"#{r['seq']} {r['op']}: peers {r['peers']!r} algorithm {r['algorithm']!r}")
    if recs != sorted(recs, key=lambda r: r["enqueued"]):
        f.append("pending_ops() is not oldest first")

    # a call that waits for the other ranks: queued/running, then done
    if N > 1:
        if me != 0:
            time.sleep(0.4)
        z = np.full(6, 1, np.int32)
        w = comm.all_reduce(z, async_op=True)
        if me == 0:
            time.sleep(0.1)
            last = comm.pending_ops()[-1]
            if last["seq"] != base + 4 or last["state"] not in ("queued", "running") or last["ended"] is not None:
                f.append(f"a call the others have not joined yet: {last}")
        w.wait(60)
        last = comm.pending_ops()[-1]
        if last["state"] != "done" or not (z == N).all():
            f.append(f"after wait(): state {last['state']!r}, result {z}")
    return f


@pytest.mark.parametrize("nranks", (1, 3))
def test_pending_ops(pool, nranks):
    pool(nranks).check(job_pending_ops)


def test_recorder_ring_and_failure_state():
    fr = flight.FlightRecorder(size=3)
    call = pyxccl.comm.checks.plan_elementwise("allreduce", 0, 1, np.ones(7, np.float16), None, "max")
    recs = []
    for s in range(1, 6):
        recs.append(fr.collective(s, call, "ring"))
    kept = fr.records()
    assert [r["seq"] for r in kept] == [3, 4, 5] and fr.dropped == 2
    assert kept[0]["state"] == "queued" and kept[0]["started"] is None and kept[0]["duration"] is None
    recs[4].start()
    recs[4].fail(pyxccl.CollectiveTimeout("rank 0 waited for rank 1"))
    last = fr.records()[-1]
    assert last["state"] == "failed: CollectiveTimeout: rank 0 waited for rank 1"
    assert (last["op"], last["dtype"], last["count"], last["reduce_op"]) == ("allreduce", "float16", 7, "max")
    assert last["call_site"].startswith(HERE + ":") and "test_recorder_ring_and_failure_state" in last["call_site"]
    with pytest.raises(ValueError):
        flight.FlightRecorder(size=0)


# ---------------------------------------------------------------------------- PYXCCL_CHECK

def _checked_comm(comm):
    """A fresh communicator over the pool's ranks, created with PYXCCL_CHECK=1."""
    os.environ["PYXCCL_CHECK"] = "1"
    config.reset()
    try:
        return fresh_comm(comm, timeout=20)
    finally:
        del os.environ["PYXCCL_CHECK"]
        config.reset()


def job_check(comm) -> list[str]:
    N, me = comm.size, comm.rank
    f: list[str] = []
    c = _checked_comm(comm)
    try:
        if not c.context.config.check:
            return ["PYXCCL_CHECK=1 did not turn the check on"]
        x = np.full(100, me + 1, np.float32)
        c.all_reduce(x)
        if not (x == N * (N + 1) / 2).all():
            f.append(f"checked all_reduce gave {x[:3]}")
        # rank 1 passes 99 elements, every other rank 100: every rank raises, naming count and both values
        n = 99 if me == 1 else 100
        want = ["count differs", "rank 1 has count=99", "count=100", "collective #2"]
        f += expect_raises(pyxccl.MismatchError, lambda: c.all_reduce(np.ones(n, np.float32)),
                           f"all_reduce of {n} elements", contains=want)
        # dtype and root mismatches name their field
        dt = np.float64 if me == 0 else np.float32
        f += expect_raises(pyxccl.MismatchError, lambda: c.all_reduce(np.ones(8, dt)),
                           "all_reduce with rank 0 in float64", contains=["dtype differs", "rank 0 has dtype=float64"])
        root = 0 if me == N - 1 else N - 1
        f += expect_raises(pyxccl.MismatchError, lambda: c.broadcast(np.ones(4, np.int32), root=root),
                           "broadcast with different roots", contains=["root differs", f"rank {N - 1} has root=0"])
        # the communicator still works, and agrees on the next collective number on every rank
        y = np.full(5, me, np.int64)
        c.all_reduce(y, op="max")
        if not (y == N - 1).all():
            f.append(f"all_reduce(max) after the mismatches gave {y}")
        # v-collectives whose counts legitimately differ are not compared on count
        sc = [me + 1 + q for q in range(N)]           # rank me sends me+1+q elements to rank q
        rc = [p + 1 + me for p in range(N)]           # ... so it receives p+1+me from rank p
        inp = np.concatenate([np.full(sc[q], me * 10 + q, np.int32) for q in range(N)])
        out = np.empty(sum(rc), np.int32)
        c.all_to_allv(inp, out, sc, rc)
        want_out = np.concatenate([np.full(rc[p], p * 10 + me, np.int32) for p in range(N)])
        if not (out == want_out).all():
            f.append(f"checked all_to_allv gave {out}, expected {want_out}")
        seqs = [r["seq"] for r in c.pending_ops() if r["kind"] == "collective"]
        if seqs != list(range(1, 7)):
            f.append(f"collective numbers {seqs}, expected 1..6")
    finally:
        c.destroy()
    return f


@pytest.mark.parametrize("nranks", (2, 3))
def test_check_mismatch(pool, nranks):
    pool(nranks).check(job_check)


def test_check_compare_message():
    fp = {"seq": 7, "op": "allreduce", "dtype": "float32", "count": 100, "root": None, "reduce_op": "sum",
          "count_may_differ": False}
    assert check.compare([fp, dict(fp), dict(fp)]) is None
    msg = check.compare([fp, dict(fp, count=99), dict(fp)])
    assert msg is not None and "count differs: ranks 0, 2 have count=100, rank 1 has count=99" in msg
    assert "dtype" not in msg.split("(")[0]
    msg = check.compare([fp, dict(fp, op="reduce", root=0)])
    assert "op differs: rank 0 has op=allreduce, rank 1 has op=reduce" in msg and "root differs" in msg
    v = dict(fp, op="alltoallv", count_may_differ=True)
    assert check.compare([v, dict(v, count=3)]) is None
    assert "rank 1 sent no collective fingerprint" in check.compare([fp, None])
    assert check.unpack(check.pack(fp)) == fp and check.unpack(b"[1, 2]") is None


# ---------------------------------------------------------------------------- dumps: timeout, SIGUSR1, doctor

RANK_SCRIPT = r"""
import os, sys, time, signal
import numpy as np
rank, work = int(sys.argv[1]), sys.argv[2]
# a handler installed before pyxccl's: it must still be called (chained)
signal.signal(signal.SIGUSR1, lambda s, f: open(os.path.join(work, f"chained{rank}"), "w").close())
import pyxccl
uidf = os.path.join(work, "uid")
if rank == 0:
    uid = pyxccl.get_unique_id()
    with open(uidf + ".tmp", "wb") as f:
        f.write(uid.to_bytes())
    os.replace(uidf + ".tmp", uidf)
else:
    while not os.path.exists(uidf):
        time.sleep(0.01)
    with open(uidf, "rb") as f:
        uid = pyxccl.UniqueId.from_bytes(f.read())
comm = pyxccl.Communicator(2, uid, rank, timeout=2)
for i in range(3):
    x = np.full(4, rank + 1, np.float32)
    comm.all_reduce(x)
    assert (x == 3).all(), x
if rank == 0:  # rank 1 never joins this one
    try:
        comm.all_reduce(np.ones(1000, np.float32))
        print("no timeout", flush=True)
    except pyxccl.CollectiveTimeout as exc:
        print("timed out:", exc, flush=True)
open(os.path.join(work, f"ready{rank}"), "w").close()
deadline = time.time() + 60
while not os.path.exists(os.path.join(work, "stop")) and time.time() < deadline:
    time.sleep(0.02)
try:
    comm.abort()
except Exception as exc:  # teardown is not what this test checks (test_async_and_life does)
    print("abort raised:", repr(exc), flush=True)
"""


def _wait_for(pattern: str, timeout: float, procs) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = glob.glob(pattern)
        if found:
            return found
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"a rank exited with {p.returncode}: {p.communicate()[0]}")
        time.sleep(0.02)
    raise AssertionError(f"nothing matched {pattern} within {timeout} s")


def test_timeout_dump_sigusr1_and_doctor(tmp_path, capsys):
    work, trace = tmp_path / "work", tmp_path / "trace"
    work.mkdir()
    env = dict(os.environ, PYXCCL_TRACE_DIR=str(trace), PYTHONPATH=SRC_DIR, PYXCCL_TIMEOUT="20")
    env.pop("PYXCCL_CHECK", None)
    env.pop("PYXCCL_TRACE_SIZE", None)
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), str(work)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        # rank 0 times out in its 4th all_reduce (timeout=2) and dumps on its own
        dump0 = _wait_for(str(trace / "pyxccl-trace-*-rank0.json"), 30, procs)[0]
        _wait_for(str(work / "ready1"), 30, procs)
        assert not glob.glob(str(trace / "*-rank1.json")), "rank 1 dumped without a reason"
        procs[1].send_signal(signal.SIGUSR1)  # rank 1 sits idle: dump on demand
        dump1 = _wait_for(str(trace / "pyxccl-trace-*-rank1.json"), 20, procs)[0]
        _wait_for(str(work / "chained1"), 10, procs)  # the earlier handler ran too
        (work / "stop").touch()
        outs = [p.communicate(timeout=30)[0] for p in procs]
    finally:
        (work / "stop").touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "timed out" in outs[0], outs[0]

    d0, d1 = (json.loads(open(p).read()) for p in (dump0, dump1))  # noqa: SIM115
    assert d0["comm"] == d1["comm"] and os.path.basename(dump0) == f"pyxccl-trace-{d0['comm']}-rank0.json"
    assert (d0["rank"], d0["size"], d0["reason"], d1["rank"], d1["reason"]) == (0, 2, "timeout", 1, "SIGUSR1")
    assert d0["pid"] == procs[0].pid and d1["pid"] == procs[1].pid and d0["host"]
    assert d0["error"].startswith("CollectiveTimeout") and d1["error"] is None
    seqs0 = [(r["seq"], r["count"], r["state"].split(":")[0]) for r in d0["records"]]
    assert seqs0 == [(1, 4, "done"), (2, 4, "done"), (3, 4, "done"), (4, 1000, "failed")], seqs0
    assert d0["records"][-1]["state"].startswith("failed: CollectiveTimeout")
    assert [(r["seq"], r["state"]) for r in d1["records"]] == [(1, "done"), (2, "done"), (3, "done")]
    assert all(r["call_site"].startswith("<string>:") for r in d0["records"] + d1["records"])

    code = doctor.main([str(trace)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "BEHIND: rank 1: last started collective #3" in out, out
    assert "rank 0 reached #4" in out and "#4 allreduce(float32, count=1000, op=sum)" in out, out
    assert "rank 0: collective #4 allreduce(float32, count=1000, op=sum) [failed: CollectiveTimeout" in out, out
    assert "missing: none" in out and "disagreement: none" in out, out


# ---------------------------------------------------------------------------- doctor on synthetic dumps

def _dump(folder, rank: int, size: int, records: list[tuple], tag: str = "00c0ffee00c0ffee") -> None:
    recs = [{"seq": s, "kind": "collective", "op": op, "dtype": dt, "count": n, "root": None, "peers": "all",
             "algorithm": "ring", "reduce_op": "sum", "count_may_differ": False, "state": st,
             "enqueued": 1.0, "started": 2.0, "ended": 3.0, "duration": 1.0, "call_site": f"train.py:{10 + s} in step"}
            for s, op, dt, n, st in records]
    data = {"format": 1, "rank": rank, "size": size, "host": "h", "pid": 100 + rank, "comm": tag, "time": 0.0,
            "reason": "SIGUSR1", "error": None, "recorder_size": 1000, "dropped": 0, "pending": [], "lost": {},
            "records": recs}
    (folder / f"pyxccl-trace-{tag}-rank{rank}.json").write_text(json.dumps(data))


def test_doctor_consistent(tmp_path, capsys):
    for r in range(3):
        _dump(tmp_path, r, 3, [(s, "allreduce", "float32", 100, "done") for s in (1, 2, 3)])
    assert doctor.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "verdict: consistent" in out and "behind: none" in out, out


def test_doctor_disagreement_and_missing(tmp_path, capsys):
    ok = [(1, "allreduce", "float32", 100, "done"), (2, "broadcast", "int32", 8, "done")]
    _dump(tmp_path, 0, 4, ok + [(3, "allreduce", "float32", 100, "running")])
    _dump(tmp_path, 1, 4, ok + [(3, "allreduce", "float32", 99, "running")])
    _dump(tmp_path, 2, 4, ok + [(3, "allreduce", "float32", 100, "running"), (4, "allgather", "float32", 5, "queued")])
    # a second communicator in the same folder, consistent
    for r in range(2):
        _dump(tmp_path, r, 2, [(1, "barrier", "uint8", 1, "done")], tag="feedfacefeedface")
    assert doctor.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 communicator(s)" in out, out
    assert "MISSING: no dump from rank 3" in out, out
    assert "DISAGREE: the ranks first disagree on collective #3: count differs: " \
           "ranks 0, 2 have count=100, rank 1 has count=99" in out, out
    assert "rank 1: collective #3 allreduce(float32, count=99, op=sum) [running] at train.py:13 in step" in out, out
    assert "STUCK:" in out and "rank 2: collective #4 allgather" in out, out
    assert "communicator feedfacefeedface" in out and "communicator 00c0ffee00c0ffee: no dump from rank 3" in out
    assert "feedfacefeedface: " not in out.split("verdict:")[1], out  # the second one is fine
    assert doctor.main([str(tmp_path), "--comm", "feedface"]) == 0
    capsys.readouterr()


def test_doctor_bad_input(tmp_path, capsys):
    assert doctor.main([str(tmp_path / "nope")]) == 2
    assert doctor.main([str(tmp_path)]) == 2  # no dumps
    (tmp_path / "pyxccl-trace-abc-rank0.json").write_text("{not json")
    assert doctor.main([str(tmp_path)]) == 2
    (tmp_path / "pyxccl-trace-abc-rank0.json").write_text(json.dumps({"rank": 0}))
    assert doctor.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a pyxccl flight-recorder dump" in err, err
    r = subprocess.run([sys.executable, "-m", "pyxccl.cli.doctor", str(tmp_path / "nope")],
                       env=dict(os.environ, PYTHONPATH=SRC_DIR), capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 2 and "not a folder" in r.stderr, r
