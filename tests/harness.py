"""Test harness: reused pools of rank processes, and the numpy references the collective tests use.

Pools
-----
A :class:`Pool` is N worker processes (multiprocessing "spawn") that each build one
``pyxccl.Communicator`` and then serve jobs. A job is a module-level function of a tests
module, ``job(comm, **kwargs) -> result``; every worker runs the same job with the same
kwargs and returns a small picklable result (by convention a list of failure strings,
empty when the rank saw nothing wrong). :meth:`Pool.run` gathers the results with a
deadline; when a rank does not answer in time, dies, or raises, the pool dumps the
stacks of the silent ranks (faulthandler on SIGUSR1), kills every worker, reports
which ranks did not answer with the tail of their logs, and is restarted on the next
``PoolManager.get``. Workers import pyxccl from this checkout's ``src/`` and write
stdout/stderr to one log file per rank.

References
----------
Inputs are built from (seed, rank, block, dtype, count, op) so that every rank can
rebuild every other rank's input; values are small (ints in [-3, 3], halves, powers of
two for prod, tiny values for fp8) so that integer results are exact and float results
are exact too except where an operation rounds (avg, and "dense" random floats), which
are checked against a tolerance of dtype epsilon x nranks. :func:`start_case` runs one
collective call on this rank (any collective, in place or not, sync or async) and
returns what is needed to check it; :func:`run_cases` runs a list of them, keeping
async calls queued several deep and checking that they complete in issue order.
"""

from __future__ import annotations

import faulthandler
import glob
import hashlib
import importlib
import importlib.util
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait as _mp_wait
from typing import Any, Callable, Iterable

import ml_dtypes
import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
#: pyxccl is imported from here (PYXCCL_TEST_SRC overrides: e.g. a mutated copy, to test the tests)
SRC_DIR = os.environ.get("PYXCCL_TEST_SRC") or os.path.join(os.path.dirname(TESTS_DIR), "src")

#: seconds a job may take on the slowest rank before the pool is declared hung
DEFAULT_DEADLINE = 120.0
#: seconds the other ranks still get once one rank raised (they may be stuck in a collective)
ERROR_GRACE = 15.0
#: PYXCCL_TIMEOUT in the workers: pyxccl's own timeout fires (with its message) before the pool's
WORKER_TIMEOUT = "60"


def ensure_src_on_path() -> None:
    """Make ``import pyxccl`` find this checkout's src/ (and ``import harness`` this folder)."""
    for p in (TESTS_DIR, SRC_DIR):
        if p not in sys.path:
            sys.path.insert(0, p)


class JobError(AssertionError):
    """A job did not complete on every rank (timeout, dead worker, exception)."""


# ============================================================================ worker side

_JOB_MODULES: dict[str, Any] = {}


def _load_job(modname: str, path: str, fname: str) -> Callable[..., Any]:
    mod = _JOB_MODULES.get(path)
    if mod is None:
        try:
            mod = importlib.import_module(modname)
            if os.path.abspath(getattr(mod, "__file__", "") or "") != os.path.abspath(path):
                raise ImportError("a different module of that name")
        except ImportError:
            name = "_pyxccl_job_" + os.path.splitext(os.path.basename(path))[0]
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        _JOB_MODULES[path] = mod
    return getattr(mod, fname)


