"""pyxccl-run on several hosts, the port range and the unique id's listen address.

Two network namespaces joined by a veth pair stand for two hosts (private addresses that
exist only inside them; skipped when namespaces cannot be made). Node 0 runs
``pyxccl-run --nnodes 2 --node-rank 0`` without an address, and node 1 runs exactly the
command node 0 printed. Without root, the same two-node launch runs on loopback.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _netns import two_namespaces

from pyxccl import config
from pyxccl.bootstrap import net
from pyxccl.errors import ConfigError, TransportError

RUN = [sys.executable, "-m", "pyxccl.cli.run"]
ADDR_A, ADDR_B = "10.234.0.1", "10.234.0.2"
RANGE = (41000, 41015)
PERF = ["--", sys.executable, "-m", "pyxccl.cli.perf", "-c", "allreduce", "-b", "8", "-e", "64K", "-f", "8",
        "--iters", "5", "-w", "1", "--check"]

# A rank that checks its variables and an all-reduce across the hosts, then reports the TCP
# ports it listens on and where a fresh unique id listens.
RANK = """
    import json, os
    import numpy as np
    import pyxccl

    def listening_ports():
        mine = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                mine.add(link[8:-1])
        ports = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = open(table).read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if f[3] == "0A" and f[9] in mine:  # LISTEN, one of this process's sockets
                    ports.append(int(f[1].rsplit(":", 1)[1], 16))
        return sorted(ports)

    env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                                      "MASTER_ADDR", "MASTER_PORT")}
    comm = pyxccl.init()
    x = np.full(1 << 14, comm.rank + 1, np.float32)
    comm.all_reduce(x)
    uid = pyxccl.get_unique_id(timeout=5)
    print("RESULT", json.dumps({"env": env, "rank": comm.rank, "sum": float(x[0]), "uid": [uid.host, uid.port],
                                "ports": listening_ports(),
                                "transports": [comm.transport_of(p) for p in range(comm.size)]}), flush=True)
    comm.destroy()
"""


# ---------------------------------------------------------------- PYXCCL_PORT_RANGE

def test_port_range_is_parsed_and_bad_values_say_what_to_write():
    assert config.load({"PYXCCL_PORT_RANGE": "50000-50100"}).port_range == (50000, 50100)
    assert config.load({"PYXCCL_PORT_RANGE": "7000-7000"}).port_range == (7000, 7000)
    assert config.load({}).port_range is None
    for bad in ("50000", "50100-50000", "0-10", "a-b", "1-70000"):
        with pytest.raises(ConfigError, match="PYXCCL_PORT_RANGE"):
            config.load({"PYXCCL_PORT_RANGE": bad})


def _two_free_ports() -> int:
    """A port p such that p and p + 1 are free on 127.0.0.1 now."""
    for p in range(42000, 43000, 2):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    pytest.skip("no two consecutive free ports in 42000..43000")


def test_listen_takes_the_first_free_port_of_the_range(monkeypatch):
    p = _two_free_ports()
    monkeypatch.setenv("PYXCCL_PORT_RANGE", f"{p}-{p + 1}")
    config.reset()
    socks = []
    try:
        socks.append(net.listen("127.0.0.1"))
        socks.append(net.listen("127.0.0.1"))  # p is taken now: p + 1
        assert [s.getsockname()[1] for s in socks] == [p, p + 1]
        with pytest.raises(TransportError, match=f"PYXCCL_PORT_RANGE={p}-{p + 1}.*widen"):
            net.listen("127.0.0.1")
        socks.append(net.listen("127.0.0.1", _free()))  # an explicit port ignores the range
    finally:
        for s in socks:
            s.close()
        config.reset()


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- two nodes, one command each

def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "rank.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def _printed_command(err_file: Path, node0: subprocess.Popen, seconds: float = 30.0) -> list[str]:
    """The command node 0 printed for node 1 (the indented line of its stderr)."""
    end = time.monotonic() + seconds
    while True:
        lines = [ln for ln in err_file.read_text().splitlines() if ln.startswith("  ")]
        if lines:
            assert len(lines) == 1, lines
            return shlex.split(lines[0])
        assert node0.poll() is None, err_file.read_text()
        assert time.monotonic() < end, "node 0 printed no command"
        time.sleep(0.02)


def _two_nodes(tmp_path: Path, node0_args: list[str], wrap: dict[int, list[str]],
               env: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Run node 0 with ``node0_args``, then node 1 with the command node 0 printed; both must exit 0.

    ``wrap[node]`` prefixes a node's command (``ip netns exec NS``). Returns (node 1's command,
    node 0's and node 1's stdout lines).
    """
    err0 = tmp_path / "node0.err"
    full_env = {**os.environ, "PYXCCL_TIMEOUT": "30", **env}
    nodes = []
    try:
        with open(err0, "w") as ef:
            nodes.append(subprocess.Popen(wrap.get(0, []) + RUN + node0_args, stdout=subprocess.PIPE,
                                          stderr=ef, text=True, env=full_env))
        cmd = _printed_command(err0, nodes[0])
        nodes.append(subprocess.Popen(wrap.get(1, []) + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=full_env))
        outs = [p.communicate(timeout=60) for p in reversed(nodes)][::-1]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # pyxccl-run stops its ranks
                p.wait(10)
    assert nodes[0].returncode == 0, (outs[0][0][-2000:], err0.read_text()[-3000:])
    assert nodes[1].returncode == 0, (outs[1][0][-2000:], outs[1][1][-3000:])
    return cmd, outs[0][0].splitlines(), outs[1][0].splitlines()


