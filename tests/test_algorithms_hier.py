"""The host-aware algorithms on two emulated hosts: two network namespaces joined by a veth
pair, two ranks in each (layouts AABB and ABAB), against a numpy reference.

Each rank (tests/_netns_algo_rank.py) runs every host-aware algorithm built for the
communicator's real host layout, and the flat algorithms of the same collectives by
name. The namespaces get private addresses (10.233.0.1 and 10.233.0.2) that exist only
inside them. Skipped when namespaces cannot be made (not root, no ``ip``, no
CAP_SYS_ADMIN); the namespaces are always removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _netns import two_namespaces

HERE = os.path.dirname(os.path.abspath(__file__))
RANK_SCRIPT = os.path.join(HERE, "_netns_algo_rank.py")
ADDR_A, ADDR_B = "10.233.0.1", "10.233.0.2"
DEADLINE = 240.0


@pytest.fixture(scope="module")
def namespaces():
    yield from two_namespaces("pxalg", "pxav", ADDR_A, ADDR_B)


def _run_ranks(namespaces: dict, layout: str, tmp_path) -> list[dict]:
    nranks = len(layout)
    uid_file = str(tmp_path / "uid")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYXCCL_")}
    env["PYXCCL_TIMEOUT"] = "60"
    env["PYXCCL_SOCKET_IFNAME"] = "pxav"
    procs, logs, outs = [], [], []
    try:
        for rank, host in enumerate(layout):
            out = str(tmp_path / f"rank{rank}.json")
            log = open(tmp_path / f"rank{rank}.log", "w")
            cmd = ["ip", "netns", "exec", namespaces[host], sys.executable, RANK_SCRIPT, "--rank", str(rank),
                   "--nranks", str(nranks), "--uid-file", uid_file, "--out", out]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE))
            logs.append(log)
            outs.append(out)
        end = time.monotonic() + DEADLINE
        for p in procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        silent = [r for r, p in enumerate(procs) if p.poll() is None]
        for r in silent:
            procs[r].send_signal(signal.SIGTERM)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for log in logs:
            log.close()
    results, problems = [], []
    for rank, out in enumerate(outs):
        if not os.path.exists(out):
            log = (tmp_path / f"rank{rank}.log").read_text(errors="replace")[-3000:]
            why = "did not finish in time" if rank in silent else f"exited {procs[rank].returncode} without a result"
            problems.append(f"rank {rank} ({layout[rank]}) {why}; log tail:\n{log}")
            continue
        with open(out) as f:
            results.append(json.load(f))
    assert not problems, "\n".join(problems)
    return results


_RESULTS: dict[str, list[dict]] = {}


def _results(namespaces: dict, layout: str, tmp_path_factory) -> list[dict]:
    if layout not in _RESULTS:
        _RESULTS[layout] = _run_ranks(namespaces, layout, tmp_path_factory.mktemp(f"hier{layout}"))
    return _RESULTS[layout]


@pytest.mark.parametrize("layout", ["AABB", "ABAB"])
def test_host_aware_algorithms_on_two_hosts(namespaces, layout, tmp_path_factory):
    results = _results(namespaces, layout, tmp_path_factory)
    failures = [f"rank {res['rank']} ({layout[res['rank']]}): {f}" for res in results for f in res["failures"]]
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:30])
    want_hosts = [[r for r, h in enumerate(layout) if h == x] for x in "AB"]
    for res in results:
        me = res["rank"]
        assert sorted(res["hosts"]) == sorted(want_hosts), res["hosts"]
        want = ["self" if p == me else "shm" if layout[p] == layout[me] else "socket" for p in range(len(layout))]
        assert res["transports"] == want


@pytest.mark.parametrize("layout", ["AABB", "ABAB"])
def test_host_aware_algorithms_by_name(namespaces, layout, tmp_path_factory):
    results = _results(namespaces, layout, tmp_path_factory)
    by_name = {res["by_name"] for res in results}
    assert len(by_name) == 1, by_name
    if by_name != {True}:
        pytest.skip("algorithm='hierarchical' by name needs the communicator to pass its hosts to "
                    "algorithms.program() (comm._program); the Programs themselves passed")
