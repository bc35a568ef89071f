"""What the bare data movement of a 2-rank call costs on this machine: its copy floor.

Some targets of the speed issue are missed by margins that the copies alone explain. This
script measures, for two ranks, the per-rank work every library here must do for a call,
with the primitives they use (a local copy, ``process_vm_readv`` / ``process_vm_writev`` of
the peer's memory, numpy's add) in two forked processes that do nothing else: no library, no
steps, a spin barrier through shared memory before and after each call. A library cannot beat
its floor by more than the noise; the gap between a library's time and the floor is what its
own machinery costs.

Floors (N: nccl-tests' size of the call; h = N / 2, the block each rank owns):

* ``exchange``: all-gather and all-to-all: copy the own block (h) locally, read the peer's (h).
* ``exchange-put``: the same, the own block copied piece by piece and each piece written into
  the peer while it is in the cache (``process_vm_writev``).
* ``broadcast-read``: the receiver reads N; ``broadcast-split``: the root writes the first half
  while the receiver reads the second.
* ``allreduce-slots``: per 1 MiB piece, each rank copies the piece its peer reduces into a shared
  slot; each reduces the peer's slot with its own piece into its output; then each reads the
  peer's reduced half (``process_vm_readv``): 3 passes of h per rank (pyxccl's mixed path).
* ``allreduce-read``: per piece, read the peer's piece into a private buffer and reduce; then
  read the peer's reduced half (pyxccl's single-copy path).

Usage: ``python benchmarks/floors.py [--sizes 16M,64M] [--iters 30]``; prints median and
minimum ms per call (both ranks done), the bytes found wrong after the last call (exit status
1 if any), and each primitive's time alone (one process). The host moves this VM's two vCPUs
between one CCD and two every few seconds to minutes (``docs/performance.md``): run it next to
the library runs it is compared with.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from pyxccl.transport.shm import cma  # noqa: E402

PIECE = 1 << 20  # bytes per piece (pyxccl's slot size)
PLANS = ("exchange", "exchange-put", "broadcast-read", "broadcast-split", "allreduce-slots", "allreduce-read")


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


class _Pair:
    """Two forked processes with a spin barrier, each other's pid and buffer addresses."""

    def __init__(self, shared_bytes: int) -> None:
        self._ctl = mmap.mmap(-1, 4096)
        self.flags = np.frombuffer(self._ctl, dtype=np.int64)
        self.shared = np.frombuffer(mmap.mmap(-1, max(shared_bytes, 4096)), dtype=np.uint8)
        self._k = 0
        parent = os.getpid()
        child = os.fork()
        self.rank = 0 if child else 1
        self.peer_pid = child if child else parent

    def barrier(self) -> None:
        self._k += 1
        self.flags[self.rank] = self._k
        self.wait(1 - self.rank, self._k)

    def wait(self, index: int, value: int) -> None:
        """Spin until ``flags[index] >= value`` (RuntimeError after 60 s: the peer died or hangs)."""
        spins, deadline = 0, time.monotonic() + 60
        while self.flags[index] < value:
            spins += 1
            if spins % 100_000 == 0 and time.monotonic() > deadline:
                raise RuntimeError(f"rank {self.rank}: the other process stopped (flag {index} < {value} for 60 s)")

    def exchange(self, *addrs: int) -> list[int]:
        """Publish this rank's addresses; the peer's."""
        base = 8 + 8 * self.rank
        for i, a in enumerate(addrs):
            self.flags[base + 16 * i] = a
        self.barrier()
        return [int(self.flags[8 + 8 * (1 - self.rank) + 16 * i]) for i in range(len(addrs))]


def _pieces(total: int):
    return [(off, min(PIECE, total - off)) for off in range(0, total, PIECE)]


