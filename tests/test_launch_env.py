"""Launcher environment parsing and the unique-id exchange through a store."""

from __future__ import annotations

import socket
import sys
import threading
import time
import types

import pytest

from pyxccl.bootstrap import (Bootstrap, LaunchInfo, TCPStore, UniqueId, exchange_unique_id,
                              from_environment)
from pyxccl.errors import CollectiveTimeout, ConfigError

MASTER = {"MASTER_ADDR": "node0", "MASTER_PORT": "29500"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_threads(n: int, fn) -> list:
    out: list = [None] * n
    errs: list = []

    def body(r: int) -> None:
        try:
            out[r] = fn(r)
        except BaseException as exc:  # noqa: BLE001
            errs.append(exc)

    ts = [threading.Thread(target=body, args=(r,)) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20.0)
    assert not any(t.is_alive() for t in ts)
    if errs:
        raise errs[0]
    return out


# ---------------------------------------------------------------- parsing

def test_single_process_when_nothing_is_set():
    info = from_environment({})
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (0, 1, 0, 1)
    assert info.launcher == "single" and info.master_addr is None and info.master_port is None


def test_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "2", **MASTER}
    info = from_environment(env)
    assert info == LaunchInfo(3, 8, 1, 2, "node0", 29500, "torchrun", True, 2)


def test_openmpi():
    env = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6",
           "OMPI_COMM_WORLD_LOCAL_RANK": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "3", **MASTER}
    info = from_environment(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 6, 2, 3)
    assert info.launcher == "openmpi" and not info.use_agent_store


def test_pmi():
    env = {"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", **MASTER}
    info = from_environment(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (0, 4, 0, None)
    assert info.launcher == "pmi"


def test_slurm():
    env = {"SLURM_PROCID": "7", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3",
           "SLURM_NTASKS_PER_NODE": "4", **MASTER}
    info = from_environment(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (7, 8, 3, 4)
    assert info.launcher == "slurm" and info.master_port == 29500
    env["SLURM_NTASKS_PER_NODE"] = "2(x3),2"
    assert from_environment(env).local_world_size is None


def test_precedence_torchrun_over_mpi_over_slurm():
    env = {"RANK": "1", "WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0",
           "OMPI_COMM_WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", **MASTER}
    assert from_environment(env).launcher == "torchrun"
    del env["RANK"], env["WORLD_SIZE"]
    assert from_environment(env).launcher == "openmpi"
    del env["OMPI_COMM_WORLD_RANK"], env["OMPI_COMM_WORLD_SIZE"]
    assert from_environment(env).launcher == "slurm"


def test_one_process_needs_no_master():
    info = from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert info.world_size == 1 and info.master_addr is None


@pytest.mark.parametrize("env, var, hint", [
    ({"RANK": "0", **MASTER}, "WORLD_SIZE", "set WORLD_SIZE"),
    ({"WORLD_SIZE": "2", **MASTER}, "RANK", "set RANK"),
    ({"RANK": "zero", "WORLD_SIZE": "2", **MASTER}, "RANK", "not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2", **MASTER}, "RANK", "out of range"),
    ({"RANK": "0", "WORLD_SIZE": "0", **MASTER}, "WORLD_SIZE", ">= 1"),
    ({"RANK": "-1", "WORLD_SIZE": "2", **MASTER}, "RANK", ">= 0"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x", **MASTER}, "LOCAL_RANK", "integer"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", **MASTER},
     "LOCAL_RANK", "out of range"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "29500"}, "MASTER_ADDR", "set MASTER_ADDR"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "MASTER_PORT", "set MASTER_PORT"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "70000"},
     "MASTER_PORT", "1..65535"),
    ({"OMPI_COMM_WORLD_RANK": "0", **MASTER}, "OMPI_COMM_WORLD_SIZE", "set OMPI_COMM_WORLD_SIZE"),
    ({"PMI_RANK": "0", "PMI_SIZE": "two", **MASTER}, "PMI_SIZE", "integer"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "MASTER_ADDR", "scontrol"),
])
def test_config_errors_name_the_variable(env, var, hint):
    with pytest.raises(ConfigError) as exc:
        from_environment(env)
    assert var in str(exc.value) and hint in str(exc.value)


