"""Issue 6's fault acceptance: SIGKILL a random rank at a random moment of mixed collectives.

50 trials on 4 ranks of one host (shm) and 50 on 2 emulated hosts x 2 ranks (network
namespaces: shm inside each, sockets between). In every trial every survivor must raise
PeerLostError (or CollectiveTimeout) naming the killed rank within PYXCCL_TIMEOUT + 5 s,
see no wrong result before the kill, build a communicator of the survivors with
``comm.shrink(exclude=[lost rank])`` and get a correct allreduce on it, and exit by itself;
no /dev/shm file of the trial's processes may remain. The trials run in tests/_fault_runner.py (forked rank processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _netns import two_namespaces

HERE = os.path.dirname(os.path.abspath(__file__))
TRIALS = int(os.environ.get("PYXCCL_FAULT_TRIALS", "50"))
TIMEOUT = 10  # PYXCCL_TIMEOUT of the trial ranks
ADDR_A, ADDR_B = "10.233.0.1", "10.233.0.2"


def _run(tmp_path, *extra: str) -> dict:
    out = tmp_path / "summary.json"
    env = {**os.environ, "PYXCCL_TIMEOUT": str(TIMEOUT)}
    env.pop("PYXCCL_SOCKET_IFNAME", None)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_fault_runner.py"), "--trials", str(TRIALS),
                           "--nranks", "4", "--shrink", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=TRIALS * (TIMEOUT + 40), env=env)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check(summary: dict) -> None:
    failed = summary["failed_trials"]
    assert not failed, json.dumps(failed[:3], indent=1)
    assert sum(summary["errors"].values()) == 3 * TRIALS  # three survivors per trial
    assert summary["shrink_ok"] == 3 * TRIALS  # and each went on with comm.shrink(exclude=[lost])
    assert summary["latency_max"] <= TIMEOUT + 5


def test_sigkill_random_rank_one_host(tmp_path):
    summary = _run(tmp_path)
    _check(summary)
    print(f"\n{TRIALS} trials, one host: {summary['errors']}, latency median {summary['latency_median']} s, "
          f"max {summary['latency_max']} s, {summary['seconds']} s in all")


@pytest.fixture(scope="module")
def fault_hosts():
    yield from two_namespaces("pxflt", "pxfv", ADDR_A, ADDR_B)


def test_sigkill_random_rank_two_hosts(tmp_path, fault_hosts):
    summary = _run(tmp_path, "--hosts", f"{fault_hosts['A']},{fault_hosts['B']}", "--addrs", f"{ADDR_A},{ADDR_B}")
    _check(summary)
    print(f"\n{TRIALS} trials, 2 hosts x 2 ranks: {summary['errors']}, latency median {summary['latency_median']} s, "
          f"max {summary['latency_max']} s, {summary['seconds']} s in all")
