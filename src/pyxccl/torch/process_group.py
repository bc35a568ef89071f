"""``ProcessGroupPyxccl``: torch.distributed's ProcessGroup operations on a pyxccl Communicator.

torch offers third-party backends written in Python one route: a subclass of
``torch.distributed.ProcessGroup`` (its pybind trampoline forwards the C++ virtual
calls DDP's reducer makes, allreduce / allgather / broadcast, to the Python methods),
returned by the creator registered with ``Backend.register_backend``. The C++
``Backend`` class has no Python constructor, so this is the only way.

Each group owns one pyxccl Communicator for its collectives, bootstrapped through the
c10d store torch hands over (rank 0 publishes ``get_unique_id()``), whose call queue
runs the group's calls in issue order (asynchronous ones as pyxccl ``Work``s, followed by
:class:`CallWork`), and a :class:`P2P` engine for send/recv on the same communicator's
point-to-point calls (which progress beside the call queue, so that sends, receives and
collectives never queue behind each other).
"""

from __future__ import annotations

import atexit
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

import pyxccl

from . import _tensors as T
from ._errors import (
    BACKEND,
    PyxcclBackendError,
    PyxcclInvalidArgument,
    unsupported,
    wrap_error,
)
from ._movement import Movement
from ._p2p import P2P
from ._tensors import opt
from ._work import CallWork, GroupedWork, Work, completed

_MB_TAG = -(1 << 40)  # monitored_barrier's tags, out of the way of users' (torch's tags are ints >= 0)
_LIVE: weakref.WeakSet[ProcessGroupPyxccl] = weakref.WeakSet()


def _abort_all() -> None:  # at interpreter exit: release shared memory and sockets locally
    for pg in list(_LIVE):
        try:
            pg.abort()
        except Exception:  # noqa: BLE001, S110 - best effort on exit
            pass


atexit.register(_abort_all)


def bootstrap(store: Any, rank: int, size: int, key: str, timeout: float) -> tuple[pyxccl.Communicator, int]:
    """A pyxccl Communicator of ``size`` ranks from a c10d store: rank 0 publishes the unique id.

    The key carries a generation number (how many times this rank joined under ``key``), so a
    store that outlives a group (a file store reused by a second ``init_process_group``) never
    hands out a stale id.
    """
    gen = store.add(f"{key}/join/{rank}", 1)
    uid_key = f"{key}/uid/{gen}"
    if rank == 0:
        uid = pyxccl.get_unique_id().to_bytes()
        store.set(uid_key, uid)
    else:
        uid = bytes(store.get(uid_key))
    return pyxccl.Communicator(size, uid, rank, timeout=timeout), gen


