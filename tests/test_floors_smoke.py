"""Smoke test of benchmarks/floors.py: every plan runs on two forked processes, moves exactly the
bytes it claims (the script counts wrong bytes and fails on any) and prints a row."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOORS = os.path.join(ROOT, "benchmarks", "floors.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process_vm_readv is Linux only")
def test_every_plan_moves_the_right_bytes():
    from pyxccl.transport.shm import cma

    if not cma.available():
        pytest.skip("process_vm_readv is not available")
    r = subprocess.run([sys.executable, FLOORS, "--sizes", "3M", "--iters", "2"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| 3M |")]
    plans = [c[1].strip() for c in rows if c[4].strip()]
    assert plans == ["exchange", "exchange-put", "broadcast-read", "broadcast-split", "allreduce-slots", "allreduce-read"]
    assert all(c[4].strip() == "0" and float(c[2]) > 0 for c in rows if c[4].strip())


def test_a_wrong_byte_is_counted():
    import numpy as np

    import floors

    h = 4096
    good = np.repeat(np.array([1, 2], np.uint8), h)
    assert floors._wrong("exchange", 0, good, good.copy(), h) == 0
    bad = good.copy()
    bad[5] = 0
    assert floors._wrong("exchange", 0, good, bad, h) == 1
    assert floors._wrong("broadcast-read", 1, good, np.full(2 * h, 1, np.uint8), h) == 0
    assert floors._wrong("allreduce-slots", 0, good, good.copy(), h) > h  # bytes, not their sums
