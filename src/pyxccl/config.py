"""Every ``PYXCCL_*`` environment variable, typed, defaulted and documented in one place.

Nothing else in pyxccl reads ``os.environ`` for a ``PYXCCL_*`` variable: call
:func:`get` for the process-wide configuration (read once, then cached) or
:func:`load` with an explicit mapping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from .errors import ConfigError


def _parse_bytes(text: str) -> int:
    """Parse ``4096``, ``64K``, ``1M``, ``2G`` (powers of 1024) into bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    value = int(float(t) * mult)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _bytes_or_zero(text: str) -> int:
    """Like :func:`_parse_bytes`, and ``0`` (or ``off``) for never."""
    return 0 if text.strip().lower() in ("0", "off") else _parse_bytes(text)


def _parse_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("WARN", "INFO", "TRACE"):
        raise ValueError("one of WARN, INFO, TRACE")
    return level


def _parse_transport(text: str) -> str:
    value = text.strip().lower()
    if value not in ("auto", "socket", "shm", "local"):
        raise ValueError("one of auto, socket, shm, local")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _parse_cma(text: str) -> str:
    if text.strip().lower() in ("auto", "mixed", "put"):
        return text.strip().lower()
    try:
        return "on" if _parse_bool(text) else "off"
    except ValueError:
        raise ValueError("auto, 1, 0, mixed or put") from None


def _parse_device_backend(text: str) -> str:
    value = text.strip().lower()
    if value not in ("cuda", "emulated"):
        raise ValueError("cuda or emulated")
    return value


def _parse_port_range(text: str) -> tuple[int, int]:
    lo_s, sep, hi_s = text.strip().partition("-")
    if not sep or not lo_s.strip().isdigit() or not hi_s.strip().isdigit():
        raise ValueError("lo-hi, e.g. 50000-50100")
    lo, hi = int(lo_s), int(hi_s)
    if not 1 <= lo <= hi <= 0xFFFF:
        raise ValueError("ports 1..65535 with lo <= hi")
    return lo, hi


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("one of 1, 0 (or true/false, yes/no, on/off)")


