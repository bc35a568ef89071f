"""Every ``PYXCCL_*`` environment variable, typed, defaulted, checked and documented in one place.

Nothing else in pyxccl reads ``os.environ`` for a ``PYXCCL_*`` variable: call
:func:`get` for the process-wide configuration (read once, then cached) or
:func:`load` with an explicit mapping.

Every value the engine cannot use is refused with :class:`~pyxccl.errors.ConfigError`
naming the variable, the value and what is allowed (:data:`RULES`: each variable's
range). ``import pyxccl`` reads nothing: the first :func:`get` does (creating a
communicator, ``pyxccl.init()``, ``get_unique_id()``, the tools). That first read also
warns once about every ``PYXCCL_*`` variable of the environment that pyxccl does not know
(a misspelling), naming the closest known name.

``python -m pyxccl.config --markdown`` prints every variable as a Markdown table (the README's,
kept equal by tests/test_docs.py; ``--write README.md`` puts it there).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from .errors import ConfigError

_K, _M, _G = 1 << 10, 1 << 20, 1 << 30
#: slots are cut at 64-byte boundaries (a cache line; every dtype's size divides it)
SLOT_ALIGN = 64
#: the smallest slot: one page, which holds a single-copy descriptor of the most regions a step
#: may send by descriptor (transport/shm/connectors.py: 24 + 128 x 24 bytes), a point-to-point
#: header, and one 8-byte element of every chunk of a built-in step up to 1024 ranks (the most
#: chunks a built-in step moves is nranks / 2)
MIN_SLOT_BYTES = 4 * _K
#: the largest slot: a slot's length travels in 31 bits (transport/ring.py: the top bit marks a descriptor)
MAX_SLOT_BYTES = 1 * _G
#: the ring header holds one 32-bit length per slot between offsets 256 and 3712 (transport/ring.py)
MAX_NSLOTS = (4096 - 384 - 256) // 4
#: NCCL's MAXCHANNELS: a channel is a ring of connectors per peer (and CUDA streams on a GPU)
MAX_NCHANNELS = 64
#: the socket transport's hello carries the number of lanes (TCP streams) in one byte
MAX_SOCKET_NSTREAMS = 255
#: longer timeouts overflow the system's waits (a select or futex deadline); 1e9 s is 31 years
MAX_SECONDS = 1e9

#: ``PYXCCL_*`` variables that are not configuration but are read elsewhere (tests, benchmarks):
#: never warned about as unknown. tests/test_config_errors.py keeps this list complete.
OTHER_VARIABLES = frozenset({
    "PYXCCL_TEST_DEVICE",        # tests/_device_jobs.py: the device the GPU jobs use
    "PYXCCL_TEST_SRC",           # tests/harness.py: import pyxccl from another tree
    "PYXCCL_FAULT_TRIALS",       # tests/test_faults.py: trials of the fault test
    "PYXCCL_TORCH_SUITE",        # tests/test_torch_backend.py: the whole torch.distributed suite
    "PYXCCL_SUITE_AS",           # tests/torch_distributed_suite.py: the backend it poses as
    "PYXCCL_SUITE_START",        # tests/torch_distributed_suite.py: start method of its ranks
    "PYXCCL_TORCH_BENCH_RANK",   # benchmarks/torch_backend.py: marks its second rank
})


class _Invalid(ValueError):
    """What is wrong with a value (the message says it; the rule's ``allowed`` says what is right)."""


def _number(text: str, kind: type = float) -> float:
    t = text.strip()
    try:
        value = kind(t)
    except ValueError:
        raise _Invalid(f"not {'a whole number' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid("not a finite number")
    return value


def _parse_bytes(text: str) -> int:
    """Parse ``4096``, ``64K``, ``1M``, ``2G`` (powers of 1024; ``KB``, ``KiB`` too) into bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise _Invalid("not a byte count (like 4096, 64K, 1M or 2G)") from None
    if not math.isfinite(value):
        raise _Invalid("not a finite number")
    if value != int(value):
        raise _Invalid(f"{value:g} is not a whole number of bytes")
    return int(value)


@dataclass(frozen=True)
class Rule:
    """How one variable is read: its parser (raises ValueError saying what is wrong) and, in words,
    what it allows (ConfigError messages, ``pyxccl.config.variables()``)."""

    variable: str
    parse: Callable[[str], Any]
    allowed: str


def _choice(*names: str, aliases: Mapping[str, str] | None = None) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        value = (aliases or {}).get(value, value)
        if value not in names:
            raise _Invalid("not one of the choices")
        return value
    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise _Invalid("not a yes/no value")


def _seconds(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise _Invalid("must be positive")
    if value > MAX_SECONDS:
        raise _Invalid(f"more than {MAX_SECONDS:g} s overflows the system's waits")
    return value


def _count(lo: int, hi: int | None = None, why_hi: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < lo:
            raise _Invalid(f"must be at least {lo}")
        if hi is not None and value > hi:
            raise _Invalid(f"at most {hi}: {why_hi}")
        return value
    return parse


def _bytes(*, zero: bool = False) -> Callable[[str], int]:
    """A positive byte count (``zero``: or 0/off for never)."""
    def parse(text: str) -> int:
        if zero and text.strip().lower() in ("0", "off"):
            return 0
        value = _parse_bytes(text)
        if value <= 0:
            raise _Invalid("must be positive" + (" (or 0 for never)" if zero else ""))
        return value
    return parse


def _slot_bytes(text: str) -> int:
    value = _parse_bytes(text)
    if value % SLOT_ALIGN:
        raise _Invalid(f"{value} is not a multiple of {SLOT_ALIGN} bytes (slots are cut into 64-byte lines, "
                       f"so every element type, up to 8-byte float64, fits whole)")
    if value < MIN_SLOT_BYTES:
        raise _Invalid(f"{value} bytes is too small: a slot must hold a single-copy descriptor and "
                       f"slices of every collective's steps")
    if value > MAX_SLOT_BYTES:
        raise _Invalid(f"{value} bytes is too large: a slot's length travels in 31 bits")
    return value


def _parse_cma(text: str) -> str:
    value = text.strip().lower()
    if value in ("auto", "mixed", "put"):
        return value
    try:
        return "on" if _bool(text) else "off"
    except ValueError:
        raise _Invalid("not one of the choices") from None


def _spin_us(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise _Invalid("must be >= 0")
    return value


def _host_port(text: str) -> str:
    """``host:port`` or ``[v6]:port`` with a port in 1..65535 (kept as written)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or host in ("[]",) or not port.isdigit():
        raise _Invalid("not host:port")
    if not 0 < int(port) <= 0xFFFF:
        raise _Invalid(f"port {port} is out of range")
    return text.strip()


def _text(text: str) -> str:
    return text


def _port_range(text: str) -> tuple[int, int]:
    lo_s, sep, hi_s = text.strip().partition("-")
    if not sep or not lo_s.strip().isdigit() or not hi_s.strip().isdigit():
        raise _Invalid("not lo-hi")
    lo, hi = int(lo_s), int(hi_s)
    if not 1 <= lo <= hi <= 0xFFFF:
        raise _Invalid("not ports 1..65535 with lo <= hi")
    return lo, hi


def _level(text: str) -> str:
    return _choice("warn", "info", "trace")(text).upper()


_BYTES = "a byte count like 4096, 64K, 1M or 2G"
_SLOTS = (f"a multiple of {SLOT_ALIGN} bytes from {MIN_SLOT_BYTES // _K}K to {MAX_SLOT_BYTES // _G}G "
          "(like 64K, 1M, 8M)")
_BOOL = "1 or 0 (true/false, yes/no, on/off)"

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
    """PYXCCL_SOCKET_IFNAME: interface for the bootstrap, the socket transport and the unique id's root, NCCL syntax (``eth0``, ``^docker,lo``, ``=eth0``); default: the one on the route to the root / ``MASTER_ADDR`` (``docs/multihost.md``)."""
    port_range: tuple[int, int] | None = None
    """PYXCCL_PORT_RANGE: ``lo-hi``: every socket pyxccl listens on with a port of its choosing (the unique id's root, the bootstrap ring, the socket transport, a store on port 0) takes the first free port of this range instead of an ephemeral one, for firewalls between hosts; unset: ephemeral ports."""
    socket_nstreams: int = 1
    """PYXCCL_SOCKET_NSTREAMS: TCP streams per peer and channel."""
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
    cuda_oneshot_max_bytes: int = 256 * 1024
    """PYXCCL_CUDA_ONESHOT_MAX_BYTES: device all-reduces of at most this many bytes among the ranks of one host take the one-shot path (every rank copies its input to every peer, one flag hand-off, the reduction in rank order, all on the caller's stream) instead of a ring or tree; 0: never."""
    cuda_graphs: bool = False
    """PYXCCL_CUDA_GRAPHS: 1 to capture a device call repeated with the same buffers into a CUDA graph at its second run and replay it after (one launch instead of a few dozen driver calls)."""
    cache_dir: str = ""
    """PYXCCL_CACHE_DIR: where compiled GPU kernels are kept between runs (default ``$XDG_CACHE_HOME/pyxccl`` or ``~/.cache/pyxccl``)."""
    device_backend: str = "cuda"
    """PYXCCL_DEVICE_BACKEND: what serves ``cuda:N`` buffers: ``cuda`` (the CUDA driver through cuda-python) or ``emulated`` (host memory posing as a device, streams as threads: the GPU path's lowering tested on machines without a GPU)."""


#: every field's variable, parser and allowed values
RULES: dict[str, Rule] = {
    "debug": Rule("PYXCCL_DEBUG", _level, "WARN, INFO or TRACE"),
    "timeout": Rule("PYXCCL_TIMEOUT", _seconds, f"seconds, a number > 0 and <= {MAX_SECONDS:g}"),
    "transport": Rule("PYXCCL_TRANSPORT", _choice("auto", "socket", "shm", "local"), "auto, socket, shm or local"),
    "slot_bytes": Rule("PYXCCL_SLOT_BYTES", _slot_bytes, _SLOTS),
    "nslots": Rule("PYXCCL_NSLOTS", _count(1, MAX_NSLOTS, "the ring header holds that many slot lengths"),
                   f"a whole number from 1 to {MAX_NSLOTS}"),
    "nchannels": Rule("PYXCCL_NCHANNELS", _count(1, MAX_NCHANNELS, "NCCL's MAXCHANNELS"),
                      f"a whole number from 1 to {MAX_NCHANNELS}"),
    "cma": Rule("PYXCCL_CMA", _parse_cma, "auto, 1, 0, mixed or put"),
    "cma_min_bytes": Rule("PYXCCL_CMA_MIN_BYTES", _bytes(), f"{_BYTES}, > 0"),
    "stream_min_bytes": Rule("PYXCCL_STREAM_MIN_BYTES", _bytes(zero=True), f"{_BYTES}, or 0 (never)"),
    "spin_us": Rule("PYXCCL_SPIN_US", _spin_us, "microseconds, a number >= 0"),
    "socket_ifname": Rule("PYXCCL_SOCKET_IFNAME", _text, "interface names, NCCL syntax (eth0, ^docker,lo, =eth0)"),
    "port_range": Rule("PYXCCL_PORT_RANGE", _port_range, "lo-hi, e.g. 50000-50100 (ports 1..65535, lo <= hi)"),
    "socket_nstreams": Rule("PYXCCL_SOCKET_NSTREAMS",
                            _count(1, MAX_SOCKET_NSTREAMS, "the socket transport's hello carries it in one byte"),
                            f"a whole number from 1 to {MAX_SOCKET_NSTREAMS}"),
    "comm_id": Rule("PYXCCL_COMM_ID", _host_port, "host:port (or [v6]:port), port 1..65535"),
    "hostid": Rule("PYXCCL_HOSTID", _text, "any text"),
    "algo": Rule("PYXCCL_ALGO", _text, "algorithm choices (checked at the first call): "
                 "allreduce:tree;allgather:ring, allreduce=ring:0-64K,tree:64K-max, ^allpairs"),
    "topo_file": Rule("PYXCCL_TOPO_FILE", _text, "a readable NCCL topology XML file (checked at init)"),
    "topo_dump_file": Rule("PYXCCL_TOPO_DUMP_FILE", _text, "a writable path (checked at init)"),
    "graph_dump_file": Rule("PYXCCL_GRAPH_DUMP_FILE", _text, "a writable path (checked at init)"),
    "rpc_master": Rule("PYXCCL_RPC_MASTER", _host_port, "host:port (or [v6]:port), port 1..65535"),
    "rpc_timeout": Rule("PYXCCL_RPC_TIMEOUT", _seconds, f"seconds, a number > 0 and <= {MAX_SECONDS:g}"),
    "trace_dir": Rule("PYXCCL_TRACE_DIR", _text, "a folder (made when a dump is written)"),
    "trace_size": Rule("PYXCCL_TRACE_SIZE", _count(0), "a whole number >= 0 (0: record nothing)"),
    "check": Rule("PYXCCL_CHECK", _bool, _BOOL),
    "cuda_slot_bytes": Rule("PYXCCL_CUDA_SLOT_BYTES", _slot_bytes, _SLOTS),
    "cuda_direct_min_bytes": Rule("PYXCCL_CUDA_DIRECT_MIN_BYTES", _bytes(zero=True), f"{_BYTES}, or 0 (never)"),
    "cuda_registered_min_bytes": Rule("PYXCCL_CUDA_REGISTERED_MIN_BYTES", _bytes(zero=True),
                                      f"{_BYTES}, or 0 (every size)"),
    "cuda_oneshot_max_bytes": Rule("PYXCCL_CUDA_ONESHOT_MAX_BYTES", _bytes(zero=True), f"{_BYTES}, or 0 (never)"),
    "cuda_graphs": Rule("PYXCCL_CUDA_GRAPHS", _bool, _BOOL),
    "cache_dir": Rule("PYXCCL_CACHE_DIR", _text, "a folder (made at the first compile)"),
    "device_backend": Rule("PYXCCL_DEVICE_BACKEND", _choice("cuda", "emulated"), "cuda or emulated"),
}

assert set(RULES) == {f.name for f in fields(Config)}
#: field -> (variable, parser), as before RULES (kept for callers of the old name)
_PARSERS = {name: (r.variable, r.parse) for name, r in RULES.items()}
#: every variable pyxccl reads as configuration
KNOWN = frozenset(r.variable for r in RULES.values())


def _default(name: str) -> Any:
    return next(f.default for f in fields(Config) if f.name == name)


def load(env: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from ``env`` (default ``os.environ``); a value the engine cannot use
    raises ConfigError naming the variable, the value and what is allowed."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, rule in RULES.items():
        raw = env.get(rule.variable)
        if raw is None or raw == "":
            continue
        try:
            values[name] = rule.parse(raw)
        except (ValueError, OverflowError) as exc:
            raise ConfigError(f"{rule.variable}={raw!r} is not usable: {exc}; allowed: {rule.allowed} "
                              f"(default {_show(_default(name))})") from None
    return Config(**values)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) and value >= _K and value % _K == 0:
        return next(f"{value // m}{u}" for m, u in ((_G, "G"), (_M, "M"), (_K, "K")) if value % m == 0)
    return repr(value) if value == "" else str(value)


def unknown_variables(env: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``PYXCCL_*`` names in ``env`` that pyxccl does not read, each with the closest known name (or None)."""
    env = os.environ if env is None else env
    out = []
    for var in sorted(env):
        if var.startswith("PYXCCL_") and var not in KNOWN and var not in OTHER_VARIABLES:
            known = {k.removeprefix("PYXCCL_"): k for k in KNOWN}  # compared without the common prefix
            close = difflib.get_close_matches(var.removeprefix("PYXCCL_"), sorted(known), n=1, cutoff=0.6)
            out.append((var, known[close[0]] if close else None))
    return out


_cached: Config | None = None
_warned: set[str] = set()


def get() -> Config:
    """The process-wide configuration, read from the environment on first use (ConfigError for a bad
    value, every time it is asked for until the value is fixed)."""
    global _cached
    if _cached is None:
        _warn_unknown()
        _cached = load()
    return _cached


def _warn_unknown() -> None:
    """One WARN per unknown ``PYXCCL_*`` variable, per process (through pyxccl's logger)."""
    for var, close in unknown_variables():
        if var in _warned:
            continue
        _warned.add(var)
        hint = f"did you mean {close}?" if close else "pyxccl.config.variables() lists the known ones"
        logging.getLogger("pyxccl").warning("%s is not a pyxccl variable (ignored); %s", var, hint,
                                            extra={"rank": None})


def debug_level() -> str:
    """PYXCCL_DEBUG alone, for the logger at import (WARN when it is unset or bad: a bad value raises at
    the first :func:`get`, not at ``import pyxccl``)."""
    try:
        return _level(os.environ.get("PYXCCL_DEBUG") or "WARN")
    except ValueError:
        return "WARN"


def reset() -> None:
    """Forget the cached configuration (tests that change the environment call this)."""
    global _cached
    _cached = None


def variables() -> list[tuple[str, str, Any]]:
    """(variable, description, default) for every ``PYXCCL_*`` variable, for docs and tools."""
    out = []
    docs = _field_docs()
    for f in fields(Config):
        out.append((RULES[f.name].variable, docs.get(f.name, ""), f.default))
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


# ---------------------------------------------------------------- the README's table of variables

#: the README holds :func:`markdown_table`'s output between these two lines (tests/test_docs.py)
TABLE_BEGIN, TABLE_END = "<!-- config-table -->", "<!-- /config-table -->"


def _cell(text: str) -> str:
    """Text as one Markdown table cell: one line, reST literals and roles as `code`, pipes escaped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", " ".join(text.split()))
    return text.replace("``", "`").replace("|", "\\|")


def _default_cell(name: str, value: Any) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and "byte" not in RULES[name].allowed:
        return str(value)
    return _show(value)


def markdown_table() -> str:
    """Every ``PYXCCL_*`` variable as a Markdown table: name, default, allowed values, meaning (the
    field's docstring). ``python -m pyxccl.config --markdown`` prints it; the README holds it."""
    docs = _field_docs()
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for f in fields(Config):
        rule = RULES[f.name]
        rows.append(f"| `{rule.variable}` | {_default_cell(f.name, f.default)} | {_cell(rule.allowed)} "
                    f"| {_cell(docs.get(f.name, ''))} |")
    return "\n".join(rows) + "\n"


def with_table(text: str) -> str:
    """``text`` (a Markdown file) with what lies between :data:`TABLE_BEGIN` and :data:`TABLE_END`
    replaced by :func:`markdown_table`."""
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise ValueError(f"no {TABLE_BEGIN} ... {TABLE_END} lines to put the table between")
    head, rest = text.split(TABLE_BEGIN, 1)
    return f"{head}{TABLE_BEGIN}\n{markdown_table()}{TABLE_END}{rest.split(TABLE_END, 1)[1]}"


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pyxccl.config",
                                 description="Every PYXCCL_* variable: name, default, allowed values, meaning.")
    ap.add_argument("--markdown", action="store_true", help="print the variables as a Markdown table")
    ap.add_argument("--write", metavar="FILE", help="put the table between the config-table lines of FILE "
                    "(the README) instead of printing it")
    args = ap.parse_args(argv)
    if args.write:
        with open(args.write, encoding="utf-8") as f:
            text = f.read()
        try:
            new = with_table(text)
        except ValueError as exc:
            ap.error(f"{args.write}: {exc}")
        if new != text:
            with open(args.write, "w", encoding="utf-8") as f:
                f.write(new)
        return 0
    print(markdown_table(), end="")  # --markdown, the one format so far (and the default)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
