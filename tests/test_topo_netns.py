"""Detection inside two network namespaces joined by a veth pair (two emulated hosts).

Each namespace gets a private address (10.232.0.1/24, 10.232.0.2/24) that exists only inside
it. Detection runs in each (``ip netns exec``): each must see its own veth NIC with its own
address and report a different host, so that the ranks of the two namespaces form 2 hosts.
Skipped when namespaces cannot be made (not root, no ``ip``). The namespaces are always removed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pyxccl.topo import host_layout, order_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
ADDR = {"A": "10.232.0.1", "B": "10.232.0.2"}

SCRIPT = """
import json
from pyxccl import config
from pyxccl.topo import local_system, summarize
s = summarize(local_system(config.load({})))
print(json.dumps(s))
"""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def namespaces():
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    tag = f"{os.getpid() % 100000}"
    ns = {"A": f"pxtopo{tag}a", "B": f"pxtopo{tag}b"}
    veth = {"A": f"pxt{tag}a", "B": f"pxt{tag}b"}

    def cleanup() -> None:
        for name in ns.values():
            _ip("netns", "del", name)
        _ip("link", "del", veth["A"])

    steps = [("netns", "add", ns["A"]), ("netns", "add", ns["B"]),
             ("link", "add", veth["A"], "type", "veth", "peer", "name", veth["B"])]
    for side in "AB":
        steps += [("link", "set", veth[side], "netns", ns[side]),
                  ("-n", ns[side], "addr", "add", f"{ADDR[side]}/24", "dev", veth[side]),
                  ("-n", ns[side], "link", "set", veth[side], "up"),
                  ("-n", ns[side], "link", "set", "lo", "up")]
    try:
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                pytest.skip(f"cannot set up network namespaces: `ip {' '.join(step)}`: {r.stderr.strip()}")
        yield ns, veth
    finally:
        cleanup()


def _in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYXCCL_")}
    env["PYTHONPATH"] = os.path.abspath(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, *argv], capture_output=True, text=True,
                          timeout=60, env=env, cwd=HERE)


def test_each_namespace_sees_its_own_nic_and_is_its_own_host(namespaces):
    ns, veth = namespaces
    summary = {}
    for side in "AB":
        r = _in_ns(ns[side], "-c", SCRIPT)
        assert r.returncode == 0, r.stderr
        summary[side] = json.loads(r.stdout.strip().splitlines()[-1])
    for side in "AB":
        nics = summary[side]["nics"]
        assert [(n["name"], n["address"]) for n in nics] == [(veth[side], ADDR[side])]
        assert summary[side]["socket_address"] == ADDR[side]
        assert nics[0]["busid"] is None  # a veth has no PCI device: a virtual NIC under the CPU
    assert summary["A"]["host"] != summary["B"]["host"]
    ids = [summary["A"]["host"], summary["B"]["host"], summary["A"]["host"], summary["B"]["host"]]
    layout = host_layout(ids)
    assert layout.nhosts == 2 and layout.hosts == [[0, 2], [1, 3]]
    assert order_ranks(ids) == [0, 2, 1, 3]


def test_pyxccl_topo_runs_in_a_namespace(namespaces):
    ns, veth = namespaces
    r = _in_ns(ns["A"], "-m", "pyxccl.cli.topo", "-q")
    assert r.returncode == 0, r.stderr
    assert veth["A"] in r.stdout and ADDR["A"] in r.stdout
