"""Running a communicator's calls: the one place where the communicator calls into the runtime.

A collective arrives checked and laid out (:class:`~pyxccl.comm.checks.Call`) with its
program (:mod:`pyxccl.comm.programs`). :meth:`Engine.collective` numbers it, records
it (:mod:`pyxccl.reliability.flight`), remembers it for repeats
(:mod:`pyxccl.comm.repeat`) and submits it to the call queue (or to ``group()``); there
it runs the mismatch check (``PYXCCL_CHECK``) and then :meth:`Engine.execute`: the
runtime binds the program to this rank, the arrays and the connectors
(``executor.HostCall``), and the runners are driven to completion
(``executor.drive``), by single copy or through the slots as the per-call path choice
decides (:mod:`pyxccl.runtime.host.path_choice`). Every call into ``pyxccl.runtime``
is in this module (point-to-point calls do not use the runtime: :mod:`pyxccl.comm.p2p`).

Device calls are only enqueued (:meth:`Engine.execute_device`): their streams wait on flags
the peers write. When a peer is lost or the communicator is aborted, nothing would ever
write some of them, so the engine releases those waits from the host (NCCL's abort
semantics; the data of the abandoned calls is garbage): at once the waits on the lost peer
(:meth:`Engine.peer_lost`), then, while the device side still has not finished after
:data:`SURVIVOR_GRACE` s (a survivor that raised PeerLostError instead of issuing its part
leaves the others waiting on it), the waits on every peer, again every :data:`RELEASE_TICK` s
(a survivor's stream may still write a flag backwards) until the device side is idle. After
``abort()``, every peer's at once. ``destroy()``/``abort()`` free the device memory only once
the device side is idle (a stream must never poll unmapped memory): when it is not within
:data:`ABORT_DRAIN` s they return, and a thread keeps releasing and frees it once it is.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import log
from ..dtypes import DTYPES, MAX
from ..errors import Aborted, InvalidArgument, PeerLostError, TransportError
from ..ir.program import Buf, Program
from ..reliability import flight
from ..reliability import mismatch
from ..runtime.host import executor
from ..runtime.device.oneshot import OneShot
from ..runtime.host import path_choice
from ..runtime.kernels import device_kernels, kernels, postdivide, prescale
from ..memory import HOST, caller_stream
from . import group as _group
from . import staging
from .call_queue import CallQueue, Work
from .checks import Call, check_timeout
from .connections import TAG_DEVICE_BUFFERS, Connections
from .context import CommContext
from .liveness import Liveness
from .programs import Programs
from .repeat import Repeat, Repeats


#: seconds after a loss before the device waits on surviving peers are released too
SURVIVOR_GRACE = 1.0
#: seconds between two releases while abandoned device work drains
RELEASE_TICK = 0.02
#: seconds closing after a loss or ``abort()`` waits for released device work to drain (then a
#: thread of its own frees the device side once it is idle)
ABORT_DRAIN = 1.0


class Engine:
    """Runs the calls of one communicator (see the module docstring)."""

    def __init__(self, ctx: CommContext, liveness: Liveness, connections: Connections, programs: Programs,
                 doorbell: Any, peer_doorbells: list[str], kinds: list[str], slot_bytes: int,
                 device_connections: "Callable[[Any], Connections] | None" = None):
        """``device_connections(device)``: the connections of device buffers (made at the first call
        on a device; a communicator runs on one device, as NCCL's does)."""
        cfg = ctx.config
        self.ctx, self.rank, self.size = ctx, ctx.rank, ctx.size
        self.liveness, self.connections, self.programs = liveness, connections, programs
        self.queue: CallQueue = ctx.call_queue
        self.flight = ctx.flight
        self.doorbell, self.slot_bytes, self.timeout = doorbell, slot_bytes, ctx.timeout
        self.call_timeout: float | None = None  # the running call's own timeout, if it has one
        self.seq = 0  # calls run (labels)
        self.coll_seq = 0  # collectives issued: the flight recorder's and PYXCCL_CHECK's sequence numbers
        self.repeats = Repeats()  # small blocking calls that repeat: no planning the second time
        self.check_call = mismatch.verify if cfg.check else None
        self.paths = path_choice.for_host(cfg.cma, self.rank, kinds, doorbell, peer_doorbells)
        self.make_device_connections = device_connections
        self.device_side: "tuple[Any, Connections] | None" = None  # (DeviceResources, Connections)
        self.oneshot = OneShot()  # the epoch of the one-shot all-reduces on the device
        self._paths_said: set[tuple[str, str, str]] = set()
        self.windows: Any = None
        """registered buffers (:class:`~pyxccl.transport.cuda_ipc.windows.Windows`, made at the first)"""
        self._release_lock = threading.Lock()  # releasing device waits vs freeing the device side
        self._watch_lock = threading.Lock()
        self._watching = False  # a thread releases abandoned device waits until the device side is idle
        self._watch_gen = 0  # bumped by every request to watch (one that comes as the watch ends restarts it)

    # ------------------------------------------------------------------ collectives
    def collective(self, call: Call, algorithm: "str | Program | None", async_op: bool,
                   timeout: float | None = None, repeat: "tuple | None" = None) -> Any:
        """Check that the communicator is open and the ``timeout``, plan and submit ``call``; ``repeat``: (key, input, output) to remember it by
        (:mod:`pyxccl.comm.repeat`; a blocking call with the communicator's algorithm choice).

        Called by the Communicator's public methods only: the flight recorder finds the
        call site 3 frames up from its own method.
        """
        self.liveness.check_open()
        timeout = check_timeout(timeout)
        program = kern = None  # count 0: nothing moves; still ordered after earlier calls
        if call.device != HOST:
            call.stream = caller_stream(call.result, call.device)  # on the caller's thread: streams are per thread
        if call.count != 0 or call.agree_count:
            kern = self.kernels_for(call)  # checks the device before anything moves
            program = self.programs.get(call, algorithm)
            if not (program.inplace if call.inplace else program.outofplace):
                raise InvalidArgument(f"algorithm={program.name!r} does not support "
                                      f"{'in' if call.inplace else 'out-of'}-place calls")
        seq = self.coll_seq = self.coll_seq + 1
        rec = None if self.flight is None else self.flight.collective(  # call site: 3 frames up
            seq, call, None if program is None else program.name, 3)
        check = self.check_call
        if repeat is not None and repeat[0] is not None and check is None and not _group.active() \
                and call.device == HOST:
            self.repeats.remember(repeat[0], repeat[1], repeat[2], call, program, kern)
        ctx = self.ctx
        work = Work(call.describe()) if async_op and call.device != HOST else None

        def run() -> Any:
            if rec is not None:
                rec.start()
            try:
                if check is not None:  # PYXCCL_CHECK: the ranks compare fingerprints first
                    check(ctx, seq, call)
                if program is not None:
                    if call.agree_count:  # v-collectives where ranks know only their own counts
                        call.count = self.agree_max(call.count)
                    self.execute(call, program, kern, tuned=algorithm is None)
                if work is not None and self.device_side is not None:
                    self.attach_device(work, call)
            except BaseException as exc:
                flight.failed(ctx, rec, exc)
                raise
            if rec is not None:
                rec.done()
            return call.result

        return self.submit(run if timeout is None else self.timed(run, timeout), call.describe(), async_op, work)

    def submit(self, fn: Callable[[], Any], what: str, async_op: bool, work: "Work | None" = None) -> Any:
        """Run ``fn`` on the call queue (blocking: its result), queue it (async: ``work`` or a new Work), or
        record it in ``group()``."""
        if _group.active():
            return _group.record(self.ctx, "call", fn, work or Work(what), not async_op)
        if async_op:
            return self.queue.submit(fn, work or Work(what))
        return self.queue.run(fn, what)

    def record_repeat(self, rep: Repeat) -> Any:
        """Number and record a remembered call run again (the flight record, or None); the call
        site is 4 frames up (the Communicator's public method calls ``_repeat``, which calls this)."""
        seq = self.coll_seq = self.coll_seq + 1
        return None if self.flight is None else self.flight.collective(seq, rep.call, rep.program.name, 4)

    def run_repeat(self, rep: Repeat, rec: Any) -> Any:
        """Run a remembered call again (on the call queue): the first repeat binds the runners, later
        ones reset them."""
        call = rep.call
        if rec is not None:
            rec.start()
        try:
            self.seq += 1
            label = f"{rep.what} #{self.seq} algorithm {rep.program.name}"
            if rep.prun is None:
                rep.prun = executor.HostCall(rep.program, self.rank, {Buf.INPUT: call.input, Buf.OUTPUT: call.output},
                                               call.count, rep.kern, self.slot_bytes, label)
                rep.runners = rep.prun.runners(self.connect(rep.prun.needed(), label))
            else:
                rep.prun.label = label
                rep.prun.reset(rep.runners)
            self.drive_run(rep.prun, rep.runners, call, label)
        except BaseException as exc:
            flight.failed(self.ctx, rec, exc)
            raise
        if rec is not None:
            rec.done()
        return call.result

    def timed(self, fn: Callable[[], Any], timeout: float) -> Callable[[], Any]:
        """``fn`` running with its own ``timeout`` (seconds) for every wait, instead of the communicator's."""
        def run() -> Any:
            self.call_timeout = timeout  # calls run one at a time on the queue
            try:
                return fn()
            finally:
                self.call_timeout = None
        return run

    def connect(self, needed: Any, what: str) -> dict:
        """The connectors ``needed`` by the running call (made the first time)."""
        return self.connections.get(needed, what, self.call_timeout)

    def kernels_for(self, call: Call) -> Any:
        """The kernels of ``call``'s op, dtype and device (a device's are compiled at first use)."""
        if call.device == HOST:
            return kernels(call.op, call.dtype, call.device)
        from ..cuda import get_device
        if self.device_side is not None:
            self.open_device(call.device, call.describe)  # the one device of this communicator
        return device_kernels(call.op, call.dtype, get_device(call.device))

    def execute(self, call: Call, program: Program, kern: Any, tuned: bool = False) -> None:
        """Run ``call`` with ``program`` on this thread (inside the call queue); ``tuned``: the call
        left the choice to pyxccl (no ``algorithm=``), so a device call may take the one-shot path."""
        self.seq += 1
        if call.count == 0:
            return
        if call.device != HOST:
            self.execute_device(call, program, kern, tuned)
            return
        self.execute_host(call, program, kern)

    def execute_host(self, call: Call, program: Program, kern: Any) -> None:
        """Run ``call`` (host arrays) with ``program``: the host executor over the connectors."""
        inp = prescale(call.input, call.op) if call.op.name == "premul_sum" else call.input
        arrays = {Buf.INPUT: inp, Buf.OUTPUT: call.output}
        label = f"{call.describe()} #{self.seq} algorithm {program.name}"
        prun = executor.HostCall(program, self.rank, arrays, call.count, kern, self.slot_bytes, label,
                                   call.layout)
        log.trace("%s", label, rank=self.rank)
        self.drive_run(prun, prun.runners(self.connect(prun.needed(), label)), call, label)

    def execute_device(self, call: Call, program: Program, kern: Any, tuned: bool = False) -> None:
        """Enqueue ``call`` on its device (:func:`pyxccl.runtime.device.launch`): ordered on the
        caller's stream, the host not waiting for the device."""
        from ..runtime import device as devrt
        res, connections = self.open_device(call.device, call.describe)
        if "socket" in connections.kinds:  # peers on other hosts: the whole call through host memory
            self.say_path(call, program.name, "through host memory, piece by piece" if staging.pipelines(call)
                          else "through host memory (peers on other hosts)")
            self.execute_staged(call, program)
            return
        label = f"{call.describe()} #{self.seq} algorithm {program.name} on {call.device}"
        log.trace("%s", label, rank=self.rank)
        live = self.liveness
        live.check_running(label)  # a loss (or abort) since the call was issued: enqueue nothing
        try:
            if tuned and self.oneshot_fits(call, connections.kinds) and devrt.launch_oneshot(
                    self.oneshot, self.rank, self.size, call.input, call.output, call.count, call.dtype.itemsize,
                    call.op, kern, res, lambda needed: connections.get(needed, label, self.call_timeout),
                    call.stream) is not None:
                self.say_path(call, "one-shot", "on the caller's stream")
                return
            single = self.single_copy(call)
            self.say_path(call, program.name, "slots" if single is None else
                          "single copy where the peers' buffers are " + ("open by IPC" if single.unregistered
                                                                         else "registered"))
            devrt.launch(program, self.rank, self.size, call.input, call.output, call.count, call.dtype.itemsize,
                         call.op, kern, res, lambda needed: connections.get(needed, label, self.call_timeout),
                         self.ctx.config.cuda_slot_bytes, call.stream, call.reduced, label, call.layout,
                         single, self.ctx.config.cuda_graphs)
        finally:
            if live.aborted or live.lost:  # it came while enqueueing: the waits enqueued since need releasing
                self.watch_device()

    def say_path(self, call: Call, algorithm: str, how: str) -> None:
        """PYXCCL_DEBUG=INFO: the path a kind of device call takes, said the first time it does."""
        key = (call.collective, algorithm, how)
        if key not in self._paths_said:
            self._paths_said.add(key)
            log.info("device %s of %d B per block: %s, %s", call.collective, call.count * call.dtype.itemsize,
                     algorithm, how, rank=self.rank)

    def open_device(self, name: str, what: "Callable[[], str]") -> "tuple[Any, Connections]":
        """The device side (resources, connections) on device ``name``, made the first time;
        ``what()`` names the call in errors (built only then)."""
        side = self.device_side
        if side is not None and side[0].device.name == name:
            return side
        if self.device_side is None:
            from ..cuda import get_device
            from ..runtime import device as devrt
            if self.make_device_connections is None:
                raise InvalidArgument(f"{what()}: this communicator cannot run on devices")
            dev = get_device(name)
            self.device_side = (devrt.DeviceResources(dev), self.make_device_connections(dev))
            kinds = self.device_side[1].kinds
            log.info("device %s%s: transports per peer: %s (copy engines, stream flags, slots of %d B)", dev.name,
                     " (emulated)" if dev.emulated else "",
                     " ".join(f"{p}:{k}" for p, k in enumerate(kinds) if k != "self") or "none",
                     self.ctx.config.cuda_slot_bytes, rank=self.rank)
        elif self.device_side[0].device.name != name:
            raise InvalidArgument(f"{what()}: the buffers are on {name} but this communicator runs on "
                                  f"{self.device_side[0].device.name} (one device per communicator, as NCCL's)")
        return self.device_side

    def oneshot_fits(self, call: Call, kinds: list[str]) -> bool:
        """Whether ``call`` takes the one-shot all-reduce (:mod:`pyxccl.runtime.device.oneshot`): a small
        all-reduce, every peer on this host, PYXCCL_ALGO silent about all-reduce. The same answer on
        every rank (the epochs count these calls)."""
        cfg = self.ctx.config
        nbytes = call.count * call.dtype.itemsize
        return (call.collective == "allreduce" and self.size > 1 and call.layout is None
                and nbytes <= min(cfg.cuda_oneshot_max_bytes, cfg.cuda_slot_bytes)
                and all(k in ("self", "cuda_ipc") for k in kinds) and not self.programs.forced(call.collective))

    def single_copy(self, call: Call) -> Any:
        """How ``call`` goes by single copy (:class:`~pyxccl.runtime.device.direct.SingleCopy`), or None
        (through the slots). Every rank decides alike: by the call's size per block (the same on
        every rank outside v-collectives) and the registrations (collective)."""
        if call.layout is not None:
            return None
        from ..runtime.device.direct import SingleCopy
        cfg, nbytes = self.ctx.config, call.count * call.dtype.itemsize
        unregistered = bool(cfg.cuda_direct_min_bytes) and nbytes >= cfg.cuda_direct_min_bytes
        windows = self.windows if self.windows is not None and len(self.windows) else None
        if unregistered or (windows is not None and nbytes >= cfg.cuda_registered_min_bytes):
            return SingleCopy(self.swap_buffers, windows, unregistered)
        return None

    def swap(self, tag: int, data: bytes, send_to: list[int], recv_from: list[int]) -> dict[int, bytes]:
        """Send ``data`` to ``send_to`` and get one message from each of ``recv_from`` (bootstrap, ``tag``)."""
        boot, timeout = self.ctx.bootstrap, self.call_timeout or self.timeout
        for peer in send_to:
            boot.send(peer, tag, data)
        return {peer: boot.recv(peer, tag, timeout=timeout, any_loss=True) for peer in recv_from}

    def swap_buffers(self, data: bytes, send_to: list[int], recv_from: list[int]) -> dict[int, bytes]:
        """Single copy on a device: send ``data`` (where this rank's buffers are) to the ranks it sends
        to, and get theirs from the ranks it receives from (over the bootstrap)."""
        return self.swap(TAG_DEVICE_BUFFERS, data, send_to, recv_from)

    def attach_device(self, work: Work, call: Call) -> None:
        """Give an async device call's ``work`` its device end: an event recorded on the caller's stream
        after the call; ``wait()`` makes the waiting thread's current stream wait for it,
        ``synchronize()`` blocks the host on it."""
        dev = self.device_side[0].device  # type: ignore[index]
        ev = dev.event()
        dev.record(ev, dev.external_stream(call.stream))
        weakref.finalize(work, dev.destroy_event, ev)  # the event lives as long as its Work
        owner, device = call.result, call.device
        work.on_device(lambda: dev.wait_event(dev.external_stream(caller_stream(owner, device)), ev),
                       lambda timeout: dev.event_synchronize(ev, timeout))

    def execute_staged(self, call: Call, program: Program) -> None:
        """Run a device call on the host path over host copies of its buffers: an all-reduce, broadcast
        or reduce piece by piece, its copies to and from the host overlapping the wire
        (:mod:`pyxccl.runtime.device.staged`); the other collectives whole
        (:class:`~pyxccl.comm.staging.StagedCall`), the results then copied back."""
        from dataclasses import replace
        if staging.pipelines(call):
            from ..runtime.device.staged import run_pieces
            kern = kernels(call.op, call.dtype)
            reduced = any(getattr(a, "address", None) == getattr(call.output, "address", 0) for a in call.reduced)

            def run_host(hin: Any, hout: Any, a: int, b: int) -> None:
                self.execute_host(replace(call, count=b - a, input=hin, output=hout, device=HOST,
                                          reduced=[hout] if reduced else []), program, kern)

            run_pieces(self.device_side[0], call.stream, call.input, call.output, call.count, call.dtype.np,
                       max(1, self.ctx.config.cuda_slot_bytes // call.dtype.itemsize), run_host,
                       self.call_timeout or self.timeout)
            return
        staged = staging.StagedCall(call.device, call.stream, [call.input, call.output])
        host_call = replace(call, input=staged.host(call.input), output=staged.host(call.output), device=HOST,
                            reduced=[staged.host(a) for a in call.reduced])
        self.execute_host(host_call, program, kernels(call.op, call.dtype))
        staged.write_back()

    def drive_run(self, prun: Any, runners: list, call: Call, label: str) -> None:
        """Run ``runners`` of ``prun`` for ``call`` (by single copy, through the slots or mixed,
        whichever measures faster, where a step may send by descriptor: :mod:`pyxccl.runtime.host.path_choice`),
        then average."""
        if prun.sends_direct and self.paths is not None:
            self.paths.drive(prun, call.count * call.dtype.itemsize, lambda: self.drive(runners, label))
        else:
            self.drive(runners, label)
        if call.op.name == "avg":
            for arr in call.reduced:
                postdivide(arr, self.size)

    def drive(self, runners: list, what: str) -> None:
        """Run ``runners`` to completion (CollectiveTimeout, Aborted, PeerLostError)."""
        live = self.liveness
        try:
            executor.drive(runners, self.doorbell, time.monotonic() + (self.call_timeout or self.timeout), what,
                           self.rank, lambda: live.check_running(what))
        except PeerLostError as exc:
            raise live.lost_error(exc, what) from exc
        except TransportError as exc:  # e.g. reading a peer's memory failed: because the peer died?
            if live.aborted:  # abort() closed what this call was using
                raise Aborted(f"rank {self.rank}: {what} aborted ({exc})") from exc
            err = live.wait_error(what)
            if err is None:
                raise
            raise err from exc
        except Exception as exc:
            if live.aborted and not isinstance(exc, Aborted):  # abort() closed what this call was using
                raise Aborted(f"rank {self.rank}: {what} aborted ({exc})") from exc
            raise

    def agree_max(self, value: int) -> int:
        """The largest ``value`` over all ranks (an allreduce inside the running call)."""
        buf = np.array([value], dtype=np.int64)
        call = Call("allreduce", 1, DTYPES["int64"], buf, buf, True, None, MAX)
        self.execute(call, self.programs.get(call, None), kernels(MAX, call.dtype))
        return int(buf[0])

    # ------------------------------------------------------------------ device faults
    def release_device_waits(self, peers: "Iterable[int] | None" = None) -> None:
        """Let every device wait of this communicator on ``peers`` (None: every peer) pass now: the
        connectors write, from the host, the flags the peers would have written. Any thread."""
        with self._release_lock:
            side = self.device_side
            if side is None:
                return
            for conn in side[1].towards(peers):
                try:
                    conn.release_waits()
                except Exception as exc:  # noqa: BLE001 - the other connectors still get theirs
                    log.warn("releasing the device waits of %r failed: %r", conn, exc, rank=self.rank)

    def peer_lost(self, peer: int) -> None:
        """``peer`` is lost (the communicator's on_loss, any thread): release the device waits on it now
        and watch the device side until it is idle (see the module docstring)."""
        if self.device_side is None:
            return
        self.release_device_waits([peer])
        self.watch_device()

    def watch_device(self) -> None:
        """Release abandoned device waits on a thread of its own until the device side is idle (at most
        the communicator's timeout)."""
        with self._watch_lock:
            self._watch_gen += 1
            if self._watching:
                return
            self._watching = True
        threading.Thread(target=self._watch, name=f"pyxccl-device-release-r{self.rank}", daemon=True).start()

    def _watch(self) -> None:
        while True:
            with self._watch_lock:
                gen = self._watch_gen
            try:
                self._settle(self.timeout)
            except Exception as exc:  # noqa: BLE001 - a watcher thread has nobody to raise to
                log.warn("releasing abandoned device waits failed: %r", exc, rank=self.rank)
            with self._watch_lock:
                if gen == self._watch_gen:
                    self._watching = False
                    return

    def _settle(self, seconds: float) -> bool:
        """Wait (at most ``seconds``) until the device side is idle, releasing abandoned waits every
        tick (the lost peers', every peer's after :data:`SURVIVOR_GRACE` s or after ``abort()``);
        whether it became idle."""
        start = time.monotonic()
        live = self.liveness
        while True:
            side = self.device_side
            if side is None:
                return True
            try:
                if side[0].drain(0):
                    return True
            except Exception:  # noqa: BLE001 - a failed stream waits on nothing any more
                return True
            waited = time.monotonic() - start
            if waited >= seconds:
                return False
            lost = live.lost
            if not lost and not live.aborted:  # nothing abandoned: the work finishes by itself
                time.sleep(RELEASE_TICK)
                continue
            everyone = live.aborted or waited >= SURVIVOR_GRACE
            self.release_device_waits(None if everyone else list(lost))
            time.sleep(RELEASE_TICK)

    # ------------------------------------------------------------------ life
    def close(self) -> None:
        """Forget remembered calls (and their arrays); drain and free the device side (after a loss or
        abort(): its abandoned waits released, at most :data:`ABORT_DRAIN` s, then freed later by a
        thread of its own if it is still busy)."""
        self.repeats.clear()
        side = self.device_side
        if side is None:
            return
        live = self.liveness
        abandoned = live.aborted or bool(live.lost)
        try:
            idle = self._settle(ABORT_DRAIN) if abandoned else side[0].drain(self.timeout)
        except Exception:  # noqa: BLE001 - teardown: a failed stream waits on nothing any more
            idle = True
        res, connections = side
        with self._release_lock:  # no release may write into memory being freed
            self.device_side = None
            if idle and self.windows is not None:
                self.windows.close()
                self.windows = None
            if idle and res.close(0):
                connections.close()
                return
        log.warn("the device did not finish this communicator's last call; its device memory stays mapped "
                 "until it has", rank=self.rank)
        threading.Thread(target=_free_when_idle, args=(res, connections), daemon=True,
                         name=f"pyxccl-device-free-r{self.rank}").start()

    def drain_device(self, timeout: float) -> bool:
        """Wait until this communicator's device work finished (destroy: before the closing barrier,
        so no rank frees memory a peer's copies still target); after a loss, releasing its abandoned
        waits meanwhile."""
        if self.device_side is None:
            return True
        if self.liveness.lost or self.liveness.aborted:
            return self._settle(timeout)
        return self.device_side[0].drain(timeout)


def _free_when_idle(res: Any, connections: Connections) -> None:
    """Free a closed communicator's device side once its device work finished, releasing its waits
    meanwhile (this thread holds it: until then its memory stays mapped, since a stream polls it)."""
    while True:
        try:
            if res.drain(0):
                break
        except Exception:  # noqa: BLE001 - a failed stream waits on nothing any more
            break
        for conn in connections.towards(None):
            try:
                conn.release_waits()
            except Exception:  # noqa: BLE001 - the others still get theirs
                pass
        time.sleep(0.1)
    if res.close(0):
        connections.close()
