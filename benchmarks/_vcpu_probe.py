"""Probe of the vCPU placement: a pure-Python cache-line ping-pong between CPU 0 and CPU 1.

On a VM the host may place the two vCPUs on cores that share a cache (one CCD, one L3) or
on cores that do not (different CCDs, different sockets), and may move them between such
placements while the VM runs. A cache line bouncing between the two vCPUs then takes
either a short or a long round trip, and every shared-memory path between two ranks
(pyxccl's flags and copies, MPI's shared-memory transports) feels it.

``probe()`` measures that round trip from Python: this process pins itself to one CPU and
a forked child to another (CPUs 0 and 1 where both are allowed), the two spin on one
8-byte word in an anonymous shared mapping, each writing the next value when it sees its
turn; the result is the fastest batch of 15 × 1000 round trips, in ns per round trip.
The number includes the interpreter's own work per turn, which varies too, so only clear
changes between probes on one machine mean something, not its absolute value. ``probe_copy()`` does the same with
4 KiB written by one side and copied out by the other on every turn (20 × 20 round trips):
more cache lines per turn, less interpreter per line, so near and far differ by a larger
factor. Each takes a few ms and never more than ``LIMIT_S`` (70 ms) of measuring: on a
machine so busy that fewer than 3 batches finish by then it returns nan, as it does with
fewer than two CPUs. The caller's CPU affinity is restored; the child is gone when it
returns.

    python benchmarks/_vcpu_probe.py          # one probe of each kind, in ns
    python benchmarks/_vcpu_probe.py 10       # ten, 1 s apart
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import signal
import sys
import threading
import time

BATCHES = 15
ROUND_TRIPS = 1000
COPY_BYTES = 4096  # probe_copy(): bytes each side writes and the other reads per round trip
COPY_BATCHES = 20
COPY_ROUND_TRIPS = 20
MIN_BATCHES = 3  # fewer finished batches than this by LIMIT_S: nan (the machine was too busy)
LIMIT_S = 0.07  # a probe stops measuring here and keeps the batches it finished
CHILD_LIMIT_S = 2.0  # the child's own limit, should its parent stop without killing it


class _Late(Exception):
    pass


def _cpus() -> tuple[int, int] | None:
    """Two CPUs to pin to: 0 and 1 when this process may run on both, else the first two it may use."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(allowed) < 2:
        return None
    return (0, 1) if {0, 1} <= set(allowed) else (allowed[0], allowed[1])


def probe(batches: int = BATCHES, round_trips: int = ROUND_TRIPS) -> float:
    """Fastest batch's ns per round trip of one shared word between two pinned processes; nan if it cannot run.

    Bounded by ``LIMIT_S`` (a SIGALRM timer when called from the main thread, else a check
    between batches); nan when fewer than ``MIN_BATCHES`` batches finished by then.
    """
    return _pingpong(batches, round_trips, 0)


def probe_copy(nbytes: int = COPY_BYTES, batches: int = COPY_BATCHES, round_trips: int = COPY_ROUND_TRIPS) -> float:
    """Like ``probe()``, but each turn also moves ``nbytes`` through the shared mapping.

    Per round trip this process writes ``nbytes`` into one shared buffer, the child copies
    them out and writes ``nbytes`` into another, which this process copies out: the cache
    lines go from one CPU's cache to the other's, as in a shared-memory collective. The
    copies are single memcpy calls, so the interpreter's share of the time is smaller than
    in ``probe()``'s. ns per round trip of the fastest batch; nan as for ``probe()``.
    """
    return _pingpong(batches, round_trips, max(1, nbytes))


def _pingpong(batches: int, round_trips: int, nbytes: int) -> float:
    cpus = _cpus()
    if cpus is None or not hasattr(os, "fork"):
        return math.nan
    saved = os.sched_getaffinity(0)
    page = mmap.PAGESIZE
    m = mmap.mmap(-1, page + 2 * -(-nbytes // page) * page)  # the flag's page, then the two buffers
    f = ctypes.c_long.from_buffer(m, 0)
    view = memoryview(m)
    a, b = view[page:page + nbytes], view[page + nbytes:page + 2 * nbytes]  # empty when nbytes == 0
    src, dst = bytearray(os.urandom(nbytes)), bytearray(nbytes)
    total = batches * round_trips
    main = threading.current_thread() is threading.main_thread()
    old_handler, installed = None, False
    pid = os.fork()
    if pid == 0:  # the child: answer every odd value with the next even one, then leave
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # its default action ends the child
            signal.setitimer(signal.ITIMER_REAL, CHILD_LIMIT_S)
            os.sched_setaffinity(0, {cpus[1]})
            f.value = -1  # ready
            i = 1
            if nbytes:
                while i < 2 * total:
                    while f.value != i:
                        pass
                    dst[:] = a
                    b[:] = src
                    f.value = i + 1
                    i += 2
            else:
                while i < 2 * total:
                    while f.value != i:
                        pass
                    f.value = i + 1
                    i += 2
        finally:
            os._exit(0)
    best, done, finished = math.inf, False, 0
    try:
        try:
            deadline = time.perf_counter_ns() + int(LIMIT_S * 1e9)
            if main:
                def _alarm(signum, frame):
                    raise _Late()
                old_handler, installed = signal.signal(signal.SIGALRM, _alarm), True
                signal.setitimer(signal.ITIMER_REAL, LIMIT_S)  # one shot
            os.sched_setaffinity(0, {cpus[0]})
            while f.value != -1:  # wait until the child is pinned and spinning
                pass
            f.value = 0
            i = 0
            for _ in range(batches):
                t = time.perf_counter_ns()
                if nbytes:
                    for _ in range(round_trips):
                        a[:] = src
                        f.value = i + 1
                        while f.value != i + 2:
                            pass
                        dst[:] = b
                        i += 2
                else:
                    for _ in range(round_trips):
                        f.value = i + 1
                        while f.value != i + 2:
                            pass
                        i += 2
                t1 = time.perf_counter_ns()
                best = min(best, (t1 - t) / round_trips)
                finished += 1
                if t1 > deadline:
                    raise _Late()
            done = True
        finally:
            if main:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _Late:  # raised in the loop, or by the one alarm landing just before the timer was off
        pass
    finally:
        if installed:
            signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        os.sched_setaffinity(0, saved)
        if not done:  # stopped early: the child may still spin
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
        del f
        a.release()
        b.release()
        view.release()
        m.close()
    return best if finished >= min(MIN_BATCHES, batches) else math.nan


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    for k in range(count):
        if k:
            time.sleep(1.0)
        print(f"probe {probe():.0f} ns  probe_copy {probe_copy():.0f} ns", flush=True)
