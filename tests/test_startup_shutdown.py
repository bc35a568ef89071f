"""Start-up and shutdown that explain themselves (issue 27, deliverable 3).

- a rank that was never started is named (and only it) by a WARN line within 15 s at default
  settings, with the address the missing rank must connect to; the final timeout names only it;
- a rank that exits right after ``init()`` (``sys.exit`` or ``os._exit``) is a PeerLostError naming
  it on the others' next call, never a FileNotFoundError, and their ``destroy()`` is quick;
- ``destroy()`` on one rank while the others still call or sleep returns after its short closing
  deadline (not the timeout), and the others' calls then raise PeerLostError naming it.

Every rank is a subprocess started with torchrun's variables (what ``pyxccl-run`` sets).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time

import pytest

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

PROG = r"""
import json, os, sys, time
import numpy as np
import pyxccl
mode, special = sys.argv[1], int(sys.argv[2])

def say(**kw):
    print(json.dumps(kw), flush=True)

t0 = time.monotonic()
try:
    comm = pyxccl.init()
except Exception as exc:
    say(where="init", error=type(exc).__name__, message=str(exc), seconds=time.monotonic() - t0)
    sys.exit(3)
rank = comm.rank

def call(where):
    t = time.monotonic()
    try:
        comm.all_reduce(np.ones(4, np.float32))
        say(where=where, rank=rank, error=None, seconds=time.monotonic() - t)
    except Exception as exc:
        say(where=where, rank=rank, error=type(exc).__name__, message=str(exc), lost=getattr(exc, "rank", None),
            seconds=time.monotonic() - t)

def destroy():
    t = time.monotonic()
    comm.destroy()
    say(where="destroy", rank=rank, seconds=time.monotonic() - t)

if mode in ("exit", "hard_exit"):        # rank `special` leaves right after init
    if rank == special:
        os._exit(0) if mode == "hard_exit" else sys.exit(0)
    call("call")
    destroy()