# ---------------------------------------------------------------- exchange

def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pyxccl-store")]


def test_exchange_unique_id_three_ranks_then_bootstrap():
    port = free_port()
    n = 3
    infos = [LaunchInfo(r, n, r, n, "127.0.0.1", port, "torchrun") for r in range(n)]
    before = len(store_threads())
    uids = run_threads(n, lambda r: exchange_unique_id(infos[r], timeout=10.0))
    assert all(isinstance(u, UniqueId) for u in uids) and uids[0] == uids[1] == uids[2]
    join_uid_servers(5.0)
    assert len(store_threads()) == before  # rank 0's server is gone once every rank fetched the id
    bs = run_threads(n, lambda r: Bootstrap(uids[r], r, n, timeout=10.0))
    assert run_threads(n, lambda r: bs[r].allgather(bytes([r]))) == [[b"\0", b"\1", b"\2"]] * n
    for b in bs:
        b.close()
    # a second exchange on the same port gets a fresh id
    again = run_threads(n, lambda r: exchange_unique_id(infos[r], timeout=10.0))
    assert again[0] == again[1] == again[2] != uids[0]


def test_exchange_world_size_one():
    uid = exchange_unique_id(LaunchInfo(0, 1, 0, 1, None, None, "single"))
    assert isinstance(uid, UniqueId)


def join_uid_servers(seconds: float) -> None:
    """Wait for rank 0's background store servers (they end once every rank fetched the id, or time out)."""
    for t in threading.enumerate():
        if t.name == "pyxccl-uid-store":
            t.join(seconds)


def test_exchange_timeouts():
    port = free_port()
    t0 = time.monotonic()
    # rank 0 does not wait for the others to fetch the id (it joins the root at once, which names the
    # ranks that never came); its store serves the id in the background until the timeout
    uid = exchange_unique_id(LaunchInfo(0, 2, 0, 2, "127.0.0.1", port, "slurm"), timeout=0.3)
    with pytest.raises(CollectiveTimeout, match=r"ranks \[1\] of 2"):
        Bootstrap(uid, 0, 2, timeout=0.3)
    with pytest.raises(CollectiveTimeout, match="TCP store 127.0.0.1"):
        exchange_unique_id(LaunchInfo(1, 2, 1, 2, "127.0.0.1", free_port(), "slurm"), timeout=0.3)
    assert time.monotonic() - t0 < 3.0
    join_uid_servers(3.0)
    assert not store_threads()


def test_exchange_through_torchrun_agent_store(monkeypatch):
    """With TORCHELASTIC_USE_AGENT_STORE, ranks are clients of the agent's store (faked here)."""
    agent = TCPStore("127.0.0.1", 0, is_server=True, timeout=5.0)
    made: list[tuple] = []

    class FakeTorchStore:
        def __init__(self, host, port, is_master=False, timeout=None):
            made.append((host, port, is_master, timeout.total_seconds()))
            self._s = TCPStore(host, port, timeout=timeout.total_seconds())

        def set(self, key, value):
            self._s.set(key, value)

        def get(self, key):
            return self._s.get(key)

    torch = types.ModuleType("torch")
    dist = types.ModuleType("torch.distributed")
    dist.TCPStore = FakeTorchStore  # type: ignore[attr-defined]
    torch.distributed = dist  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.distributed", dist)
    n = 3
    infos = [LaunchInfo(r, n, r, n, "127.0.0.1", agent.port, "torchrun", True, 1)
             for r in range(n)]
    uids = run_threads(n, lambda r: exchange_unique_id(infos[r], timeout=5.0))
    assert uids[0] == uids[1] == uids[2]
    assert made and all(m == ("127.0.0.1", agent.port, False, 5.0) for m in made)
    assert agent.check(["pyxccl/unique_id/1/0"])
    agent.close()
