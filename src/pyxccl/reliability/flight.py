"""The flight recorder: the last operations of a communicator, for post-mortems of hangs.

Every call on a :class:`~pyxccl.Communicator` (each collective, each send and recv) gets an
:class:`OpRecord` in its communicator's :class:`FlightRecorder`, a ring of the last
``PYXCCL_TRACE_SIZE`` records (default 1000; 0 turns recording off). A record follows its
call: ``queued`` when issued, ``running`` once the communicator starts it,
``done``, or ``failed: <ExceptionType>: message``. ``Communicator.pending_ops()`` returns
the kept records.

Collectives are numbered 1, 2, ... per communicator (``seq``): every rank must issue the
same collectives in the same order, so the records of one ``seq`` on all ranks describe
the same call, and comparing them shows which rank is behind or called something else
(``pyxccl-doctor``). Sends and receives are numbered on their own (``kind`` "p2p"),
since ranks legitimately issue different ones.

Dumps: with ``PYXCCL_TRACE_DIR`` set, each rank writes
``{dir}/pyxccl-trace-<comm tag>-rank<r>.json`` when one of its calls raises
CollectiveTimeout, and every live communicator of the process is dumped on SIGUSR1
(``kill -USR1 <pid>``; the handler is installed once, from the main thread, and calls
any Python handler that was installed before it).

Cost: recording runs on every call, so it is kept to about a microsecond: a ``__slots__``
record filled in place, ``time.time()`` stamps, and the call site taken with one
``sys._getframe(depth)`` at the depth of the communicator's caller (walking further out
only when that frame is pyxccl's own), formatted only when the records are read. The
records hold no reference to the call's buffers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections import deque
from itertools import count as _count
from typing import Any

from .. import log

# the package folder as code objects spell it (co_filename), whatever sys.path entry it came from
_PKG_DIR = os.path.dirname(sys._getframe().f_code.co_filename) + os.sep
_now = time.time
_getframe = sys._getframe
_new = object.__new__

QUEUED, RUNNING, DONE = "queued", "running", "done"
#: the collectives whose reduce op matters (the others carry a default one)
REDUCING = frozenset(("allreduce", "reduce", "reducescatter"))

#: dump format version (``pyxccl-doctor`` checks it)
FORMAT = 1


class OpRecord:
    """One operation of a communicator, as the flight recorder keeps it (made by :class:`FlightRecorder`).

    It holds no reference to the call's buffers: only numbers, names, the dtype and the
    call site's code object and line.
    """

    __slots__ = ("seq", "kind", "op", "dtype", "count", "root", "peers", "tag", "algorithm", "reduce_op",
                 "count_may_differ", "state", "enqueued", "started", "ended", "_code", "_line")
    seq: int
    kind: str
    op: str
    dtype: Any
    count: int
    root: int | None
    peers: Any
    tag: int | None
    algorithm: str | None
    reduce_op: str | None
    count_may_differ: bool
    state: str
    enqueued: float
    started: float | None
    ended: float | None
    _code: Any
    _line: int

    def _site(self, depth: int) -> None:
        """Remember the call site: the first frame outside pyxccl, looked for from ``depth`` frames
        above the recorder's method (kept as code object + line, formatted on read).

        ``sys._getframe(depth)`` makes a frame object for that frame only, while each ``f_back``
        makes one more (about 0.4 µs each), so the communicator passes the depth at which its
        public methods' caller sits, and the walk runs only when that frame is pyxccl's own
        (the torch backend, say).
        """
        f: Any
        try:
            f = _getframe(depth + 1)
        except ValueError:  # a shallower stack than expected: walk from the recorder's caller
            f = _getframe(2)
        while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
            f = f.f_back
        if f is None:
            self._code, self._line = None, 0
        else:
            self._code, self._line = f.f_code, f.f_lineno

    def start(self) -> None:
        self.state = RUNNING
        self.started = _now()

    def done(self) -> None:
        self.state = DONE
        self.ended = _now()

    def fail(self, exc: BaseException) -> None:
        self.state = f"failed: {type(exc).__name__}: {exc}"
        self.ended = _now()

    @property
    def call_site(self) -> str:
        code = self._code
        return "?" if code is None else f"{code.co_filename}:{self._line} in {code.co_name}"

    def to_dict(self) -> dict[str, Any]:
        started, ended = self.started, self.ended
        return {"seq": self.seq, "kind": self.kind, "op": self.op, "dtype": str(_dtype_name(self.dtype)),
                "count": self.count, "root": self.root, "peers": self.peers, "tag": self.tag,
                "algorithm": self.algorithm,
                "reduce_op": self.reduce_op, "count_may_differ": self.count_may_differ, "state": self.state,
                "enqueued": self.enqueued, "started": started, "ended": ended,
                "duration": (ended - started) if ended is not None and started is not None else None,
                "call_site": self.call_site}

    def __repr__(self) -> str:
        return f"<OpRecord #{self.seq} {self.op} {self.state}>"


def _dtype_name(dtype: Any) -> str:
    """pyxccl's name of a DType or a numpy dtype (send/recv record the array's)."""
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None)
    if hasattr(dtype, "nccl_name"):  # a pyxccl DType
        return str(name)
    try:
        from ..dtypes import dtype_of
        return dtype_of(dtype).name
    except Exception:  # noqa: BLE001 - a dump must not fail on a type name
        return str(name or dtype)


class FlightRecorder:
    """The last ``size`` operations of one communicator (oldest first)."""

    __slots__ = ("size", "_records", "_p2p_seq", "recorded")

    def __init__(self, size: int = 1000) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._records: deque[OpRecord] = deque(maxlen=size)
        self._p2p_seq = 0
        self.recorded = 0
        """records made so far (``recorded - len(records)`` fell out of the ring)"""

    # Both makers set every slot in place (no __init__ call: this runs on every call).
    def collective(self, seq: int, call: Any, algorithm: str | None, depth: int = 1) -> OpRecord:
        """Record collective number ``seq`` (a :class:`~pyxccl.comm.checks.Call`), queued.

        ``depth``: where the call site is looked for, as ``sys._getframe(depth)`` counts from
        here (1: this method's caller).
        """
        rec = _new(OpRecord)
        coll = call.collective
        rec.seq, rec.kind, rec.op = seq, "collective", coll if call.layout is None else coll + "v"
        rec.dtype, rec.count, rec.root, rec.peers, rec.algorithm = call.dtype, call.count, call.root, "all", algorithm
        rec.tag = None
        rec.reduce_op = call.op.name if coll in REDUCING else None
        rec.count_may_differ = call.agree_count
        rec.state, rec.enqueued, rec.started, rec.ended = QUEUED, _now(), None, None
        rec._site(depth)
        self._records.append(rec)
        self.recorded += 1
        return rec

    def p2p(self, kind: str, peer: int, array: Any, depth: int = 1, tag: int = 0) -> OpRecord:
        """Record one send or recv of ``array`` with ``peer`` and message ``tag``, queued (``depth``: as for
        :meth:`collective`)."""
        self._p2p_seq += 1
        rec = _new(OpRecord)
        rec.seq, rec.kind, rec.op, rec.dtype, rec.count = self._p2p_seq, "p2p", kind, array.dtype, array.size
        rec.tag = tag
        rec.root, rec.peers, rec.algorithm, rec.reduce_op, rec.count_may_differ = None, [peer], None, None, False
        rec.state, rec.enqueued, rec.started, rec.ended = QUEUED, _now(), None, None
        rec._site(depth)
        self._records.append(rec)
        self.recorded += 1
        return rec

    @property
    def dropped(self) -> int:
        """Records that fell out of the ring (older than the last ``size``)."""
        return self.recorded - len(self._records)

    def records(self) -> list[dict[str, Any]]:
        """Every kept record as a dict, oldest first."""
        return [r.to_dict() for r in tuple(self._records)]


# ---------------------------------------------------------------------------- failures and dumps

def failed(ctx: Any, records: Any, exc: BaseException) -> None:
    """A call of the communicator ``ctx`` (its :class:`~pyxccl.comm.context.CommContext`) raised ``exc``:
    mark its record(s) failed, dump on a CollectiveTimeout."""
    from ..errors import CollectiveTimeout

    if records is not None:
        for rec in (records if isinstance(records, list) else (records,)):
            rec.fail(exc)
    if isinstance(exc, CollectiveTimeout) and ctx.config.trace_dir:
        try:
            dump(ctx, ctx.config.trace_dir, "timeout", exc)
        except Exception as err:  # noqa: BLE001 - the timeout is what the caller must see
            log.warn("flight recorder: could not write the dump: %s", err, rank=ctx.rank)


_tmp_ids = _count()


def dump_path(trace_dir: str, tag: str, rank: int) -> str:
    return os.path.join(trace_dir, f"pyxccl-trace-{tag}-rank{rank}.json")


def snapshot(ctx: Any, reason: str = "", exc: BaseException | None = None) -> dict[str, Any]:
    """What a dump of the communicator ``ctx`` (its context) holds: who (rank, size, host, pid,
    communicator tag), when, why, and the records."""
    rec: FlightRecorder | None = ctx.flight
    records = rec.records() if rec is not None else []
    lost = ctx.lost
    return {"format": FORMAT, "rank": ctx.rank, "size": ctx.size, "host": socket.gethostname(),
            "pid": os.getpid(), "comm": ctx.tag, "time": _now(), "reason": reason,
            "error": f"{type(exc).__name__}: {exc}" if exc is not None else None,
            "recorder_size": rec.size if rec is not None else 0, "dropped": rec.dropped if rec is not None else 0,
            "pending": [f"{r['kind']} #{r['seq']} {r['op']}" for r in records if r["state"] in (QUEUED, RUNNING)],
            "lost": {str(k): str(v) for k, v in dict(lost).items()},
            "aborted": bool(ctx.aborted), "records": records}


def dump(ctx: Any, trace_dir: str, reason: str = "", exc: BaseException | None = None) -> str:
    """Write the dump of the communicator ``ctx`` (its context) into ``trace_dir`` (atomically: never a
    half-written file); its path."""
    data = snapshot(ctx, reason, exc)
    os.makedirs(trace_dir, exist_ok=True)
    path = dump_path(trace_dir, ctx.tag, ctx.rank)
    tmp = f"{path}.{os.getpid()}.{next(_tmp_ids)}.tmp"  # unique even when SIGUSR1 interrupts a dump
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)
    log.warn("flight recorder: %s: wrote %s (%d records)", reason or "dump", path, len(data["records"]),
             rank=ctx.rank)
    return path


# ---------------------------------------------------------------------------- live communicators, SIGUSR1

_live: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False
_install_lock = threading.Lock()


def register(ctx: Any) -> None:
    """Track the communicator ``ctx`` (its context) for SIGUSR1 dumps; install the handler once when
    ``PYXCCL_TRACE_DIR`` is set."""
    _live.add(ctx)
    if ctx.config.trace_dir and not _installed:
        install_signal_handler()


def dump_all(reason: str = "SIGUSR1") -> list[str]:
    """Dump every live (not destroyed, not aborted) communicator of this process; the paths written."""
    paths = []
    for ctx in list(_live):
        if ctx.closed or ctx.aborted:
            continue
        trace_dir = ctx.config.trace_dir
        if not trace_dir:
            continue
        try:
            paths.append(dump(ctx, trace_dir, reason))
        except Exception as err:  # noqa: BLE001 - one bad communicator must not stop the others
            log.warn("flight recorder: could not dump %r: %s", ctx, err)
    return paths


def install_signal_handler() -> bool:
    """Dump every live communicator on SIGUSR1 (once per process, from the main thread only).

    A Python handler installed before is called after the dumps; the default action
    (terminate) is not. Returns whether the handler is installed.
    """
    global _installed
    with _install_lock:
        if _installed:
            return True
        if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGUSR1)

        def on_sigusr1(signum: int, frame: Any) -> None:
            dump_all("SIGUSR1")
            if callable(previous):
                previous(signum, frame)

        try:
            signal.signal(signal.SIGUSR1, on_sigusr1)
        except (ValueError, OSError):  # not the main interpreter, or no signals here
            return False
        _installed = True
        return True