def _worker_main(rank: int, nranks: int, conn: Any, env: dict[str, str | None], log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    for key, value in env.items():  # before pyxccl is imported: its config is read once
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    ensure_src_on_path()
    print(f"[harness] rank {rank}/{nranks} pid {os.getpid()} env {env}", flush=True)
    try:
        import pyxccl

        if rank == 0:
            uid = pyxccl.get_unique_id()
            conn.send(("uid", uid.to_bytes()))
        else:
            kind, data = conn.recv()
            assert kind == "uid", kind
            uid = pyxccl.UniqueId.from_bytes(data)
        comm = pyxccl.Communicator(nranks, uid, rank)
        conn.send(("ready", {"pid": os.getpid(),
                             "transports": [comm.transport_of(p) for p in range(nranks)]}))
    except BaseException:  # noqa: BLE001 - reported to the parent
        traceback.print_exc()
        conn.send(("error", traceback.format_exc()))
        return
    state = {"destroyed": False}
    try:
        _serve(comm, conn, state)
    except (EOFError, OSError):  # the test process went away
        pass
    except BaseException:  # noqa: BLE001 - e.g. KeyboardInterrupt
        traceback.print_exc()
    finally:
        if not state["destroyed"]:
            comm.abort()  # releases the /dev/shm files and sockets


def _serve(comm: Any, conn: Any, state: dict) -> None:
    """Run jobs until "stop" (destroy the communicator) or until the test process goes away."""
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            try:
                state["destroyed"] = True
                comm.destroy()
                conn.send(("ok", None))
            except (EOFError, OSError):
                raise
            except BaseException:  # noqa: BLE001
                conn.send(("error", traceback.format_exc()))
            return
        _, modname, path, fname, kwargs = msg
        print(f"[harness] job {fname} {kwargs}", flush=True)
        try:
            fn = _load_job(modname, path, fname)
            result = fn(comm, **kwargs)
        except BaseException:  # noqa: BLE001 - reported to the parent
            tb = traceback.format_exc()
            print(tb, flush=True)
            conn.send(("error", tb))
            continue
        conn.send(("ok", result))


# ============================================================================ test-process side

def _tail(path: str, nbytes: int = 2500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<no log: {exc}>"


class Pool:
    """N rank processes with one Communicator each, serving jobs.

    ``transport``: "auto" (shm between the ranks), "socket" (PYXCCL_TRANSPORT=socket), or
    "hosts:<layout>", one letter per rank naming its emulated host (PYXCCL_HOSTID), e.g.
    "hosts:AABB": ranks 0-1 and 2-3 are two hosts (shm inside one, sockets across).
    """

    def __init__(self, nranks: int, transport: str = "auto", env: dict[str, str | None] | None = None):
        self.nranks = nranks
        self.transport = transport
        self.env: dict[str, str | None] = {"PYXCCL_TIMEOUT": os.environ.get("PYXCCL_TIMEOUT", WORKER_TIMEOUT)}
        self.layout: str | None = None
        if transport.startswith("hosts:"):
            self.layout = transport.split(":", 1)[1]
            if len(self.layout) != nranks:
                raise ValueError(f"layout {self.layout!r} does not have {nranks} letters")
        elif transport != "auto":
            self.env["PYXCCL_TRANSPORT"] = transport
        self.env.update(env or {})
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.info: list[dict] = []
        self.healthy = False
        self.logdir: str | None = None
        self._shm_tag: str | None = None

    def rank_env(self, rank: int) -> dict[str, str | None]:
        env = dict(self.env)
        if self.layout:
            env["PYXCCL_HOSTID"] = f"pyxccl-test-host-{self.layout[rank]}"
        return env

    def __repr__(self) -> str:
        return f"<Pool {self.nranks} ranks transport={self.transport} {'up' if self.healthy else 'down'}>"

    def log_path(self, rank: int) -> str:
        assert self.logdir is not None
        return os.path.join(self.logdir, f"rank{rank}.log")

    # ---------------------------------------------------------------- life
    def start(self, deadline: float = 90.0) -> "Pool":
        ctx = mp.get_context("spawn")
        self.logdir = tempfile.mkdtemp(prefix=f"pyxccl-pool{self.nranks}-{self.transport}-")
        for r in range(self.nranks):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(r, self.nranks, child, self.rank_env(r), self.log_path(r)),
                            name=f"pyxccl-pool{self.nranks}-rank{r}", daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self.healthy = True
        self.info = self._gather(deadline, f"start of a {self.nranks}-rank pool ({self.transport})")
        return self

    def _relay_uid(self, data: bytes) -> None:
        self._shm_tag = hashlib.sha256(data).hexdigest()[:16]
        for conn in self.conns[1:]:
            conn.send(("uid", data))

    def _gather(self, deadline: float, what: str) -> list[Any]:
        n = self.nranks
        results: list[Any] = [None] * n
        errors: dict[int, str] = {}
        pending = set(range(n))
        end = time.monotonic() + deadline
        while pending:
            left = end - time.monotonic()
            if left <= 0:
                break
            by_conn = {self.conns[r]: r for r in pending}
            by_sentinel = {self.procs[r].sentinel: r for r in pending}
            ready = _mp_wait(list(by_conn) + list(by_sentinel), timeout=left)
            for obj in ready:
                r = by_conn.get(obj)
                if r is None or r not in pending:
                    continue
                try:
                    kind, payload = obj.recv()
                except (EOFError, OSError) as exc:
                    self.procs[r].join(0.5)
                    errors[r] = f"worker process died (pipe closed: {exc!r}; exit code {self.procs[r].exitcode})"
                    pending.discard(r)
                    end = min(end, time.monotonic() + ERROR_GRACE)
                    continue
                if kind == "uid":
                    self._relay_uid(payload)
                    continue
                pending.discard(r)
                if kind == "ok" or kind == "ready":
                    results[r] = payload
                else:
                    errors[r] = payload
                    end = min(end, time.monotonic() + ERROR_GRACE)
            for obj in ready:
                r = by_sentinel.get(obj)
                if r is None or r not in pending or self.conns[r].poll():
                    continue
                self.procs[r].join(0.5)
                errors[r] = f"worker process died (exit code {self.procs[r].exitcode})"
                pending.discard(r)
                end = min(end, time.monotonic() + ERROR_GRACE)
        if not pending and not errors:
            return results
        # something went wrong: collect what the silent ranks were doing, then kill the pool
        for r in pending:
            if self.procs[r].is_alive():
                try:
                    os.kill(self.procs[r].pid, signal.SIGUSR1)
                except OSError:
                    pass
        if pending:
            time.sleep(0.5)
        cut = f" (cut to {ERROR_GRACE:g} s after the first failure)" if errors else ""
        lines = [f"{what}: " + (f"ranks {sorted(pending)} did not answer within {deadline:g} s{cut}"
                                if pending else "some ranks failed")
                 + (f"; ranks {sorted(errors)} failed" if errors and pending else "")]
        for r, err in sorted(errors.items()):
            lines.append(f"--- rank {r} failed:\n{err}")
        for r in sorted(pending):
            lines.append(f"--- rank {r} (silent) log tail ({self.log_path(r)}):\n{_tail(self.log_path(r))}")
        self.kill()
        raise JobError("\n".join(lines))

    def kill(self) -> None:
        """Kill every worker now (the pool is restarted by the next PoolManager.get)."""
        self.healthy = False
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(5)
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []
        if self._shm_tag:  # what the killed communicators left in /dev/shm
            for path in glob.glob(f"/dev/shm/pyxccl-{self._shm_tag}-*"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def close(self, deadline: float = 30.0) -> None:
        """Destroy every communicator and join the workers (kill what does not stop)."""
        if self.healthy:
            try:
                for c in self.conns:
                    c.send(("stop",))
                self._gather(deadline, f"teardown of {self!r}")
            except (JobError, OSError):
                pass
            for p in self.procs:
                p.join(5)
        self.kill()
        if self.logdir:
            shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir = None

    # ---------------------------------------------------------------- jobs
    def run(self, fn: Callable[..., Any], *, deadline: float = DEFAULT_DEADLINE, **kwargs: Any) -> list[Any]:
        """Run ``fn(comm, **kwargs)`` on every rank; the results by rank (JobError when any rank fails)."""
        if not self.healthy:
            raise JobError(f"{self!r} is not running")
        path = os.path.abspath(fn.__code__.co_filename)
        msg = ("job", fn.__module__, path, fn.__name__, kwargs)
        for c in self.conns:
            c.send(msg)
        return self._gather(deadline, f"job {fn.__name__}({kwargs}) on {self.nranks} ranks ({self.transport})")

    def check(self, fn: Callable[..., Any], *, deadline: float = DEFAULT_DEADLINE, **kwargs: Any) -> list[Any]:
        """Run a job whose result is a list of failure strings per rank; fail when any rank has any."""
        results = self.run(fn, deadline=deadline, **kwargs)
        failures = [f"rank {r}: {f}" for r, res in enumerate(results) for f in (res or [])]
        if failures:
            shown = "\n".join(failures[:40])
            more = f"\n... and {len(failures) - 40} more" if len(failures) > 40 else ""
            raise AssertionError(f"{fn.__name__}({kwargs}) on {self.nranks} ranks ({self.transport}): "
                                 f"{len(failures)} failure(s):\n{shown}{more}")
        return results


class PoolManager:
    """One pool per (nranks, transport), started on first use and kept for the session."""

    def __init__(self) -> None:
        self._pools: dict[tuple[int, str], Pool] = {}
        self._failed_starts: dict[tuple[int, str], list[str]] = {}

    def get(self, nranks: int, transport: str = "auto") -> Pool:
        key = (nranks, transport)
        pool = self._pools.get(key)
        if pool is not None and pool.healthy:
            return pool
        if pool is not None:
            pool.close()
        fails = self._failed_starts.get(key, [])
        if len(fails) >= 2:  # do not pay the start timeout in every test
            raise JobError(f"the {nranks}-rank pool ({transport}) failed to start twice already:\n{fails[-1]}")
        pool = Pool(nranks, transport)
        self._pools[key] = pool
        try:
            pool.start()
        except JobError as exc:
            self._failed_starts.setdefault(key, []).append(str(exc))
            raise
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


# ============================================================================ data and references

DTYPE_NAMES = ("int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "bfloat16",
               "float32", "float64", "float8_e4m3", "float8_e5m2")
OP_NAMES = ("sum", "prod", "min", "max", "avg", "premul_sum")
FLOAT_NAMES = frozenset(("float16", "bfloat16", "float32", "float64", "float8_e4m3", "float8_e5m2"))
PREMUL_SCALAR = 0.5

COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "all_to_all",
               "gather", "scatter")
REDUCING = frozenset(("all_reduce", "reduce", "reduce_scatter"))
ROOTED = frozenset(("broadcast", "reduce", "gather", "scatter"))

_NP = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float8_e4m3": np.dtype(ml_dtypes.float8_e4m3fn),
       "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2)}
_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def np_dtype(name: str) -> np.dtype:
    return _NP.get(name) or np.dtype(name)


def op_valid(op: str, dtype: str) -> bool:
    """premul_sum takes float types only; every other op every type."""
    return op != "premul_sum" or dtype in FLOAT_NAMES


def op_arg(op: str) -> Any:
    """The op as passed to pyxccl."""
    if op == "premul_sum":
        import pyxccl
        return pyxccl.premul_sum(PREMUL_SCALAR)
    return op


def eps(dtype: str) -> float:
    return float(ml_dtypes.finfo(np_dtype(dtype)).eps)


def smallest(dtype: str) -> float:
    return float(ml_dtypes.finfo(np_dtype(dtype)).smallest_subnormal)


def _choices(dtype: str, op: str) -> list[float]:
    """Small values whose sums / products over up to 8 ranks are exact in ``dtype``."""
    if dtype.startswith("uint"):
        return [1, 2, 3] if op == "prod" else [0, 1, 2, 3]
    if dtype.startswith("int"):
        return [-2, -1, 1, 2, 3] if op == "prod" else [-3, -2, -1, 0, 1, 2, 3]
    if op == "prod":
        return [-1.0, 0.5, 1.0, 2.0]  # powers of two: exact down to 2^-8 / up to 2^8, fp8 included
    if dtype == "float8_e4m3":
        return [-1.0, -0.5, 0.0, 0.5, 1.0]  # |partial sums| <= 8: multiples of 0.5 exact in e4m3
    if dtype == "float8_e5m2":
        return [-1.0, 0.0, 1.0]  # |partial sums| <= 8: integers exact in e5m2
    return [k / 2 for k in range(-6, 7)]  # halves in [-3, 3]


_CHOICE_CACHE: dict[tuple[str, str], np.ndarray] = {}


def make_block(seed: int, rank: int, block: int, dtype: str, count: int, op: str = "sum",
               dense: bool = False) -> np.ndarray:
    """Block ``block`` of rank ``rank``'s input: deterministic in all its arguments."""
    rng = np.random.default_rng([seed, rank, block, DTYPE_NAMES.index(dtype), count,
                                 OP_NAMES.index(op), int(dense)])
    dt = np_dtype(dtype)
    if dense and dtype in FLOAT_NAMES:
        return rng.uniform(-1.0, 1.0, count).astype(dt)
    ch = _CHOICE_CACHE.get((dtype, op))
    if ch is None:
        ch = _CHOICE_CACHE[(dtype, op)] = np.asarray(_choices(dtype, op), dtype=np.float64).astype(dt)
    return ch[rng.integers(0, len(ch), count, dtype=np.uint8)]


def sentinel(dtype: str, count: int) -> np.ndarray:
    """An output buffer filled with a value no result has (NaN for floats)."""
    dt = np_dtype(dtype)
    return np.full(count, np.nan if dtype in FLOAT_NAMES else 111, dtype=dt)


def reduce_ref(blocks: Iterable[np.ndarray], nranks: int, dtype: str, op: str,
               dense: bool = False) -> tuple[np.ndarray, Any]:
    """(expected, tol): the reduction of ``blocks`` (one per rank) as ``dtype`` would give it.

    Integers: expected in ``dtype`` (wrapping like the hardware), tol None (exact).
    Floats: expected in float64, tol 0 where the inputs make every partial result exact,
    else dtype eps x nranks x sum of magnitudes (+ one rounding of avg's division).
    """
    isf = dtype in FLOAT_NAMES
    acc = absacc = None
    for x in blocks:
        v = x.astype(np.float64) if isf else x.astype(np.int64)
        if op == "premul_sum":
            v = v * PREMUL_SCALAR
        if acc is None:
            acc = v.copy()
            absacc = np.abs(v) if dense else None
            continue
        if op in ("sum", "avg", "premul_sum"):
            acc += v
        elif op == "prod":
            acc *= v
        elif op == "min":
            np.minimum(acc, v, out=acc)
        elif op == "max":
            np.maximum(acc, v, out=acc)
        else:
            raise ValueError(op)
        if dense:
            absacc += np.abs(v)
    assert acc is not None
    if op == "avg":
        if isf:
            acc = acc / nranks
        elif dtype.startswith("uint"):
            acc = acc // nranks
        else:  # truncation toward zero
            acc = np.where(acc < 0, -((-acc) // nranks), acc // nranks)
    if not isf:
        return acc.astype(np_dtype(dtype)), None
    e, sub = eps(dtype), smallest(dtype)
    tol: Any = 0.0
    if dense:
        tol = nranks * e * absacc + nranks * sub
        if op == "avg":
            tol = tol / nranks
    if op == "avg" and nranks > 1:
        tol = tol + e * np.abs(acc) + sub
    return acc, tol


def compare(got: Any, expected: np.ndarray, tol: Any, label: str, limit: int = 4) -> list[str]:
    """Mismatches of ``got`` against ``expected``: tol "bits" (bitwise), None (exact), or a float tolerance."""
    if not isinstance(got, np.ndarray):
        return [f"{label}: got {type(got).__name__}, expected an array"]
    got = got.reshape(-1)
    expected = expected.reshape(-1)
    if got.size != expected.size:
        return [f"{label}: got {got.size} elements, expected {expected.size}"]
    if isinstance(tol, str):  # "bits"
        if got.dtype != expected.dtype:
            return [f"{label}: got dtype {got.dtype}, expected {expected.dtype}"]
        u = _UINT_OF_SIZE[got.dtype.itemsize]
        bad = got.view(u) != expected.view(u)
        shown_got, shown_exp = got, expected
    elif tol is None:
        bad = got != expected
        shown_got, shown_exp = got, expected
    else:
        g = got.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(g - expected) <= tol)
        shown_got, shown_exp = g, expected
    idx = np.flatnonzero(bad)
    if idx.size == 0:
        return []
    first = ", ".join(f"[{i}] expected {shown_exp[i]} got {shown_got[i]}" for i in idx[:limit])
    extra = ""
    if tol is not None and not isinstance(tol, str):
        extra = f" (tol {tol if np.isscalar(tol) else 'per element'})"
    return [f"{label}: {idx.size}/{got.size} wrong; first: {first}{extra}"]


def expect_equal(label: str, got: np.ndarray, want: np.ndarray) -> list[str]:
    """[] when ``got`` equals ``want`` exactly (shape and every element), else one failure line."""
    if got.shape == want.shape and np.array_equal(got, want):
        return []
    bad = np.flatnonzero(got != want) if got.shape == want.shape else []
    return [f"{label}: wrong at {list(bad[:5])} of {want.size}"]


def all_gather_aliased(comm: Any, block: np.ndarray, inplace: bool) -> np.ndarray:
    """All-gather this rank's ``block`` in place (from its slot of the output) or out of place,
    into an output first filled with -1; the output."""
    n, r, count = comm.size, comm.rank, block.size
    out = np.full(n * count, -1, block.dtype)
    if inplace:
        out[r * count:(r + 1) * count] = block
        comm.all_gather(out[r * count:(r + 1) * count], out)
    else:
        comm.all_gather(block, out)
    return out


def all_to_all_aliased(comm: Any, send: np.ndarray, inplace: bool) -> np.ndarray:
    """All-to-all of ``send`` in place (the result in ``send``) or into an output first filled
    with -1; the result."""
    if inplace:
        comm.all_to_all(send)
        return send
    got = np.full(send.size, -1, send.dtype)
    comm.all_to_all(send, got)
    return got


def unchanged(arr: np.ndarray, original: np.ndarray, label: str) -> list[str]:
    """The out-of-place input must be left untouched (bitwise)."""
    if arr.size == 0:
        return []
    u = _UINT_OF_SIZE[arr.dtype.itemsize]
    bad = np.flatnonzero(arr.reshape(-1).view(u) != original.reshape(-1).view(u))
    if bad.size:
        return [f"{label}: the input was modified at {bad.size} element(s), first [{bad[0]}] "
                f"{original.reshape(-1)[bad[0]]!r} -> {arr.reshape(-1)[bad[0]]!r}"]
    return []


def check_result(res: Any, target: np.ndarray | None, label: str) -> list[str]:
    """A call returns its output buffer (or, reduce_scatter/scatter in place, a view of the result block)."""
    if target is None or res is target:
        return []
    if isinstance(res, np.ndarray) and res.size == target.size and (
            res.size == 0 or np.shares_memory(res, target)):
        if res.size == 0 or res.__array_interface__["data"][0] == target.__array_interface__["data"][0]:
            return []
    return [f"{label}: returned {type(res).__name__} "
            f"{getattr(res, 'shape', '')} that is not the output buffer"]


@dataclass(frozen=True)
class Case:
    """One collective call: what, on which data, and how (in place or not, sync or async)."""

    coll: str
    dtype: str
    count: int
    """elements per block: the whole buffer for all_reduce/broadcast/reduce, per rank otherwise"""
    op: str = "sum"
    root: int = 0
    inplace: bool = False
    async_op: bool = False
    seed: int = 0
    dense: bool = False
    form: int = 0
    """in-place spelling: 0 passes None for the aliased argument, 1 passes the block view"""

    def label(self, nranks: int, rank: int) -> str:
        parts = [f"{self.coll}[{nranks} ranks, rank {rank}]", self.dtype, f"count={self.count}"]
        if self.coll in REDUCING:
            parts.append(f"op={self.op}")
        if self.coll in ROOTED:
            parts.append(f"root={self.root}")
        parts.append(("in-place" + (f"/form{self.form}" if self.form else "")) if self.inplace else "out-of-place")
        parts.append("async" if self.async_op else "sync")
        if self.dense:
            parts.append("dense")
        return " ".join(parts)


def mode_of(k: int) -> tuple[bool, bool]:
    """(inplace, async_op) for the k-th case: every 4 consecutive cases cover all four."""
    return bool(k & 1), bool(k & 2)


def start_case(comm: Any, c: Case) -> tuple[Any, Any, Callable[[Any], list[str]]]:
    """Issue ``c`` on this rank; returns (work or None, result of a sync call, verify(result))."""
    N, me, n = comm.size, comm.rank, c.count
    label = c.label(N, me)
    kw = {"async_op": c.async_op}
    opa = op_arg(c.op)
    root = c.root

    def gen(r: int, b: int) -> np.ndarray:
        return make_block(c.seed, r, b, c.dtype, n, c.op, c.dense)

    def red(block: int) -> Callable[[], tuple[np.ndarray, Any]]:
        return lambda: reduce_ref((gen(r, block) for r in range(N)), N, c.dtype, c.op, c.dense)

    blk = slice(me * n, (me + 1) * n)
    checks: list[Callable[[], list[str]]] = []
    outputs: list[tuple[np.ndarray, Callable[[], tuple[np.ndarray, Any]]]] = []
    target: np.ndarray | None = None

    def keep_input(inp: np.ndarray, orig: np.ndarray) -> None:
        checks.append(lambda: unchanged(inp, orig, label))

    if c.coll == "all_reduce":
        x = gen(me, 0)
        if c.inplace:
            out = x.copy()
            ret = comm.all_reduce(out, op=opa, **kw)
        else:
            inp, out = x.copy(), sentinel(c.dtype, n)
            ret = comm.all_reduce(inp, out, op=opa, **kw)
            keep_input(inp, x)
        outputs.append((out, red(0)))
        target = out
    elif c.coll == "broadcast":
        x = gen(me, 0)
        if c.inplace:
            out = x.copy()
            ret = comm.broadcast(out, root=root, **kw)
        else:
            inp, out = x.copy(), sentinel(c.dtype, n)
            ret = comm.broadcast(inp, out, root=root, **kw)
            keep_input(inp, x)
        outputs.append((out, lambda: (gen(root, 0), "bits")))
        target = out
    elif c.coll == "reduce":
        x = gen(me, 0)
        if c.inplace:
            out = x.copy()
            ret = comm.reduce(out, op=opa, root=root, **kw)
        else:
            inp, out = x.copy(), sentinel(c.dtype, n)
            ret = comm.reduce(inp, out, op=opa, root=root, **kw)
            keep_input(inp, x)
        if me == root:
            outputs.append((out, red(0)))
            target = out
    elif c.coll == "all_gather":
        x = gen(me, 0)
        out = sentinel(c.dtype, N * n)
        if c.inplace:
            out[blk] = x
            ret = comm.all_gather(None if c.form == 0 else out[blk], out, **kw)
        else:
            inp = x.copy()
            ret = comm.all_gather(inp, out, **kw)
            keep_input(inp, x)
        outputs.append((out, lambda: (np.concatenate([gen(r, 0) for r in range(N)]), "bits")))
        target = out
    elif c.coll == "reduce_scatter":
        X = np.concatenate([gen(me, b) for b in range(N)])
        if c.inplace:
            buf = X.copy()
            ret = comm.reduce_scatter(buf, None if c.form == 0 else buf[blk], op=opa, **kw)
            out = buf[blk]
        else:
            inp, out = X.copy(), sentinel(c.dtype, n)
            ret = comm.reduce_scatter(inp, out, op=opa, **kw)
            keep_input(inp, X)
        outputs.append((out, red(me)))
        target = out
    elif c.coll == "all_to_all":
        X = np.concatenate([gen(me, q) for q in range(N)])
        if c.inplace:
            out = X.copy()
            ret = comm.all_to_all(out, **kw)
        else:
            inp, out = X.copy(), sentinel(c.dtype, N * n)
            ret = comm.all_to_all(inp, out, **kw)
            keep_input(inp, X)
        outputs.append((out, lambda: (np.concatenate([gen(q, me) for q in range(N)]), "bits")))
        target = out
    elif c.coll == "gather":
        x = gen(me, 0)
        if me == root:
            out = sentinel(c.dtype, N * n)
            if c.inplace:
                out[blk] = x
                ret = comm.gather(None if c.form == 0 else out[blk], out, root=root, **kw)
            else:
                inp = x.copy()
                ret = comm.gather(inp, out, root=root, **kw)
                keep_input(inp, x)
            outputs.append((out, lambda: (np.concatenate([gen(r, 0) for r in range(N)]), "bits")))
            target = out
        else:
            inp = x.copy()
            ret = comm.gather(inp, root=root, **kw)
            keep_input(inp, x)
    elif c.coll == "scatter":
        if me == root:
            X = np.concatenate([gen(root, b) for b in range(N)])
            if c.inplace:
                buf = X.copy()
                ret = comm.scatter(buf, None if c.form == 0 else buf[blk], root=root, **kw)
                out = buf[blk]
            else:
                inp, out = X.copy(), sentinel(c.dtype, n)
                ret = comm.scatter(inp, out, root=root, **kw)
                keep_input(inp, X)
        else:
            out = sentinel(c.dtype, n)
            ret = comm.scatter(None, out, root=root, **kw)
        outputs.append((out, lambda: (gen(root, me), "bits")))
        target = out
    else:
        raise ValueError(c.coll)

    def verify(res: Any) -> list[str]:
        f: list[str] = []
        for arr, expect in outputs:
            exp, tol = expect()
            f += compare(arr, exp, tol, label)
        for chk in checks:
            f += chk()
        f += check_result(res, target, label)
        return f

    if c.async_op:
        import pyxccl
        if not isinstance(ret, pyxccl.Work):
            return None, ret, lambda res: [f"{label}: async_op=True returned {type(ret).__name__}, not a Work"]
        return ret, None, verify
    return None, ret, verify


def run_cases(comm: Any, cases: Iterable[Case], depth: int = 4, timeout: float = 90.0) -> list[str]:
    """Run ``cases`` in order; async ones stay queued up to ``depth`` deep before being waited for.

    Checks every result, that async calls complete in issue order (when the newest is done
    every older one is), and that a blocking call returns only after the queued ones.
    Stops at the first call that raises (the ranks may no longer agree on what runs next).
    """
    failures: list[str] = []
    pending: list[tuple[str, Any, Callable[[Any], list[str]]]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            pending[-1][1].wait(timeout)
        except Exception as exc:  # noqa: BLE001 - reported below per call
            failures.append(f"{pending[-1][0]}: wait raised {type(exc).__name__}: {exc}")
        for lab, w, _ in pending[:-1]:
            if not w.is_completed():
                failures.append(f"{lab}: still pending although a later async call completed "
                                f"(calls must complete in issue order)")
        for lab, w, ver in pending:
            try:
                res = w.result(timeout)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{lab}: raised {type(exc).__name__}: {exc}")
                continue
            if w.exception() is not None:
                failures.append(f"{lab}: exception() is {w.exception()!r} after a successful wait")
            failures.extend(ver(res))
        pending.clear()

    for c in cases:
        lab = c.label(comm.size, comm.rank)
        try:
            work, ret, ver = start_case(comm, c)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{lab}: raised {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}")
            flush()
            return failures
        if work is None:
            for plab, pw, _ in pending:
                if not pw.is_completed():
                    failures.append(f"{plab}: still pending after the later blocking call ({lab}) returned")
            failures.extend(ver(ret))
        else:
            pending.append((lab, work, ver))
            if len(pending) >= depth:
                flush()
    flush()
    return failures


# ============================================================================ helpers for jobs

def fresh_comm(comm: Any, timeout: float | None = None) -> Any:
    """A new Communicator over the same ranks (uid from rank 0, shared by a broadcast on ``comm``)."""
    import pyxccl

    buf = np.zeros(512, dtype=np.uint8)
    if comm.rank == 0:
        data = pyxccl.get_unique_id().to_bytes()
        buf[0], buf[1] = len(data) >> 8, len(data) & 0xFF
        buf[2:2 + len(data)] = np.frombuffer(data, dtype=np.uint8)
    comm.broadcast(buf, root=0)
    length = (int(buf[0]) << 8) | int(buf[1])
    uid = pyxccl.UniqueId.from_bytes(buf[2:2 + length].tobytes())
    return pyxccl.Communicator(comm.size, uid, comm.rank, timeout=timeout)


def expect_raises(exc_types: Any, fn: Callable[[], Any], label: str, contains: Iterable[str] = ()) -> list[str]:
    """[] when ``fn()`` raises one of ``exc_types`` whose message contains every string of ``contains``."""
    try:
        fn()
    except exc_types as exc:
        msg = str(exc)
        missing = [s for s in contains if s not in msg]
        if missing:
            return [f"{label}: {type(exc).__name__} message does not name {missing}: {msg!r}"]
        return []
    except Exception as exc:  # noqa: BLE001
        return [f"{label}: raised {type(exc).__name__}: {exc} (expected {_names(exc_types)})"]
    return [f"{label}: did not raise (expected {_names(exc_types)})"]


def _names(types: Any) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__
