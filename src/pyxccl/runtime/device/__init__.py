"""The GPU executor: a call's plan lowered onto CUDA streams (:mod:`.executor`), the streams,
events and scratch space a communicator keeps on its device (:mod:`.resources`), and
:func:`launch`, one whole call in NCCL's stream semantics."""

from __future__ import annotations

from typing import Any, Callable

from ...ir.program import Buf, Program
from ...memory import DeviceArray
from . import direct
from .executor import DeviceCall
from .oneshot import OneShot
from .oneshot import needed as oneshot_needed
from .resources import DeviceResources


def launch(program: Program, rank: int, nranks: int, inp: Any, out: Any, count: int, itemsize: int, op: Any,
           kernels: Any, res: DeviceResources, connect: Callable[[frozenset], dict], slot_bytes: int,
           caller_stream: int, reduced: list, label: str, layout: dict | None = None,
           single: "direct.SingleCopy | None" = None, graphs: bool = False) -> Any:
    """Enqueue one call: ordered after the work already on ``caller_stream`` and before its later
    work, the host not waiting for the device; the event that ends the call (None under capture).

    ``inp``/``out``: DeviceArrays (a host array stands for memory a rank does not use, e.g. a
    non-root's gather output: device scratch takes its place); ``op``: premul_sum scales the
    input into scratch first, avg divides each of ``reduced`` at the end. ``single``: single copy
    (:mod:`.direct`; given on every rank or on none): how ranks swap where their buffers are.

    Under CUDA graph capture of ``caller_stream`` the call is captured like any stream work (its
    flags reset themselves, see :mod:`.executor`); run the call once before capturing, so that
    connections and scratch space exist (they are made on the host, which capture forbids).

    ``graphs``: a call repeated with the same program, size, op and buffers is captured into a
    CUDA graph at its second run and replayed from then on: one launch instead of a few dozen
    driver calls (the host path of a repeated call; real GPUs only).
    """
    dev = res.device
    user = dev.external_stream(caller_stream)
    key = None
    if graphs and single is None and layout is None and not dev.emulated and not dev.is_capturing(user):
        key = (id(program), rank, count, itemsize, op.name, op.scalar, _where(inp), _where(out))
        graph = res.graph(key, program)
        if graph is None and res.seen(key, program):  # the second run: capture it once
            cap = res.capture_stream()
            dev.begin_capture(cap)
            try:
                _enqueue(program, rank, nranks, inp, out, count, itemsize, op, kernels, res, connect, slot_bytes,
                         cap, reduced, label, layout, None)
            finally:
                graph = dev.end_capture(cap)
            res.keep_graph(key, program, graph)
        if graph is not None:
            if res.last is not None:
                dev.wait_event(user, res.last)
            dev.launch_graph(graph, user)
            return end_call(res, user, [] if res.last is None else [res.last], caller_stream)
    return _enqueue(program, rank, nranks, inp, out, count, itemsize, op, kernels, res, connect, slot_bytes, user,
                    reduced, label, layout, single, caller_stream)


def _where(arr: Any) -> Any:
    return (arr.address, arr.size) if isinstance(arr, DeviceArray) else None


def _enqueue(program: Program, rank: int, nranks: int, inp: Any, out: Any, count: int, itemsize: int, op: Any,
             kernels: Any, res: DeviceResources, connect: Callable[[frozenset], dict], slot_bytes: int, user: Any,
             reduced: list, label: str, layout: dict | None, single: Any, caller_stream: "int | None" = None) -> Any:
    """One call's stream work on ``user`` (see :func:`launch`)."""
    dev = res.device
    arrays: dict[Buf, tuple[int, int]] = {}
    internal: set[Buf] = set()  # buffers of pyxccl's own, not the caller's
    for buf, arr in ((Buf.INPUT, inp), (Buf.OUTPUT, out)):
        if isinstance(arr, DeviceArray):
            arrays[buf] = (arr.address, arr.size)
        else:  # a placeholder the rank never reads back
            arrays[buf] = (res.space(f"unused-{buf.name.lower()}", arr.size * itemsize), arr.size)
            internal.add(buf)
    if op.name == "premul_sum" and isinstance(inp, DeviceArray) and inp.size:
        scaled = res.space("prescaled", inp.size * itemsize)
        kernels.scale(scaled, inp.address, inp.size, op.scalar, user)
        arrays[Buf.INPUT] = (scaled, inp.size)
        internal.add(Buf.INPUT)
    call = DeviceCall(program, rank, arrays, count, itemsize, kernels, res, slot_bytes, label, layout,
                      single_copy=single is not None, windows=single and single.windows,
                      unregistered=bool(single and single.unregistered), internal=frozenset(internal))
    conns = connect(call.needed())
    if single is not None:
        call.exchange(single.swap)
        res.direct_calls += call.send_direct
    capturing = dev.is_capturing(user)  # a CUDA graph: the graph orders its replays, not res.last
    start = res.event()
    dev.record(start, user)
    # the last call ended on this stream (before ``start``) or elsewhere (its end event is waited for)
    after = [start] if res.last is None or capturing or _after_last(res, caller_stream) else [start, res.last]
    ends = call.enqueue(conns, res.streams_for(len(call.plan.tbs)), after)
    for ev in ends:
        dev.wait_event(user, ev)
    if op.name == "avg" and nranks > 1:
        for arr in reduced:
            if isinstance(arr, DeviceArray) and arr.size:
                kernels.divide(arr.address, arr.size, nranks, user)
    if capturing:
        res.give_back(after + ends)
        return None
    done = after + ends
    if res.last is not None and res.last not in after:  # on this stream: nothing waited for it
        done.append(res.last)
    return end_call(res, user, done, caller_stream)


def launch_oneshot(shot: OneShot, rank: int, nranks: int, inp: DeviceArray, out: DeviceArray, count: int,
                   itemsize: int, op: Any, kernels: Any, res: DeviceResources,
                   connect: Callable[[frozenset], dict], caller_stream: int) -> Any:
    """Enqueue a one-shot all-reduce (:mod:`.oneshot`) on ``caller_stream``, after the communicator's
    last call; the event that ends it, or None when the stream is being captured into a CUDA graph
    (nothing enqueued: the call takes the plan's path)."""
    dev = res.device
    user = dev.external_stream(caller_stream)
    if dev.is_capturing(user):
        return None
    conns = connect(oneshot_needed(rank, nranks))
    if res.last is not None and not _after_last(res, caller_stream):
        dev.wait_event(user, res.last)
    shot.enqueue(rank, nranks, inp, out, count, itemsize, op, kernels, res, conns, user)
    return end_call(res, user, [] if res.last is None else [res.last], caller_stream)


def _after_last(res: DeviceResources, caller_stream: "int | None") -> bool:
    """Whether work on ``caller_stream`` is ordered after the last call already: it ended on that
    stream (not the per-thread default stream, handle 2, which is a different stream per thread)."""
    return caller_stream is not None and caller_stream != 2 and res.last_stream == caller_stream


def end_call(res: DeviceResources, user: Any, done: list, caller_stream: "int | None" = None) -> Any:
    """Record the event that ends a call on ``user`` as the communicator's last; the events ``done``
    (waited for already: a wait keeps the state it saw) go back to the pool. ``caller_stream``: the
    handle of ``user`` (a later call on it needs no wait for this one)."""
    last = res.event()
    res.device.record(last, user)
    res.give_back(done)
    res.last = last
    res.last_stream = caller_stream
    return last


__all__ = ["DeviceCall", "DeviceResources", "OneShot", "end_call", "launch", "launch_oneshot"]