def _results(lines: list[str]) -> dict[int, dict]:
    out = {}
    for line in lines:
        if "RESULT " in line:
            res = json.loads(line.split("RESULT ", 1)[1])
            out[res["rank"]] = res
    return out


def _check_ranks(results: dict[int, dict], master: str) -> None:
    assert sorted(results) == [0, 1, 2, 3]
    for r, res in results.items():
        node, local = divmod(r, 2)
        assert res["env"] == {"RANK": str(r), "WORLD_SIZE": "4", "LOCAL_RANK": str(local), "LOCAL_WORLD_SIZE": "2",
                              "GROUP_RANK": str(node), "MASTER_ADDR": master, "MASTER_PORT": res["env"]["MASTER_PORT"]}
        assert res["sum"] == 1 + 2 + 3 + 4


def test_two_nodes_on_one_host_run_the_printed_command(tmp_path):
    """No root needed: both nodes on loopback; node 1 runs what node 0 printed."""
    script = _script(tmp_path, RANK)
    port = str(_free())
    cmd, out0, out1 = _two_nodes(tmp_path, ["--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1",
                                            "--master-port", port, "-n", "2", script], {}, {})
    assert cmd == RUN + ["--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
                                          "--master-port", port, "-n", "2", "--", script]
    assert "loopback" in (tmp_path / "node0.err").read_text()  # other hosts could not reach it: said so
    results = {**_results(out0), **_results(out1)}
    _check_ranks(results, "127.0.0.1")
    assert all(line.startswith(("[0] ", "[1] ")) for line in out0 if line)  # global ranks as prefixes
    assert all(line.startswith(("[2] ", "[3] ")) for line in out1 if line)


@pytest.mark.parametrize("argv,message", [
    (["--nnodes", "2", "--node-rank", "2"], "--node-rank must be in 0..1"),
    (["--nnodes", "2", "--node-rank", "1"], "--master-addr is required"),
    (["--nnodes", "0"], "--nnodes must be >= 1"),
])
def test_bad_node_arguments_say_what_to_fix(argv, message):
    r = subprocess.run(RUN + argv + ["-n", "1", sys.executable, "-c", "pass"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and message in r.stderr, r.stderr


# ---------------------------------------------------------------- two namespace hosts

@pytest.fixture(scope="module")
def hosts():
    yield from two_namespaces("pxl", "pxlv", ADDR_A, ADDR_B)


def _clean_env() -> dict[str, str]:
    return {"PYXCCL_PORT_RANGE": f"{RANGE[0]}-{RANGE[1]}", "PYXCCL_TRANSPORT": "", "PYXCCL_HOSTID": "",
            "PYXCCL_COMM_ID": "", "PYXCCL_SOCKET_IFNAME": "", "MASTER_ADDR": "", "MASTER_PORT": ""}


def test_two_namespace_hosts_run_the_quick_start_benchmark(hosts, tmp_path):
    wrap = {0: ["ip", "netns", "exec", hosts["A"]], 1: ["ip", "netns", "exec", hosts["B"]]}
    cmd, out0, out1 = _two_nodes(tmp_path, ["--nnodes", "2", "--node-rank", "0", "-n", "2", *PERF], wrap,
                                 _clean_env())
    # node 0 found its own address and took torchrun's default port
    assert cmd[cmd.index("--master-addr") + 1] == ADDR_A and cmd[cmd.index("--master-port") + 1] == "29500"
    rows = [ln.split()[1:] for ln in out0 if ln.startswith("[0] ") and ln.split()[1].isdigit()]
    assert [int(r[0]) for r in rows] == [8, 64, 512, 4096, 32768, 65536], out0  # sizes end at -e
    assert all(len(r) == 13 and r[8] == "0" and r[12] == "0" for r in rows), rows  # #wrong, out of place and in place
    assert "4 ranks" in "\n".join(out0)


def test_two_namespace_hosts_listen_only_in_the_port_range(hosts, tmp_path):
    script = _script(tmp_path, RANK)
    wrap = {0: ["ip", "netns", "exec", hosts["A"]], 1: ["ip", "netns", "exec", hosts["B"]]}
    _, out0, out1 = _two_nodes(tmp_path, ["--nnodes", "2", "--node-rank", "0", "--master-port", "29400", "-n", "2",
                                          script], wrap, _clean_env())
    results = {**_results(out0), **_results(out1)}
    _check_ranks(results, ADDR_A)
    lo, hi = RANGE
    for r, res in results.items():
        host = ADDR_A if r < 2 else ADDR_B
        assert res["transports"] == ["self" if p == r else "shm" if p // 2 == r // 2 else "socket" for p in range(4)]
        assert res["ports"] and all(lo <= p <= hi for p in res["ports"]), (r, res["ports"])
        # a unique id made under MASTER_ADDR listens on this host's address towards it, in the range
        assert res["uid"][0] == host and lo <= res["uid"][1] <= hi, res["uid"]
    # the ring's and the socket transport's listeners: at least one per rank, more where a peer is remote
    assert sum(len(res["ports"]) for res in results.values()) > 4 + 4
