"""Two emulated hosts: two network namespaces joined by a veth pair, two ranks in each.

The namespaces get private addresses (10.231.0.1 and 10.231.0.2) that exist only inside
them; nothing else is ever contacted. Each rank (tests/_netns_rank.py) runs every
collective and checks it; the test also checks that ranks in one namespace talk over
shm and ranks in different namespaces over sockets. Skipped when namespaces cannot be
made (not root, no ``ip``, no CAP_SYS_ADMIN). The namespaces are always removed.
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
RANK_SCRIPT = os.path.join(HERE, "_netns_rank.py")
ADDR_A, ADDR_B = "10.231.0.1", "10.231.0.2"
DEADLINE = 180.0


@pytest.fixture(scope="module")
def namespaces():
    for spaces in two_namespaces("pyxccl", "pxv", ADDR_A, ADDR_B):
        yield {**spaces, "ifname_prefix": "pxv"}


def _run_ranks(namespaces: dict, layout: str, root_address: str, tmp_path) -> list[dict]:
    """Run one rank per letter of ``layout`` (A or B: its namespace); their JSON results.

    ``root_address``: how rank 0's get_unique_id learns the address to listen on: "ifname"
    sets PYXCCL_SOCKET_IFNAME to the veth names' prefix on every rank, "comm_id" gives rank 0
    PYXCCL_COMM_ID=10.231.0.1:<port>.
    """
    nranks = len(layout)
    uid_file = str(tmp_path / "uid")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYXCCL_TRANSPORT", "PYXCCL_HOSTID", "PYXCCL_COMM_ID", "PYXCCL_SOCKET_IFNAME")}
    env["PYXCCL_TIMEOUT"] = "60"
    if root_address == "ifname":
        env["PYXCCL_SOCKET_IFNAME"] = namespaces["ifname_prefix"]
    procs, logs, outs = [], [], []
    try:
        for rank, host in enumerate(layout):
            out = str(tmp_path / f"rank{rank}.json")
            log = open(tmp_path / f"rank{rank}.log", "w")
            cmd = ["ip", "netns", "exec", namespaces[host], sys.executable, RANK_SCRIPT, "--rank", str(rank),
                   "--nranks", str(nranks), "--uid-file", uid_file, "--out", out]
            rank_env = dict(env)
            if root_address == "comm_id" and rank == 0:
                rank_env["PYXCCL_COMM_ID"] = f"{ADDR_A if host == 'A' else ADDR_B}:{29000 + os.getpid() % 1000}"
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=rank_env, cwd=HERE))
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
    results = []
    problems = []
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


@pytest.mark.parametrize("layout,root_address", [("AABB", "ifname"), ("ABAB", "comm_id")])
def test_two_hosts_every_collective(namespaces, layout, root_address, tmp_path):
    results = _run_ranks(namespaces, layout, root_address, tmp_path)
    failures = [f"rank {res['rank']} ({layout[res['rank']]}): {f}" for res in results for f in res["failures"]]
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:40])
    for res in results:
        me = res["rank"]
        want = ["self" if p == me else "shm" if layout[p] == layout[me] else "socket" for p in range(len(layout))]
        assert res["transports"] == want, f"rank {me} ({layout[me]}): transports {res['transports']}, want {want}"
        # topology: the communicator sees two hosts, each with the ranks of its namespace
        want_hosts = sorted(sorted(r for r in range(len(layout)) if layout[r] == h) for h in sorted(set(layout)))
        assert sorted(res["hosts"]) == want_hosts, f"rank {me}: hosts {res['hosts']}, want {want_hosts}"
