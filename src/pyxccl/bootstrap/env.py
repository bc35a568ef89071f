"""Launcher environments: who am I (rank, world size) and how do the ranks share a unique id.

Supported launchers, tried in this order (the first whose rank or size variable is set wins):

=========  ==========================  ========================  =====================================
launcher   rank / world size           local rank / local size   also needs (world size > 1)
=========  ==========================  ========================  =====================================
torchrun   RANK, WORLD_SIZE            LOCAL_RANK,               MASTER_ADDR, MASTER_PORT
                                       LOCAL_WORLD_SIZE
openmpi    OMPI_COMM_WORLD_RANK/SIZE   OMPI_COMM_WORLD_LOCAL_*   MASTER_ADDR, MASTER_PORT
pmi        PMI_RANK, PMI_SIZE          MPI_LOCALRANKID,          MASTER_ADDR, MASTER_PORT
                                       MPI_LOCALNRANKS
slurm      SLURM_PROCID, SLURM_NTASKS  SLURM_LOCALID,            MASTER_ADDR, MASTER_PORT
                                       SLURM_NTASKS_PER_NODE
=========  ==========================  ========================  =====================================

None set: a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from .. import config, log
from ..errors import CollectiveTimeout, ConfigError, InvalidArgument, PyxcclError
from .store import TCPStore
from . import net
from .patience import Patience
from .uid import UniqueId, get_unique_id

# launcher, rank var, size var, local rank var, local size var
_LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
)

_MASTER_HINT = {
    "slurm": " (e.g. MASTER_ADDR=$(scontrol show hostnames $SLURM_NODELIST | head -n1))",
    "openmpi": " (e.g. mpirun -x MASTER_ADDR=<rank 0 host> -x MASTER_PORT=<free port>)",
    "pmi": " (e.g. mpiexec -genv MASTER_ADDR <rank 0 host> -genv MASTER_PORT <free port>)",
}


@dataclass
class LaunchInfo:
    """Where this process sits in the job, as its launcher described it."""

    rank: int
    world_size: int
    local_rank: int | None
    local_world_size: int | None
    master_addr: str | None
    master_port: int | None
    launcher: str
    """One of ``torchrun``, ``openmpi``, ``pmi``, ``slurm``, ``single``."""
    use_agent_store: bool = False
    """torchrun's agent already serves a TCPStore on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE)."""
    restart_count: int = 0
    """TORCHELASTIC_RESTART_COUNT: keeps keys of a restarted job apart in the agent's store."""


def _int(env: Mapping[str, str], var: str, launcher: str, required: bool, lo: int,
         what: str) -> int | None:
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        if required:
            raise ConfigError(f"{launcher} launch detected but {var} is not set: set {var} to "
                              f"{what}")
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not an integer: set it to {what}") from None
    if value < lo:
        raise ConfigError(f"{var}={raw!r} must be >= {lo}: set it to {what}")
    return value