class ProcessGroupPyxccl(Movement, dist.ProcessGroup):
    """torch.distributed on pyxccl (CPU tensors). Created by ``init_process_group("pyxccl")`` / ``new_group``."""

    def __init__(self, store: Any, rank: int, size: int, timeout: timedelta | float | None = None,
                 group_id: str = "", global_ranks: list[int] | None = None):
        super().__init__(rank, size)  # the (store, rank, size) constructor makes no trampoline instance
        if isinstance(timeout, timedelta):
            secs = timeout.total_seconds()
        else:
            secs = float(timeout) if timeout is not None else 1800.0
        self._timeout = secs if secs > 0 else 1800.0
        self._store = store
        self._rank, self._size = rank, size
        self._group_id = group_id
        self._global_ranks = list(global_ranks or range(size))
        self._comm, _ = bootstrap(store, rank, size, "pyxccl", self._timeout)
        self._queue = self._comm.context.call_queue  # the communicator's call queue runs every call of the group
        self._p2p = P2P(self._comm, rank, size, self._timeout)
        self._seq = 0
        self._coalescing: list[Work] | None = None
        self._closed = False
        _LIVE.add(self)

    # ------------------------------------------------------------------ identity
    def getBackendName(self) -> str:
        return BACKEND

    def name(self) -> str:
        return BACKEND

    @property
    def _device_types(self) -> list[torch.device]:
        return [torch.device("cpu"), torch.device("cuda")]

    def get_group_store(self) -> Any:
        return self._store

    @property
    def comm(self) -> pyxccl.Communicator:
        """The pyxccl Communicator behind this group's collectives."""
        return self._comm

    def __repr__(self) -> str:
        return f"<ProcessGroupPyxccl rank {self._rank}/{self._size}>"

    def _set_group_name(self, name: str) -> None:
        self._group_name = name

    @property
    def group_name(self) -> str:
        return getattr(self, "_group_name", "")

    def _set_group_desc(self, desc: str) -> None:
        self._group_desc = desc

    @property
    def group_desc(self) -> str:
        return getattr(self, "_group_desc", "")

    def _get_sequence_number_for_group(self) -> int:
        return self._seq

    def _set_sequence_number_for_group(self) -> None:
        pass

    # ------------------------------------------------------------------ running
    def _run(self, what: str, fn: Callable[[], None], outputs: list[torch.Tensor], opts: Any,
             single: bool = False) -> Work:
        """Run ``fn`` on the communicator's call queue, in order with the group's other calls.

        torch's blocking calls (``opts.asyncOp`` False) run inline when nothing is queued and get a
        completed Work back (errors are raised here); the others, DDP's included, are queued as a
        pyxccl ``Work`` (run by the queue's worker thread, or by ``wait()``) that a
        :class:`CallWork` follows. ``fn``'s own pyxccl calls run nested, inline, on whichever
        thread runs ``fn``. ``single``: ``fn`` is one pyxccl call (which the queue orders itself), so a
        blocking ``fn`` is simply called.
        """
        if self._closed:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: {what}: the process group was shut down")
        self._seq += 1
        # CUDA tensors: the pyxccl calls only enqueue on the caller's current stream (read on this
        # thread: streams are per thread), as NCCL's do; the Work is complete for the host at once
        cuda = bool(outputs) and outputs[0].is_cuda
        if cuda or (self._coalescing is None and opts is not None and not getattr(opts, "asyncOp", True)):
            try:
                if single or cuda:
                    fn()
                else:
                    self._queue.run(fn, what)
            except BaseException as exc:
                err = wrap_error(exc, what)
                if err is exc:
                    raise
                raise err from exc
            if self._coalescing is not None:  # coalesced CUDA calls: enqueued already, done for the host
                self._coalescing.append(completed())
            return completed()
        pw = pyxccl.Work(what)
        work = CallWork(what, outputs, pw)
        if self._coalescing is not None:
            self._coalescing.append(work)
        self._queue.submit(fn, pw)  # last: the worker wakes now, and wait() should find the call still queued
        return work

    def _single(self, tensors: Any, what: str) -> torch.Tensor:
        """The one tensor of a call (the common ``[tensor]`` form checked cheaply)."""
        if type(tensors) is list and len(tensors) == 1:
            t = tensors[0]
            if isinstance(t, torch.Tensor) and (t.is_cpu or t.is_cuda) and t.layout is torch.strided:
                return t
        return self._one(tensors, what)

    def _one(self, tensors: Any, what: str) -> torch.Tensor:
        if isinstance(tensors, torch.Tensor):
            return T.check_tensor(tensors, what)
        if len(tensors) != 1:
            raise unsupported(what, f"{len(tensors)} tensors per rank (one tensor per call; the multi-device form "
                                    "is not implemented)")
        return T.check_tensor(tensors[0], what)

    def _emulated(self, t: torch.Tensor, fn: Any) -> torch.Tensor:
        """Every rank's ``t`` folded with a torch bitwise function (an allgather, then a local fold)."""
        flat = t.detach().contiguous().view(-1)
        stacked = torch.empty((self._size, flat.numel()), dtype=flat.dtype, device=flat.device)
        self._comm.all_gather(T.np_bytes(flat), T.np_bytes(stacked.view(-1)))
        return T.fold(stacked, fn).view(t.shape)

    # ------------------------------------------------------------------ reductions
    def allreduce(self, tensors: Any, opts: Any = None) -> Work:
        if type(opts) is dist.AllreduceOptions and type(tensors) is list and len(tensors) == 1:
            t = tensors[0]  # the fast path of torch's own calls: one plain contiguous CPU tensor
            if T.plain(t):
                rop = T.FAST_OPS.get(int(opts.reduceOp.op))
                if rop is not None:
                    comm, a = self._comm, t.numpy()
                    return self._run("allreduce", lambda: comm.all_reduce(a, None, rop), [t], opts, True)
        if opts is not None and not hasattr(opts, "reduceOp"):  # pg.allreduce(t, op) overload
            op, opts = opts, None
        else:
            op = opt(opts, "reduceOp", dist.ReduceOp.SUM)
        if type(tensors) is list and len(tensors) > 1:
            return self._allreduce_many(tensors, op, opts)
        if type(tensors) is list and len(tensors) == 1 and getattr(tensors[0], "layout", None) is torch.sparse_coo:
            return self._allreduce_sparse(tensors[0], op, opts)
        t = self._single(tensors, "allreduce")
        rop, fold = T.reduce_op(op, t.dtype, "allreduce")
        comm = self._comm
        if fold is not None:
            def run() -> None:
                with torch.no_grad():
                    t.copy_(self._emulated(t, fold))
        elif t.dtype in T._NUMPY and t.is_contiguous():  # the fast path: a zero-copy numpy view
            a = T.arr(t)

            def run() -> None:
                comm.all_reduce(a, None, rop)
        else:
            r = T.Reducible(t, rop, "allreduce")

            def run() -> None:
                comm.all_reduce(r.buf, None, rop)
                r.done()
        return self._run("allreduce", run, [t], opts)

    def _allreduce_sparse(self, t: torch.Tensor, op: Any, opts: Any) -> Work:
        """Sum of sparse COO tensors (DDP's sparse gradients): every rank's indices and values are
        all-gathered (counts first), concatenated and coalesced; the result replaces ``t``."""
        if not t.is_cpu:
            raise unsupported("allreduce", f"sparse tensors on {t.device}")
        if int(getattr(op, "op", op)) != int(dist.ReduceOp.SUM):
            raise unsupported("allreduce", "sparse tensors with a reduce op other than SUM")
        size, comm = self._size, self._comm
        result: list[torch.Tensor] = [t]

        def run() -> None:
            idx, val = t._indices().contiguous(), t._values().contiguous()
            nnz = torch.tensor([idx.shape[1]], dtype=torch.int64)
            counts = torch.empty(size, dtype=torch.int64)
            comm.all_gather(nnz.numpy(), counts.numpy())
            c = counts.tolist()
            # indices travel as (nnz x sparse_dim) rows so that each rank's block is contiguous
            rows = torch.empty(sum(c), idx.shape[0], dtype=torch.int64)
            comm.all_gatherv(T.np_bytes(idx.t().contiguous()), T.np_bytes(rows), [n * idx.shape[0] * 8 for n in c])
            row_bytes = val[0].numel() * val.element_size() if val.shape[0] else \
                int(torch.Size(val.shape[1:]).numel()) * val.element_size()
            vals = torch.empty((sum(c), *val.shape[1:]), dtype=val.dtype)
            comm.all_gatherv(T.np_bytes(val), T.np_bytes(vals), [n * row_bytes for n in c])
            out = torch.sparse_coo_tensor(rows.t(), vals, t.shape).coalesce()
            with torch.no_grad():
                t.copy_(out)
            result[0] = t
        return self._run("allreduce (sparse)", run, result, opts)

    def _allreduce_many(self, tensors: list, op: Any, opts: Any) -> Work:
        # the legacy multi-tensor form: every tensor of every rank reduced together, result in each
        ts = [T.check_tensor(t, "allreduce") for t in tensors]
        rop, fold = T.reduce_op(op, ts[0].dtype, "allreduce")
        if fold is not None or any(t.shape != ts[0].shape or t.dtype != ts[0].dtype for t in ts):
            raise unsupported("allreduce", "several tensors per rank need one shape and dtype and a sum/prod/min/max op")
        if isinstance(rop, str) and rop in ("avg",) or isinstance(rop, pyxccl.ReduceOp):
            raise unsupported("allreduce", f"{rop} over several tensors per rank")
        local = {"sum": torch.sum, "prod": torch.prod, "min": torch.amin, "max": torch.amax}[rop]
        comm = self._comm

        def run() -> None:
            with torch.no_grad():
                acc = local(torch.stack([t.detach() for t in ts]), dim=0).contiguous()
                r = T.Reducible(acc, rop, "allreduce")
                comm.all_reduce(r.buf, None, rop)
                r.done()
                for t in ts:
                    t.copy_(acc)
        return self._run("allreduce", run, ts, opts)

    def allreduce_coalesced(self, tensors: list, opts: Any = None) -> Work:
        ts = [T.check_tensor(t, "allreduce_coalesced") for t in tensors]
        op = opt(opts, "reduceOp", dist.ReduceOp.SUM)
        if ts and any(t.dtype != ts[0].dtype for t in ts):
            raise PyxcclInvalidArgument(f"{BACKEND} backend: allreduce_coalesced: the tensors must share one dtype")
        if not ts:
            return self._run("allreduce_coalesced", lambda: None, [], opts)
        rop, fold = T.reduce_op(op, ts[0].dtype, "allreduce_coalesced")
        comm = self._comm

        def run() -> None:
            with torch.no_grad():
                flat = torch.cat([t.detach().reshape(-1) for t in ts])
                if fold is not None:
                    flat = self._emulated(flat, fold)
                else:
                    r = T.Reducible(flat, rop, "allreduce_coalesced")
                    comm.all_reduce(r.buf, None, rop)
                    r.done()
                off = 0
                for t in ts:
                    n = t.numel()
                    t.copy_(flat[off:off + n].view(t.shape))
                    off += n
        return self._run("allreduce_coalesced", run, ts, opts)

    def reduce(self, tensors: Any, opts: Any = None) -> Work:
        t = self._one(tensors, "reduce")
        root = opt(opts, "rootRank", 0)
        rop, fold = T.reduce_op(opt(opts, "reduceOp", dist.ReduceOp.SUM), t.dtype, "reduce")
        comm, me = self._comm, self._rank

        def run() -> None:
            if fold is not None:
                out = self._emulated(t, fold)
                if me == root:
                    with torch.no_grad():
                        t.copy_(out)
                return
            r = T.Reducible(t, rop, "reduce")
            comm.reduce(r.buf, None, rop, root=root)
            if me == root:
                r.done()
        return self._run("reduce", run, [t], opts)

    def _reduce_scatter_flat(self, out: torch.Tensor, inp: torch.Tensor, op: Any, what: str,
                             counts: list[int] | None = None) -> None:
        rop, fold = T.reduce_op(op, inp.dtype, what)
        if fold is not None:
            full = self._emulated(inp, fold).view(-1)
            off = sum(counts[:self._rank]) if counts else self._rank * out.numel()
            with torch.no_grad():
                out.copy_(full[off:off + out.numel()].view(out.shape))
            return
        ri = T.Reducible(inp, rop, what)
        ro = T.Reducible(out, rop, what, load=False)
        if counts is None:
            self._comm.reduce_scatter(ri.buf, ro.buf, rop)
        else:
            self._comm.reduce_scatterv(ri.buf, ro.buf, counts, rop)
        ro.done()

    def reduce_scatter(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        out = self._one(output_tensors, "reduce_scatter")
        ins = input_tensors[0] if input_tensors and isinstance(input_tensors[0], (list, tuple)) else input_tensors
        if len(ins) != self._size:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: reduce_scatter: the input list has {len(ins)} tensors; "
                                        f"the group has {self._size} ranks")
        ins = [T.check_tensor(t, "reduce_scatter") for t in ins]
        if any(t.dtype != out.dtype for t in ins):
            raise PyxcclInvalidArgument(f"{BACKEND} backend: reduce_scatter: input and output dtypes differ")
        counts = [t.numel() for t in ins]
        if counts[self._rank] != out.numel():
            raise PyxcclInvalidArgument(f"{BACKEND} backend: reduce_scatter: the output has {out.numel()} elements, "
                                        f"this rank's input block {counts[self._rank]}")
        op = opt(opts, "reduceOp", dist.ReduceOp.SUM)

        def run() -> None:
            with torch.no_grad():
                packed = torch.cat([t.detach().reshape(-1) for t in ins])
            even = all(c == counts[0] for c in counts)
            self._reduce_scatter_flat(out, packed, op, "reduce_scatter", None if even else counts)
        return self._run("reduce_scatter", run, [out], opts)

    def _reduce_scatter_base(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        if type(opts) is dist.ReduceScatterOptions and T.plain(output) and T.plain(input):
            rop = T.FAST_OPS.get(int(opts.reduceOp.op))  # the fast path: pyxccl checks sizes and dtypes
            if rop is not None:
                comm, x, y = self._comm, input.numpy(), output.numpy()
                return self._run("reduce_scatter_tensor", lambda: comm.reduce_scatter(x, y, rop), [output], opts,
                                 True)
        out = T.check_tensor(output, "reduce_scatter_tensor")
        inp = T.check_tensor(input, "reduce_scatter_tensor")
        if inp.numel() != out.numel() * self._size or inp.dtype != out.dtype:
            raise PyxcclInvalidArgument(
                f"{BACKEND} backend: reduce_scatter_tensor: the input must have group size ({self._size}) times the "
                f"output's {out.numel()} elements of its dtype; it has {inp.numel()} of {inp.dtype}")
        op = opt(opts, "reduceOp", dist.ReduceOp.SUM)
        if inp.dtype in T._NUMPY and inp.is_contiguous() and out.is_contiguous():  # the fast path
            rop, fold = T.reduce_op(op, inp.dtype, "reduce_scatter_tensor")
            if fold is None:
                comm, x, y = self._comm, T.arr(inp), T.arr(out)

                def run() -> None:
                    comm.reduce_scatter(x, y, rop)
                return self._run("reduce_scatter_tensor", run, [out], opts)
        return self._run("reduce_scatter_tensor", lambda: self._reduce_scatter_flat(out, inp, op, "reduce_scatter_tensor"),
                         [out], opts)

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        return self._reduce_scatter_base(output, input, opts)

    def reduce_scatter_single_coalesced(self, outputs: list, inputs: list, opts: Any = None) -> Work:
        pairs = list(zip(outputs, inputs))
        for o, i in pairs:
            T.check_tensor(o, "reduce_scatter_tensor_coalesced")
            T.check_tensor(i, "reduce_scatter_tensor_coalesced")
            if i.numel() != o.numel() * self._size:
                raise PyxcclInvalidArgument(f"{BACKEND} backend: reduce_scatter_tensor_coalesced: an input is not "
                                            f"{self._size} times its output")
        op = opt(opts, "reduceOp", dist.ReduceOp.SUM)

        def run() -> None:
            for o, i in pairs:
                self._reduce_scatter_flat(o, i, op, "reduce_scatter_tensor_coalesced")
        return self._run("reduce_scatter_tensor_coalesced", run, list(outputs), opts)

    def reduce_scatter_tensor_coalesced(self, outputs: list, inputs: list, opts: Any = None) -> Work:
        return self.reduce_scatter_single_coalesced(outputs, inputs, opts)

    def barrier(self, opts: Any = None) -> Work:
        comm = self._comm
        return self._run("barrier", lambda: comm.barrier(), [], opts, True)

    # ------------------------------------------------------------------ point to point
    def send(self, tensors: list, dstRank: int, tag: int = 0) -> Work:
        t = self._one(tensors, "send")
        return self._p2p.send(t, int(dstRank), int(tag))

    def recv(self, tensors: list, srcRank: int, tag: int = 0) -> Work:
        t = self._one(tensors, "recv")
        return self._p2p.recv(t, int(srcRank), int(tag))

    def recv_anysource(self, tensors: list, tag: int = 0) -> Work:
        t = self._one(tensors, "recv_anysource")
        return self._p2p.recv(t, None, int(tag))

    def monitored_barrier(self, timeout: Any = None, wait_all_ranks: bool = False) -> None:
        """Gloo's debugging barrier, with Gloo's messages: rank 0 names the ranks that did not arrive.

        Every other rank sends rank 0 a token and waits (``timeout``) for its answer; rank 0 waits
        for each rank in turn (the time left, or the whole ``timeout`` each with ``wait_all_ranks``),
        then answers all. (``dist.monitored_barrier`` itself admits only Gloo; this is
        ``group.monitored_barrier(...)``.)
        """
        secs = timeout.total_seconds() if isinstance(timeout, timedelta) else \
            float(timeout) if timeout is not None else self._timeout
        ms = int(secs * 1000)
        me, size, p2p = self._rank, self._size, self._p2p
        if size == 1:
            return
        if me != 0:
            p2p.send(torch.zeros(1), 0, _MB_TAG)
            w = p2p.recv(torch.empty(1), 0, _MB_TAG + 1)
            try:
                w.wait(max(secs, 1e-3))
            except Exception as exc:
                p2p.cancel(w)
                raise PyxcclBackendError(
                    f"Rank {me} successfully reached monitoredBarrier, but received errors while waiting for "
                    "send/recv from rank 0. Please check rank 0 logs for faulty rank.") from exc
            return
        start = time.monotonic()
        works = {q: p2p.recv(torch.empty(1), q, _MB_TAG) for q in range(1, size)}
        failed: list[int] = []
        try:
            for q, w in works.items():
                left = secs if wait_all_ranks else secs - (time.monotonic() - start)
                if left <= 0:
                    done = [p for p, x in works.items() if x.is_completed()]
                    raise PyxcclBackendError(f"[Rank 0]: Rank 0 timed out in monitoredBarrier after {ms} ms "
                                             f"(ranks that answered: {done})")
                try:
                    w.wait(left)
                except Exception as exc:
                    if not wait_all_ranks:
                        raise PyxcclBackendError(
                            f"[Rank 0]: Rank {q} failed to pass monitoredBarrier in {ms} ms") from exc
                    failed.append(q)
            if failed:
                raise PyxcclBackendError(f"[Rank 0]: Ranks {', '.join(map(str, failed))} failed to pass "
                                         f"monitoredBarrier in {ms} ms")
        finally:
            for w in works.values():
                p2p.cancel(w)
        for q in range(1, size):
            p2p.send(torch.zeros(1), q, _MB_TAG + 1)

    # ------------------------------------------------------------------ coalescing
    def _start_coalescing(self, device: Any = None) -> None:
        if self._coalescing is not None:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: _start_coalescing: already coalescing")
        self._coalescing = []

    def _end_coalescing(self, device: Any = None) -> Work:
        works, self._coalescing = self._coalescing or [], None
        return GroupedWork("coalesced calls", works)

    # ------------------------------------------------------------------ life
    def _wait_for_pending_works(self) -> None:
        self._queue.drain(float("inf"))

    def shutdown(self) -> None:
        """Finish queued calls, then destroy the communicator (collective over the group)."""
        if self._closed:
            return
        self._closed = True
        self._queue.drain(time.monotonic() + self._timeout)
        self._p2p.close()
        try:
            self._comm.destroy()
        finally:
            _LIVE.discard(self)

    def abort(self) -> None:
        """Stop now, locally: fail queued calls and pending sends/receives, abort the communicator. Never blocks."""
        self._closed = True
        self._p2p.abort()
        self._comm.abort()
        _LIVE.discard(self)

    def set_timeout(self, timeout: timedelta) -> None:
        raise unsupported("set_timeout", "the timeout is fixed when the group is created")

    # ------------------------------------------------------------------ not implemented: say so clearly
    def split_group(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("split_group", "use torch.distributed.new_group / new_subgroups")

    def merge_remote_group(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("merge_remote_group")


def create_backend(common_opts: Any, backend_opts: Any = None) -> ProcessGroupPyxccl:
    """The creator registered with ``Backend.register_backend(..., extended_api=True)``."""
    return ProcessGroupPyxccl(common_opts.store, common_opts.group_rank, common_opts.group_size,
                              common_opts.timeout, group_id=str(common_opts.group_id),
                              global_ranks=list(common_opts.global_ranks_in_group))

