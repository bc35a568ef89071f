"""Issue 6 on the reused pools: per-call timeouts, peer loss after abort, shrink, /dev/shm hygiene.

The SIGKILL trials are in tests/test_faults.py; the wire-level attacks in test_auth_attack.py.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from harness import fresh_comm

import pyxccl
from pyxccl.transport.shm import files as shm_files


def job_call_timeout(comm) -> list[str]:
    """Rank 0 calls an allreduce with timeout=1 that rank 1 never joins: CollectiveTimeout in ~1 s."""
    failures = []
    c = fresh_comm(comm, timeout=30)
    if comm.rank == 0:
        t0 = time.monotonic()
        try:
            c.all_reduce(np.ones(1000, np.float32), timeout=1.0)
            failures.append("an allreduce no other rank joined completed")
        except pyxccl.CollectiveTimeout as exc:
            took = time.monotonic() - t0
            if not 0.9 <= took < 5:
                failures.append(f"timeout=1.0 fired after {took:.1f} s")
            for word in ("allreduce", "count=1000", "float32", "rank 1", "step", "channel"):
                if word not in str(exc):
                    failures.append(f"the CollectiveTimeout does not say {word!r}: {exc}")
        for bad in (0, -1, "5", True, float("nan")):
            try:
                c.all_reduce(np.ones(4, np.float32), timeout=bad)
                failures.append(f"timeout={bad!r} was accepted")
            except pyxccl.InvalidArgument as exc:
                if "timeout" not in str(exc):
                    failures.append(f"timeout={bad!r}: the error does not name timeout: {exc}")
    comm.barrier()
    c.abort()
    return failures


def job_loss_then_shrink(comm) -> list[str]:
    """The last rank aborts its communicator; the others get PeerLostError naming it, then shrink."""
    failures = []
    n, me = comm.size, comm.rank
    c = fresh_comm(comm, timeout=30)
    c.all_reduce(np.ones(10, np.float32))  # every connection is up
    comm.barrier()
    if me == n - 1:
        c.abort()
        c.abort()  # idempotent
        comm.barrier()
        return failures
    t0 = time.monotonic()
    try:
        c.all_reduce(np.ones(100000, np.float32))
        failures.append("an allreduce with an aborted rank completed")
    except pyxccl.PeerLostError as exc:
        took = time.monotonic() - t0
        if exc.rank != n - 1 or f"rank {n - 1}" not in str(exc) or exc.host is None:
            failures.append(f"the PeerLostError does not name rank {n - 1} and its host: {exc!r} ({exc.rank}, {exc.host})")
        if took > 5:
            failures.append(f"the loss was noticed after {took:.1f} s")
    try:  # later calls fail at once
        c.broadcast(np.ones(4, np.float32), root=0)
        failures.append("a broadcast on the broken communicator completed")
    except pyxccl.PeerLostError:
        pass
    for bad, word in (([me], "in exclude"), ([], "lost but not in exclude"), ([n], "exclude")):
        try:
            c.shrink(exclude=bad)
            failures.append(f"shrink(exclude={bad}) was accepted")
        except pyxccl.InvalidArgument as exc:
            if word not in str(exc):
                failures.append(f"shrink(exclude={bad}): {exc}")
    new = c.shrink(exclude=[n - 1])
    if (new.size, new.rank) != (n - 1, me):
        failures.append(f"shrunk communicator is rank {new.rank} of {new.size}")
    x = np.full(1001, me + 1, np.float64)
    new.all_reduce(x)
    if not np.all(x == sum(range(1, n))):
        failures.append(f"allreduce on the shrunk communicator gave {x[0]}, expected {sum(range(1, n))}")
    new.destroy()
    c.destroy()  # local after a loss: must not wait for the lost rank
    comm.barrier()
    return failures


def job_no_shm_leftovers(comm) -> list[str]:
    """A communicator's files in /dev/shm are gone after destroy (and after abort)."""
    failures = []
    suffix = shm_files.owner_suffix()
    for end in ("destroy", "abort"):
        c = fresh_comm(comm)
        x = np.ones(300000, np.float32)
        c.all_reduce(x)
        with pyxccl.group():
            c.send(x, (comm.rank + 1) % comm.size)
            c.recv(np.empty_like(x), (comm.rank - 1) % comm.size)
        comm.barrier()
        getattr(c, end)()
        comm.barrier()
        mine = [f for f in os.listdir("/dev/shm") if f.endswith(suffix) and f"-{c._tag}-" in f]
        if mine:
            failures.append(f"after {end}: {mine}")
    return failures


@pytest.mark.parametrize("nranks", (2,))
def test_per_call_timeout(pool, nranks):
    pool(nranks).check(job_call_timeout)


@pytest.mark.parametrize("nranks", (3, 4))
def test_peer_loss_then_shrink(pool, nranks):
    pool(nranks).check(job_loss_then_shrink)


def test_peer_loss_then_shrink_across_emulated_hosts(pool):
    pool(4, "hosts:AABB").check(job_loss_then_shrink)


@pytest.mark.parametrize("nranks", (1, 3))
def test_no_shm_leftovers(pool, nranks):
    pool(nranks).check(job_no_shm_leftovers)


def test_sweep_removes_files_of_dead_processes(tmp_path):
    """Files named after a process that is gone are swept; ours and young ones stay."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    ns = shm_files.owner_suffix().split(".")[0]
    stale = tmp_path / f"pyxccl-abc-bell0{ns}.{dead_pid}"
    ours = tmp_path / f"pyxccl-abc-bell1{shm_files.owner_suffix()}"
    other_ns = tmp_path / f"pyxccl-abc-bell2-p1.{dead_pid}"
    for f in (stale, ours, other_ns):
        f.write_bytes(b"x")
        os.utime(f, (time.time() - 60, time.time() - 60))
    young = tmp_path / f"pyxccl-abc-bell3{ns}.{dead_pid}"
    young.write_bytes(b"x")
    removed = shm_files.sweep_stale(str(tmp_path), min_age=5.0)
    assert removed == [stale.name]
    assert ours.exists() and other_ns.exists() and young.exists() and not stale.exists()