@dataclass(frozen=True)
class Config:
    """The typed configuration; each field documents its variable."""

    debug: str = "WARN"
    """PYXCCL_DEBUG: WARN, INFO (what init decided) or TRACE (every call)."""
    timeout: float = 300.0
    """PYXCCL_TIMEOUT: seconds any blocking wait may take before it raises."""
    transport: str = "auto"
    """PYXCCL_TRANSPORT: auto (shm on one host, socket across), or force socket/shm/local."""
    slot_bytes: int = 1024 * 1024
    """PYXCCL_SLOT_BYTES: bytes of one transport slot (NCCL's step buffer). With 4 slots a
    connection holds 4 MiB, NCCL's default buffer; on the 2-core VM 1 MiB slots ran 16-64 MiB
    calls 1.5-2x faster than 512 KiB ones (fewer Python steps per byte), 2-4 MiB no better."""
    nslots: int = 4
    """PYXCCL_NSLOTS: slots in flight per connector (NCCL's NCCL_STEPS)."""
    nchannels: int = 1
    """PYXCCL_NCHANNELS: channels the built-in algorithms use."""
    cma: str = "auto"
    """PYXCCL_CMA: same-host single copy (a receiver copies large messages straight from the sender's buffer with process_vm_readv): auto (default: per call, whichever of it, the shared slots, their mix and writes measured faster, see pyxccl.runtime.host.path_choice), 1 (whenever a step may), 0 (never: always the slots), mixed (only where the receiver does not reduce what arrives), put (like 1, and a rank that also receives writes a step's every slice into the receiver where it offered its destination at the call's start)."""
    cma_min_bytes: int = 512 * 1024
    """PYXCCL_CMA_MIN_BYTES: smallest step (bytes per slot) that goes by single copy (smaller ones measured slower than the slots)."""
    stream_min_bytes: int = 8 * 1024 * 1024
    """PYXCCL_STREAM_MIN_BYTES: smallest local copy of a whole block (every slice of a call at once) that bypasses the cache with non-temporal stores, where llvmlite is installed (pyxccl.runtime.kernels.nt_copy); 0: never."""
    spin_us: float = 1000.0
    """PYXCCL_SPIN_US: microseconds a waiter spins before it sleeps in the kernel."""
    socket_ifname: str = ""
    """PYXCCL_SOCKET_IFNAME: interface(s) for sockets, NCCL syntax (``eth0``, ``^docker,lo``, ``=eth0``)."""
    socket_nstreams: int = 1
    """PYXCCL_SOCKET_NSTREAMS: TCP streams per peer and channel."""
    port_range: tuple[int, int] | None = None
    """PYXCCL_PORT_RANGE: ``lo-hi``: every socket pyxccl listens on with a port of its choosing (the unique id's root, the bootstrap ring, the socket transport, a store on port 0) takes the first free port of this range instead of an ephemeral one, for firewalls between hosts; unset: ephemeral ports."""
    comm_id: str = ""
    """PYXCCL_COMM_ID: ``host:port`` for the bootstrap root (like NCCL_COMM_ID)."""
    hostid: str = ""
    """PYXCCL_HOSTID: override the host identity used to pick shm vs socket per peer."""
    algo: str = ""
    """PYXCCL_ALGO: algorithm choice, NCCL-style (``allreduce:tree;allgather:ring``, ``allreduce=recursive_doubling:0-8192,ring:8193-max``)."""
    topo_file: str = ""
    """PYXCCL_TOPO_FILE: load the system topology from this NCCL topology XML instead of detecting it."""
    topo_dump_file: str = ""
    """PYXCCL_TOPO_DUMP_FILE: write the system topology (NCCL topology XML) here at init."""
    graph_dump_file: str = ""
    """PYXCCL_GRAPH_DUMP_FILE: write the channels found by the search (NCCL graph XML) here at init."""
    rpc_master: str = ""
    """PYXCCL_RPC_MASTER: ``host:port`` of the pRPC master for :mod:`pyxccl.rpc`."""
    rpc_timeout: float = 30.0
    """PYXCCL_RPC_TIMEOUT: seconds an RPC call waits for its response."""
    trace_dir: str = ""
    """PYXCCL_TRACE_DIR: folder for flight-recorder dumps (on a CollectiveTimeout and on SIGUSR1); unset: none."""
    trace_size: int = 1000
    """PYXCCL_TRACE_SIZE: operations the flight recorder keeps per communicator (0: record nothing)."""
    check: bool = False
    """PYXCCL_CHECK: 1 to compare every collective's fingerprint across ranks first (MismatchError)."""
    cuda_slot_bytes: int = 8 * 1024 * 1024
    """PYXCCL_CUDA_SLOT_BYTES: bytes of one slot of a device connection (cuda_ipc); larger than the host's, since every slice costs the host a few driver calls while the copy engines move 8 MiB in about 4 us."""
    cuda_direct_min_bytes: int = 0
    """PYXCCL_CUDA_DIRECT_MIN_BYTES: device calls of at least this many bytes per block go by single copy where the IR allows (a receiver reads straight from the sender's buffer through CUDA IPC: one copy instead of two); 0 (the default): never. Such a call first swaps buffer handles with its peers on the host, so it returns only once they issued it too (a host rendezvous NCCL's calls do not have): opt in where calls are in lockstep anyway."""
    cuda_registered_min_bytes: int = 256 * 1024
    """PYXCCL_CUDA_REGISTERED_MIN_BYTES: device calls on registered buffers (``Communicator.register``) of at least this many bytes per block go by single copy (the receivers read the senders' buffers where they are); smaller ones go through the slots, since a single-copy call first swaps (window, offset) with its peers on the host. 0: every size."""
    cuda_graphs: bool = False
    """PYXCCL_CUDA_GRAPHS: 1 to capture a device call repeated with the same buffers into a CUDA graph at its second run and replay it after (one launch instead of a few dozen driver calls)."""
    cache_dir: str = ""
    """PYXCCL_CACHE_DIR: where compiled GPU kernels are kept between runs (default ``$XDG_CACHE_HOME/pyxccl`` or ``~/.cache/pyxccl``)."""
    device_backend: str = "cuda"
    """PYXCCL_DEVICE_BACKEND: what serves ``cuda:N`` buffers: ``cuda`` (the CUDA driver through cuda-python) or ``emulated`` (host memory posing as a device, streams as threads: the GPU path's lowering tested on machines without a GPU)."""


_PARSERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "debug": ("PYXCCL_DEBUG", _parse_level),
    "timeout": ("PYXCCL_TIMEOUT", _positive_float),
    "transport": ("PYXCCL_TRANSPORT", _parse_transport),
    "slot_bytes": ("PYXCCL_SLOT_BYTES", _parse_bytes),
    "nslots": ("PYXCCL_NSLOTS", _positive_int),
    "nchannels": ("PYXCCL_NCHANNELS", _positive_int),
    "cma": ("PYXCCL_CMA", _parse_cma),
    "cma_min_bytes": ("PYXCCL_CMA_MIN_BYTES", _parse_bytes),
    "stream_min_bytes": ("PYXCCL_STREAM_MIN_BYTES", _bytes_or_zero),
    "spin_us": ("PYXCCL_SPIN_US", _non_negative_float),
    "socket_ifname": ("PYXCCL_SOCKET_IFNAME", str),
    "socket_nstreams": ("PYXCCL_SOCKET_NSTREAMS", _positive_int),
    "port_range": ("PYXCCL_PORT_RANGE", _parse_port_range),
    "comm_id": ("PYXCCL_COMM_ID", str),
    "hostid": ("PYXCCL_HOSTID", str),
    "algo": ("PYXCCL_ALGO", str),
    "topo_file": ("PYXCCL_TOPO_FILE", str),
    "topo_dump_file": ("PYXCCL_TOPO_DUMP_FILE", str),
    "graph_dump_file": ("PYXCCL_GRAPH_DUMP_FILE", str),
    "rpc_master": ("PYXCCL_RPC_MASTER", str),
    "rpc_timeout": ("PYXCCL_RPC_TIMEOUT", _positive_float),
    "trace_dir": ("PYXCCL_TRACE_DIR", str),
    "trace_size": ("PYXCCL_TRACE_SIZE", _non_negative_int),
    "check": ("PYXCCL_CHECK", _parse_bool),
    "cuda_slot_bytes": ("PYXCCL_CUDA_SLOT_BYTES", _parse_bytes),
    "cuda_direct_min_bytes": ("PYXCCL_CUDA_DIRECT_MIN_BYTES", _bytes_or_zero),
    "cuda_registered_min_bytes": ("PYXCCL_CUDA_REGISTERED_MIN_BYTES", _bytes_or_zero),
    "cuda_graphs": ("PYXCCL_CUDA_GRAPHS", _parse_bool),
    "cache_dir": ("PYXCCL_CACHE_DIR", str),
    "device_backend": ("PYXCCL_DEVICE_BACKEND", _parse_device_backend),
}

assert set(_PARSERS) == {f.name for f in fields(Config)}


def load(env: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from ``env`` (default ``os.environ``); bad values raise ConfigError."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, (var, parse) in _PARSERS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var}={raw!r} is invalid: {exc}") from None
    return Config(**values)


_cached: Config | None = None


def get() -> Config:
    """The process-wide configuration, read from the environment on first use."""
    global _cached
    if _cached is None:
        _cached = load()
    return _cached


def reset() -> None:
    """Forget the cached configuration (tests that change the environment call this)."""
    global _cached
    _cached = None


def variables() -> list[tuple[str, str, Any]]:
    """(variable, description, default) for every ``PYXCCL_*`` variable, for docs and tools."""
    out = []
    docs = _field_docs()
    for f in fields(Config):
        out.append((_PARSERS[f.name][0], docs.get(f.name, ""), f.default))
    return out


def _field_docs() -> dict[str, str]:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Config))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            docs[node.target.id] = nxt.value.value.split(": ", 1)[-1]  # type: ignore[union-attr]
    return docs