def from_environment(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read the launcher's variables (see the module docstring); bad ones raise ConfigError."""
    env = os.environ if env is None else env
    for launcher, rvar, svar, lrvar, lsvar in _LAUNCHERS:
        if env.get(rvar) is None and env.get(svar) is None:
            continue
        size = _int(env, svar, launcher, True, 1, "the number of processes of the job")
        assert size is not None
        rank = _int(env, rvar, launcher, True, 0, f"this process's rank, 0..{size - 1}")
        assert rank is not None
        if rank >= size:
            raise ConfigError(f"{rvar}={rank} is out of range for {svar}={size}: set {rvar} to "
                              f"0..{size - 1}")
        local_rank = _int(env, lrvar, launcher, False, 0, "this process's rank on its host")
        if launcher == "slurm" and not env.get(lsvar, "").strip().isdigit():
            local_size = None  # e.g. "2(x3),1": not one number
        else:
            local_size = _int(env, lsvar, launcher, False, 1, "the number of processes per host")
        if local_rank is not None and local_size is not None and local_rank >= local_size:
            raise ConfigError(f"{lrvar}={local_rank} is out of range for {lsvar}={local_size}")
        addr, port = _master(env, launcher, size)
        agent = env.get("TORCHELASTIC_USE_AGENT_STORE", "") == "True"
        restart = _int(env, "TORCHELASTIC_RESTART_COUNT", launcher, False, 0,
                       "torchrun's restart count") or 0
        return LaunchInfo(rank, size, local_rank, local_size, addr, port, launcher, agent, restart)
    addr, port = _master(env, "single", 1)
    return LaunchInfo(0, 1, 0, 1, addr, port, "single")


def _master(env: Mapping[str, str], launcher: str, size: int) -> tuple[str | None, int | None]:
    addr = env.get("MASTER_ADDR", "").strip() or None
    hint = _MASTER_HINT.get(launcher, "")
    if addr is None and size > 1:
        raise ConfigError(f"{launcher} launch of {size} processes but MASTER_ADDR is not set: set "
                          f"MASTER_ADDR to the host name or address of rank 0{hint} and "
                          f"MASTER_PORT to a free TCP port there")
    raw = env.get("MASTER_PORT", "").strip()
    if not raw:
        if size > 1:
            raise ConfigError(f"{launcher} launch of {size} processes but MASTER_PORT is not set: "
                              f"set MASTER_PORT to a free TCP port on rank 0's host{hint}")
        return addr, None
    if not raw.isdigit() or not 0 < int(raw) <= 0xFFFF:
        raise ConfigError(f"MASTER_PORT={raw!r} is not a TCP port: set it to 1..65535")
    return addr, int(raw)


_generations: dict[tuple[int, str | None, int | None], int] = {}
_gen_lock = threading.Lock()


def _key(info: LaunchInfo) -> str:
    """The store key of this exchange: one per (restart, call number of this rank)."""
    with _gen_lock:
        slot = (info.rank, info.master_addr, info.master_port)
        gen = _generations.get(slot, 0)
        _generations[slot] = gen + 1
    return f"pyxccl/unique_id/{info.restart_count}/{gen}"


def exchange_unique_id(info: LaunchInfo, timeout: float | None = None) -> UniqueId:
    """Rank 0 creates the unique id (starting its root) and every rank returns the same one.

    Collective over the job: every rank calls it, in the same order as its other calls.
    The id travels through a key-value store at MASTER_ADDR:MASTER_PORT: torchrun's agent
    store when TORCHELASTIC_USE_AGENT_STORE=True and torch is importable, else a
    :class:`TCPStore` that rank 0 serves, in the background, until every rank fetched the id (or
    ``timeout``, default PYXCCL_TIMEOUT, passed). A wait that lasts WARNs (:mod:`.patience`).
    """
    if not isinstance(info, LaunchInfo):
        raise InvalidArgument(f"info must be a LaunchInfo, got {type(info).__name__}")
    if info.world_size == 1:
        return get_unique_id()
    if info.master_addr is None or info.master_port is None:
        raise ConfigError("MASTER_ADDR and MASTER_PORT must be set to exchange the unique id")
    wait = float(config.get().timeout if timeout is None else timeout)
    key = _key(info)
    if info.use_agent_store:
        store = _agent_store(info, info.master_addr, info.master_port, wait)
        if store is not None:
            return _via_agent_store(store, info, key, wait)
    return _via_own_store(info, key, wait)


def _agent_store(info: LaunchInfo, host: str, port: int, wait: float) -> Any:
    try:
        import datetime

        import torch.distributed as dist  # type: ignore[import-not-found]
    except ImportError:
        log.warn("TORCHELASTIC_USE_AGENT_STORE=True but torch is not importable; rank 0 will "
                 "serve its own store on MASTER_PORT", rank=info.rank)
        return None
    return dist.TCPStore(host, port, is_master=False,
                         timeout=datetime.timedelta(seconds=wait))


def _via_agent_store(store: Any, info: LaunchInfo, key: str, wait: float) -> UniqueId:
    where = f"{info.master_addr}:{info.master_port}"
    if info.rank == 0:
        uid = get_unique_id(wait, host=net.route_address(info.master_addr or "127.0.0.1"),
                            joining=f"launched ranks fetch it first from torchrun's agent store at {where}")
        store.set(key, uid.to_bytes())
        return uid
    try:
        with Patience(lambda s: f"rank {info.rank}: after {s:.0f} s still waiting for rank 0 to publish the "
                                f"unique id in torchrun's agent store at {where} (is rank 0 running?)",
                      rank=info.rank, name="pyxccl-uid-patience"):
            raw = store.get(key)
    except Exception as exc:  # torch raises its own DistStoreError / RuntimeError on timeout
        raise CollectiveTimeout(f"rank {info.rank}: no unique id under {key!r} in torchrun's "
                                f"agent store {info.master_addr}:{info.master_port} after "
                                f"{wait:g}s: {exc}") from None
    return UniqueId.from_bytes(bytes(raw))


def _via_own_store(info: LaunchInfo, key: str, wait: float) -> UniqueId:
    assert info.master_addr is not None and info.master_port is not None
    where = f"{info.master_addr}:{info.master_port}"
    if info.rank == 0:
        return _serve_unique_id(info, key, wait, where)
    what = f"the store rank 0 serves at MASTER_ADDR:MASTER_PORT={where}"
    stage = ["connect to"]

    def waiting(elapsed: float) -> str:
        doing = ("still trying to connect to" if stage[0] == "connect to" else
                 "connected but still waiting for rank 0 to publish the unique id in")
        return (f"rank {info.rank}: after {elapsed:.0f} s {doing} {what} (is rank 0 running, with the same "
                f"MASTER_ADDR/MASTER_PORT, and is {where} reachable from here?)")

    with Patience(waiting, rank=info.rank, name="pyxccl-uid-patience"):
        try:
            store = TCPStore(info.master_addr, info.master_port, is_server=False, timeout=wait)
        except CollectiveTimeout as exc:
            raise CollectiveTimeout(f"rank {info.rank}: rank 0 never served the unique id: {exc}; is rank 0 "
                                    f"running with MASTER_ADDR:MASTER_PORT={where}?") from None
        stage[0] = "fetch from"
        try:
            try:
                raw = store.get(key, wait)
            except CollectiveTimeout:
                raise CollectiveTimeout(f"rank {info.rank} timed out after {wait:g}s waiting for "
                                        f"rank 0 to publish the unique id under {key!r} in the "
                                        f"store at {where}") from None
            uid = UniqueId.from_bytes(raw)
            if store.add(key + "/fetched", 1) == info.world_size - 1:
                store.set(key + "/all_fetched", b"1")
            return uid
        finally:
            store.close()


#: rank 0's stores still serving a unique id, by (MASTER_ADDR, MASTER_PORT): the next exchange
#: on the same port waits for the last one to close
_serving: dict[tuple[str, int], threading.Thread] = {}


def _serve_unique_id(info: LaunchInfo, key: str, wait: float, where: str) -> UniqueId:
    """Rank 0: publish the unique id and serve it in the background until every rank fetched it.

    Rank 0 goes on at once to join the root, so the root knows it arrived and names only the
    ranks that are truly missing (they never fetched the id, so they never joined either).
    """
    assert info.master_addr is not None and info.master_port is not None
    slot = (info.master_addr, info.master_port)
    previous = _serving.pop(slot, None)
    if previous is not None:
        previous.join(wait)
    store = TCPStore(info.master_addr, info.master_port, is_server=True, timeout=wait)
    try:
        uid = get_unique_id(wait, host=net.route_address(info.master_addr),
                            joining=f"launched ranks fetch it first from rank 0's store at "
                                    f"MASTER_ADDR:MASTER_PORT={where}")
        store.set(key, uid.to_bytes())
    except BaseException:
        store.close()
        raise

    def serve() -> None:
        try:
            store.get(key + "/all_fetched", wait)
        except PyxcclError:
            pass  # the root names the ranks that never came
        finally:
            store.close()

    thread = _serving[slot] = threading.Thread(target=serve, name="pyxccl-uid-store", daemon=True)
    thread.start()
    return uid