def run_plan(plan: str, nbytes: int, iters: int) -> tuple[list[float], int]:
    """Seconds per call (rank 0's view, after a closing barrier) of ``plan`` at ``nbytes``, and the
    bytes both ranks hold wrongly after the last call (0: the plan moved what it claims)."""
    h = nbytes // 2
    pair = _Pair(2 * 4 * PIECE)
    r = pair.rank
    inp = np.full(nbytes, r + 1, np.uint8)
    out = np.zeros(nbytes, np.uint8)
    scratch = np.zeros(PIECE, np.uint8)
    peer_in, peer_out = pair.exchange(inp.ctypes.data, out.ctypes.data)
    pid = pair.peer_pid
    other = 1 - r
    floats = lambda a: a.view(np.float32)  # noqa: E731
    slots = [pair.shared[q * 4 * PIECE:(q + 1) * 4 * PIECE] for q in range(2)]

    def exchange() -> None:
        np.copyto(out[r * h:(r + 1) * h], inp[r * h:(r + 1) * h])
        cma.read(pid, [(out.ctypes.data + other * h, peer_in + r * h, h)])

    def exchange_put() -> None:
        mine = out[r * h:(r + 1) * h]
        for off, n in _pieces(h):
            np.copyto(mine[off:off + n], inp[r * h + off:r * h + off + n])
            cma.write(pid, [(mine.ctypes.data + off, peer_out + r * h + off, n)])

    def broadcast_read() -> None:
        if r == 1:
            cma.read(pid, [(out.ctypes.data, peer_in, nbytes)])

    def broadcast_split() -> None:
        if r == 0:
            cma.write(pid, [(inp.ctypes.data, peer_out, h)])
        else:
            cma.read(pid, [(out.ctypes.data + h, peer_in + h, nbytes - h)])

    def allreduce(by_slots: bool) -> None:
        mine, theirs = slice(r * h, (r + 1) * h), slice(other * h, (other + 1) * h)
        posted, released, flags = 100, 102, pair.flags
        flags[posted + r] = flags[released + r] = 0
        pair.barrier()
        for i, (off, n) in enumerate(_pieces(h)):
            if by_slots:  # copy the piece the peer reduces into my slot (once the peer is done with
                # the slot's previous piece), then reduce the peer's slot as soon as it is posted
                pair.wait(released + other, i - 3)
                slot = slots[r][(i % 4) * PIECE:(i % 4) * PIECE + n]
                np.copyto(slot, inp[theirs][off:off + n])
                flags[posted + r] = i + 1
                pair.wait(posted + other, i + 1)
                arrived = slots[other][(i % 4) * PIECE:(i % 4) * PIECE + n]
            else:  # read the peer's piece of my half into a private buffer
                arrived = scratch[:n]
                cma.read(pid, [(arrived.ctypes.data, peer_in + r * h + off, n)])
            np.add(floats(arrived), floats(inp[mine][off:off + n]), out=floats(out[mine][off:off + n]))
            flags[released + r] = i + 1
        pair.barrier()
        cma.read(pid, [(out.ctypes.data + other * h, peer_out + other * h, h)])

    body = {"exchange": exchange, "exchange-put": exchange_put, "broadcast-read": broadcast_read,
            "broadcast-split": broadcast_split, "allreduce-slots": lambda: allreduce(True),
            "allreduce-read": lambda: allreduce(False)}[plan]
    try:
        times, wrong = _timed(pair, body, iters, lambda: _wrong(plan, r, inp, out, h))
    except BaseException:
        if r == 1:  # the child never returns into the caller's code
            traceback.print_exc()
            os._exit(1)
        raise
    if r == 1:
        os._exit(0)
    os.waitpid(pair.peer_pid, 0)
    return times, wrong


def _timed(pair: _Pair, body, iters: int, wrong) -> tuple[list[float], int]:
    """Run ``body`` 3 + ``iters`` times between barriers; the last ``iters`` times and both ranks'
    wrong bytes (``wrong()`` after the last call)."""
    times = []
    for it in range(iters + 3):
        pair.barrier()
        t0 = time.perf_counter()
        body()
        pair.barrier()
        if it >= 3:
            times.append(time.perf_counter() - t0)
    pair.flags[200 + pair.rank] = wrong()
    pair.barrier()
    return times, int(pair.flags[200] + pair.flags[201])


def _wrong(plan: str, r: int, inp: np.ndarray, out: np.ndarray, h: int) -> int:
    """Bytes of ``out`` that do not hold what the plan must have moved (every input byte is rank + 1)."""
    if plan.startswith("exchange"):
        want = np.repeat(np.array([1, 2], np.uint8), h)
    elif plan.startswith("broadcast"):
        want = np.full(out.size, 1, np.uint8) if r == 1 else out  # the root's output is not written
    else:
        total = (np.full(h, 1, np.uint8).view(np.float32) + np.full(h, 2, np.uint8).view(np.float32)).view(np.uint8)
        want = np.concatenate([total, total])
    return int(np.count_nonzero(out != want))


def primitives(nbytes: int, iters: int) -> dict[str, float]:
    """Median seconds of each primitive on h = nbytes / 2 bytes in one process (sources evicted first)."""
    h = nbytes // 2
    a, b, c = (np.ones(h // 4, np.float32) for _ in range(3))
    evict = np.ones(64 << 20, np.uint8)

    def timed(fn) -> float:
        ts = []
        for _ in range(iters):
            evict.sum()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    me = os.getpid()
    return {"copy h": timed(lambda: np.copyto(c, a)), "add h": timed(lambda: np.add(a, b, out=c)),
            "read h (own process)": timed(lambda: cma.read(me, [(c.ctypes.data, a.ctypes.data, h)]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16M,64M,256M", help="call sizes (nccl-tests' convention), comma-separated")
    ap.add_argument("--iters", type=int, default=30, help="timed calls per plan and size")
    ap.add_argument("--plans", default=",".join(PLANS), help=f"comma-separated, of: {', '.join(PLANS)}")
    args = ap.parse_args(argv)
    if not cma.available():
        print("process_vm_readv is not available here", file=sys.stderr)
        return 1
    print("| size | plan | median ms | min ms | wrong |\n|---|---|---:|---:|---:|")
    bad = False
    for text in args.sizes.split(","):
        nbytes = _size(text)
        iters = max(5, args.iters * (16 << 20) // max(nbytes, 16 << 20))
        for plan in args.plans.split(","):
            times, wrong = run_plan(plan, nbytes, iters)
            bad = bad or wrong > 0
            print(f"| {text} | {plan} | {np.median(times) * 1e3:.3f} | {min(times) * 1e3:.3f} | {wrong} |", flush=True)
        for name, sec in primitives(nbytes, max(5, iters // 2)).items():
            print(f"| {text} | {name}, alone | {sec * 1e3:.3f} | | |", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