elif mode == "destroy":                  # rank 0 destroys; rank 1 calls (hangs); rank 2 sleeps, then calls
    if rank == 0:
        destroy()
    elif rank == 1:
        call("call")
        destroy()
    else:
        time.sleep(special)
        call("call")
        destroy()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(nranks: int, ranks: list[int], mode: str, special: int, **env: str) -> dict[int, subprocess.Popen]:
    port = _free_port()
    procs = {}
    for r in ranks:
        e = {k: v for k, v in os.environ.items() if not k.startswith("PYXCCL_")}  # default settings
        e.update(PYTHONPATH=SRC, RANK=str(r), WORLD_SIZE=str(nranks), LOCAL_RANK=str(r),
                 LOCAL_WORLD_SIZE=str(nranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
        procs[r] = subprocess.Popen([sys.executable, "-c", PROG, mode, str(special)], env=e, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return procs


def _finish(procs: dict[int, subprocess.Popen], timeout: float) -> dict[int, tuple[list[dict], str]]:
    """Each rank's JSON records and stderr (every process killed if still running at ``timeout``)."""
    end, out = time.monotonic() + timeout, {}
    for r, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        out[r] = ([json.loads(line) for line in stdout.splitlines() if line.startswith("{")], stderr)
    return out


def _kill(procs: dict[int, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.kill()
    for p in procs.values():
        p.communicate()


# --------------------------------------------------------------------------- a rank that never came

def test_warning_schedule():
    from pyxccl.bootstrap.patience import warning_times
    times = warning_times()
    assert [next(times) for _ in range(9)] == [10, 20, 30, 40, 50, 60, 120, 180, 240]


def test_missing_rank_named_within_15s_at_default_settings():
    """Ranks 0, 1, 3 of 4 (rank 2 never started), PYXCCL_TIMEOUT at its default (300 s)."""
    procs = _start(4, [0, 1, 3], "exit", -1)
    t0 = time.monotonic()
    lines: dict[int, list[str]] = {r: [] for r in procs}
    sel = selectors.DefaultSelector()
    for r, p in procs.items():
        os.set_blocking(p.stderr.fileno(), False)
        sel.register(p.stderr, selectors.EVENT_READ, r)
    root_line = None
    try:
        while root_line is None and time.monotonic() - t0 < 15:
            for key, _ in sel.select(timeout=0.5):
                chunk = key.fileobj.read()
                lines[key.data].extend((chunk or "").splitlines())
            root_line = next((ln for ln in lines[0] if "bootstrap root" in ln and "still waiting" in ln), None)
        seconds = time.monotonic() - t0
        time.sleep(0.5)  # the other ranks' lines of the same tick
        for key, _ in sel.select(timeout=0.5):
            lines[key.data].extend((key.fileobj.read() or "").splitlines())
    finally:
        sel.close()
        _kill(procs)
    assert root_line is not None, f"no WARN line naming the missing rank within 15 s: {lines}"
    assert seconds < 15
    assert "WARN" in root_line
    assert "ranks [2] of 4" in root_line and "joined: 0, 1, 3" in root_line, root_line
    assert "127.0.0.1:" in root_line and "MASTER_ADDR:MASTER_PORT=127.0.0.1:" in root_line, root_line
    for r in (1, 3):  # the others say what they wait for and where
        mine = [ln for ln in lines[r] if "still waiting for bootstrap root 127.0.0.1:" in ln]
        assert mine and f"rank {r}:" in mine[0], lines[r]


@pytest.mark.parametrize("nranks,missing", [(4, 2), (3, 0)])
def test_timeout_names_only_the_missing_rank(nranks, missing):
    """With a short PYXCCL_TIMEOUT every started rank's error names the missing rank and no other."""
    ranks = [r for r in range(nranks) if r != missing]
    results = _finish(_start(nranks, ranks, "exit", -1, PYXCCL_TIMEOUT="3"), timeout=30)
    for r in ranks:
        records, stderr = results[r]
        assert len(records) == 1 and records[0]["where"] == "init", (records, stderr[-2000:])
        rec = records[0]
        assert rec["error"] == "CollectiveTimeout" and rec["seconds"] < 10, rec
        if missing == 0:  # nobody serves the unique id: every rank names rank 0
            assert "rank 0 never served the unique id" in rec["message"], rec
        else:
            assert f"ranks [{missing}] of {nranks}" in rec["message"], rec


# --------------------------------------------------------------------------- a rank that leaves at once

@pytest.mark.parametrize("mode", ["exit", "hard_exit"])
def test_early_exit_after_init_is_peer_lost(mode):
    """3 ranks; each rank in turn exits right after init(): the others' next call raises
    PeerLostError naming it (never FileNotFoundError), and their destroy() returns at once."""
    for leaver in (0, 1, 2, 0):
        results = _finish(_start(3, [0, 1, 2], mode, leaver, PYXCCL_TIMEOUT="30"), timeout=60)
        for r, (records, stderr) in results.items():
            assert "FileNotFoundError" not in stderr, stderr[-3000:]
            if r == leaver:
                assert records == [], records
                continue
            where = {rec["where"]: rec for rec in records}
            assert set(where) == {"call", "destroy"}, (r, records, stderr[-3000:])
            call = where["call"]
            assert call["error"] == "PeerLostError" and call["lost"] == leaver, (leaver, call)
            assert f"rank {leaver} " in call["message"], call
            assert call["seconds"] < 10 and where["destroy"]["seconds"] < 3, (leaver, records)


# --------------------------------------------------------------------------- destroy() is bounded

def test_destroy_is_bounded_while_others_call_or_sleep():
    """Rank 0 destroys while rank 1 waits in an all-reduce rank 0 never makes and rank 2 sleeps;
    PYXCCL_TIMEOUT=120: rank 0's destroy returns after the closing deadline (10 s), not 120 s."""
    from pyxccl.comm.communicator import DESTROY_SECONDS

    results = _finish(_start(3, [0, 1, 2], "destroy", 12, PYXCCL_TIMEOUT="120"), timeout=90)
    records = {r: {rec["where"]: rec for rec in recs} for r, (recs, _) in results.items()}
    stderr0 = results[0][1]
    assert DESTROY_SECONDS - 0.5 <= records[0]["destroy"]["seconds"] <= DESTROY_SECONDS + 3, (records, stderr0)
    assert "destroy: not every rank reached destroy()" in stderr0
    for r in (1, 2):  # the one still calling and the one that called after rank 0 left
        call = records[r]["call"]
        assert call["error"] == "PeerLostError" and call["lost"] == 0 and "destroy()" in call["message"], call
        assert records[r]["destroy"]["seconds"] < 3, records[r]
    assert records[1]["call"]["seconds"] < DESTROY_SECONDS + 3
