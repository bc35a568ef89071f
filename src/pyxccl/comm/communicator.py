"""The Communicator: NCCL's communicator life and every collective's entry point.

Life (NCCL's order): unique id -> bootstrap ring -> peer info allgather (host
identity, pid, doorbell) -> a transport per peer (local, shm, socket) -> connectors
made lazily, the first time a program needs them -> each call: check arguments ->
pick the algorithm -> cached IR program -> the executor, on the communicator's
ordered stream -> ``destroy()`` / ``abort()``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import socket
import threading
import time
import weakref
from typing import AbstractSet, Any

import numpy as np

from .. import algorithms, config, log, topo, tuner
from . import checks as calls
from ..runtime.host import executor
from . import group as _group
from ..reliability import mismatch as _check
from ..reliability import flight
from ..runtime.host import path_choice as paths
from ..bootstrap import Bootstrap, UniqueId
from .checks import Call
from .collectives import Collectives
from .membership import Membership
from ..runtime.host.p2p import P2PRunner
from ..dtypes import DTYPES, MAX
from ..runtime.kernels import kernels, postdivide, prescale
from ..errors import (Aborted, CollectiveTimeout, InvalidArgument, PeerLostError, PyxcclError,
                     TransportError)
from ..reliability.health import Health
from ..ir.program import COLLECTIVES, Buf, Program
from ..ir.relabel import relabel
from ..ir.verify import verify
from ..transport import (PeerInfo, TransportContext, choose, close_doorbell, create, open_doorbell, pid_namespace,
                         sweep_stale)
from .repeat import Repeat, Repeats
from .call_queue import BatchWork, Stream, Work

_TAG_CONNECT = 1 << 20  # bootstrap tags for connector set-up: + channel
_P2P_CHANNEL = 1 << 10  # p2p traffic uses its own channels, after any collective's


def _as_uid(uid: Any) -> UniqueId:
    if isinstance(uid, UniqueId):
        return uid
    if isinstance(uid, (bytes, bytearray)):
        return UniqueId.from_bytes(bytes(uid))
    if isinstance(uid, str):
        return UniqueId.from_string(uid)
    raise InvalidArgument(f"uid: expected a pyxccl UniqueId (or its bytes/string), got {type(uid).__name__}")


class Communicator(Collectives, Membership):
    """A group of ``nranks`` ranks; this object is rank ``rank`` of it.

    Every collective (and send/recv) takes ``async_op=False``; with True it returns a
    :class:`Work`. Calls on one communicator complete in issue order. ``timeout`` (seconds;
    default PYXCCL_TIMEOUT) bounds every wait of this communicator, and a call's own
    ``timeout=`` keyword bounds the waits of that call (calls inside ``group()`` use the
    communicator's); a wait that passes it raises CollectiveTimeout naming the call, the
    step and channel, and the peer. A lost peer makes every call raise PeerLostError
    (see :mod:`pyxccl.reliability.health`); :meth:`shrink` goes on with the survivors.
    """

    def __init__(self, nranks: int, uid: Any, rank: int, *, timeout: float | None = None):
        if isinstance(nranks, bool) or not isinstance(nranks, int) or nranks < 1:
            raise InvalidArgument(f"nranks={nranks!r} must be a positive int")
        calls.check_rank(rank, nranks, "rank")
        uid = _as_uid(uid)
        self._secret = uid.secret
        cfg = config.get()
        self._cfg = cfg
        self._timeout = float(timeout) if timeout is not None else cfg.timeout
        self._call_timeout: float | None = None  # the running call's own timeout, if it has one
        self._rank, self._size = rank, nranks
        self._aborted = False
        self._closed = False
        self._lock = threading.Lock()
        self._tag = hashlib.sha256(uid.to_bytes()).hexdigest()[:16]
        self._splits = 0
        self._shrinks = 0
        self._health: Health | None = None
        self._bootstrap = Bootstrap(uid, rank, nranks, timeout=self._timeout)
        try:
            self._setup(uid)
        except BaseException:
            self._bootstrap.close()
            if self._health is not None:
                self._health.stop()
            raise
        _LIVE.add(self)

    def _setup(self, uid: UniqueId) -> None:
        cfg = self._cfg
        self._doorbell, bell_path = open_doorbell(self._tag, self._rank, cfg.spin_us)
        self._bell_path = bell_path
        system = topo.local_system(cfg, dump=self._rank == 0, rank=self._rank)
        me = {"rank": self._rank, "host": topo.host_hash(cfg), "pid": os.getpid(), "doorbell": bell_path,
              "hostname": socket.gethostname(), "slot_bytes": cfg.slot_bytes, "nslots": cfg.nslots,
              "topo": topo.summarize(system), "pidns": pid_namespace()}
        infos = [json.loads(b) for b in self._bootstrap.allgather(json.dumps(me).encode())]
        self._topo = system
        self._layout = topo.host_layout([i["host"] for i in infos])
        self._hosts = tuple(tuple(h) for h in self._layout.hosts)
        # the slot geometry must agree on every rank: rank 0's settings win
        self._slot_bytes, self._nslots = int(infos[0]["slot_bytes"]), int(infos[0]["nslots"])
        self._peers = [PeerInfo(i["rank"], i["host"], i["pid"], i["doorbell"], i["hostname"]) for i in infos]
        mine = self._peers[self._rank]
        self._kind = [choose(mine, p, cfg.transport) if p.rank != self._rank else "self" for p in self._peers]
        watch = {p.rank: p.pid for p, i in zip(self._peers, infos)  # same host and pid namespace: pidfds
                 if p.rank != self._rank and p.host == mine.host and i.get("pidns") == infos[self._rank]["pidns"]}
        self._loss_bell = self._doorbell.handle(0)
        self._health = Health(self._rank, self._peers, watch, self._on_loss, self._bootstrap.notify_lost)
        self._bootstrap.on_lost = lambda peer, why, seen_by: self._health.report(  # type: ignore[union-attr]
            peer, why, seen_by=seen_by, notify=seen_by == self._rank)
        address = self._bootstrap.peer_addresses()[self._rank][0]
        self._ctx = TransportContext(self._rank, self._size, self._tag, self._peers, self._doorbell,
                                     self._slot_bytes, self._nslots, self._timeout, address, uid.secret, cfg)
        self._transports: dict[str, Any] = {}
        self._conns: dict[executor.ConnKey, Any] = {}
        self._stream = Stream(f"pyxccl-comm{self._tag[:6]}-r{self._rank}")
        self._seq = 0
        self._verified: dict[int, Program] = {}
        self._programs: dict[tuple, Program] = {}  # (collective, algorithm, nbytes, root) -> program
        self._repeats = Repeats()  # small blocking calls that repeat: no planning the second time
        self._coll_seq = 0  # collectives issued: the flight recorder's and PYXCCL_CHECK's sequence numbers
        self._flight = flight.FlightRecorder(cfg.trace_size) if cfg.trace_size else None
        self._check_call = _check.verify if cfg.check else None
        self._paths = paths.for_host(cfg.cma, self._rank, self._kind, self._doorbell, [p.doorbell for p in self._peers])
        flight.register(self)  # for SIGUSR1 dumps (PYXCCL_TRACE_DIR)
        if self._rank == 0:
            log.info("init: %d ranks on %d host(s) %s, slot %d B x %d, channels %d, timeout %.0f s",
                     self._size, self._layout.nhosts, self._layout.hosts, self._slot_bytes, self._nslots,
                     cfg.nchannels, self._timeout, rank=0)
            if cfg.graph_dump_file and system.gpus:
                topo.dump_graphs(topo.search(system, inter_host=self._layout.nhosts > 1), system, cfg.graph_dump_file)
        log.info("init: host %d (%s) pid %d; transports per peer: %s", self._layout.host_of[self._rank],
                 mine.hostname, mine.pid, " ".join(f"{p}:{k}" for p, k in enumerate(self._kind) if k != "self"),
                 rank=self._rank)

    # ------------------------------------------------------------------ properties
    @property
    def rank(self) -> int:
        """This rank's index, 0 .. size-1."""
        return self._rank

    @property
    def size(self) -> int:
        """Number of ranks."""
        return self._size

    @property
    def hosts(self) -> list[list[int]]:
        """The ranks of each host (hosts in order of their lowest rank), from the host identities."""
        return [list(h) for h in self._layout.hosts]

    def transport_of(self, peer: int) -> str:
        """The transport used towards ``peer`` ("local", "shm", "socket"; "self" for this rank)."""
        return self._kind[calls.check_rank(peer, self._size, "peer")]

    def pending_ops(self) -> list[dict[str, Any]]:
        """The flight recorder's records of this communicator's last operations, oldest first.

        Every kept record (the last ``PYXCCL_TRACE_SIZE``, default 1000; finished ones
        included, not only those still pending), as a dict: ``seq`` (collectives are
        numbered 1, 2, ... and must match across ranks; sends/recvs have their own
        numbers), ``kind`` ("collective" or "p2p"), ``op`` ("allreduce", "gatherv", "send",
        "recv", ...), ``dtype``, ``count`` (elements; per rank or block as the call
        counts them), ``root``, ``peers`` ("all" or ``[peer]``), ``algorithm``,
        ``reduce_op``, ``state`` ("queued", "running", "done" or "failed: <Type>: message"),
        ``enqueued``/``started``/``ended`` (``time.time()``), ``duration`` (s) and
        ``call_site`` ("file:line in function", the first frame outside pyxccl).
        Empty when ``PYXCCL_TRACE_SIZE=0``. See :mod:`pyxccl.reliability.flight`.
        """
        return self._flight.records() if self._flight is not None else []

    def __repr__(self) -> str:
        return f"<pyxccl.Communicator rank {self._rank}/{self._size}>"

    # ------------------------------------------------------------------ connections
    def _transport(self, peer: int):
        kind = self._kind[peer]
        t = self._transports.get(kind)
        if t is None:
            t = self._transports[kind] = create(kind, self._ctx)
        return t

    def _on_loss(self, peer: int, why: str) -> None:
        """A peer was found lost (any thread): fail bootstrap waits on it and wake the executor."""
        self._bootstrap.mark_lost(peer, why)
        self._loss_bell.ring()

    def _lost(self, exc: PeerLostError, what: str) -> PeerLostError:
        """The error a call fails with after a transport or the bootstrap saw a peer go (others are told)."""
        if exc.rank is not None:
            self._health.report(exc.rank, str(exc))  # type: ignore[union-attr]
        return self._health.error(what) or exc  # type: ignore[union-attr]

    def _connect(self, needed: AbstractSet[executor.ConnKey], what: str = "connecting") -> dict[executor.ConnKey, Any]:
        """The connectors ``needed`` (made the first time they are needed)."""
        conns = self._conns
        if all(k in conns for k in needed):
            return conns
        try:
            return self._connect_missing(needed)
        except PeerLostError as exc:
            raise self._lost(exc, what) from exc
        except (TransportError, CollectiveTimeout) as exc:  # e.g. a peer's listener went away with the peer
            err = self._health.wait_error(what)  # type: ignore[union-attr]
            if err is not None:
                raise err from exc
            if isinstance(exc, CollectiveTimeout):  # name the call, not only the message it waited for
                raise CollectiveTimeout(f"rank {self._rank}: {what} timed out before its first step, while "
                                        f"connecting: {exc}") from None
            raise

    def _connect_missing(self, needed: AbstractSet[executor.ConnKey]) -> dict[executor.ConnKey, Any]:
        conns = self._conns
        missing = sorted(k for k in needed if k not in conns)
        for peer, ch, direction in missing:
            if direction == "recv":
                conn, info = self._transport(peer).setup_recv(peer, ch)
                self._conns[(peer, ch, "recv")] = conn
                self._bootstrap.send(peer, _TAG_CONNECT + ch, info)
        for peer, ch, direction in missing:
            if direction == "send":
                try:
                    info = self._bootstrap.recv(peer, _TAG_CONNECT + ch, timeout=self._call_timeout or self._timeout,
                                                any_loss=True)
                except CollectiveTimeout:
                    raise CollectiveTimeout(f"channel {ch}: waited for rank {peer}'s connect info (has rank "
                                            f"{peer} issued this call?)") from None
                self._conns[(peer, ch, "send")] = self._transport(peer).connect_send(peer, ch, info)
        return self._conns

    # ------------------------------------------------------------------ running
    def _check_open(self) -> None:
        """Fail a new call now: the communicator was aborted, destroyed, or lost a rank."""
        if self._aborted:
            raise Aborted(f"rank {self._rank}: the communicator was aborted")
        if self._closed:
            raise InvalidArgument("the communicator was destroyed; create a new one")
        if self._health.lost:  # type: ignore[union-attr]
            self._health.check("the communicator lost a rank; comm.shrink(exclude=[lost ranks]) builds "  # type: ignore[union-attr]
                               "one from the survivors")

    def _check_running(self, what: str) -> None:
        """Raised inside a running call's waits: Aborted after abort(), PeerLostError after a loss."""
        if self._aborted:
            raise Aborted(f"rank {self._rank}: {what} aborted")
        if self._health.lost:  # type: ignore[union-attr]
            self._health.check(what)  # type: ignore[union-attr]

    def _submit(self, fn, what: str, async_op: bool, kind: str = "call", payload: Any = None) -> Any:
        if _group.active():
            return _group.record(self, kind, payload if payload is not None else fn, Work(what), not async_op)
        if async_op:
            return self._stream.submit(fn, Work(what))
        return self._stream.run(fn, what)

    def _drive(self, runners: list, what: str) -> None:
        """Run ``runners`` to completion (CollectiveTimeout, Aborted, PeerLostError)."""
        try:
            executor.drive(runners, self._doorbell, time.monotonic() + (self._call_timeout or self._timeout), what, self._rank,
                           lambda: self._check_running(what))
        except PeerLostError as exc:
            raise self._lost(exc, what) from exc
        except TransportError as exc:  # e.g. reading a peer's memory failed: because the peer died?
            if self._aborted:  # abort() closed what this call was using
                raise Aborted(f"rank {self._rank}: {what} aborted ({exc})") from exc
            err = self._health.wait_error(what)  # type: ignore[union-attr]
            if err is None:
                raise
            raise err from exc
        except Exception as exc:
            if self._aborted and not isinstance(exc, Aborted):  # abort() closed what this call was using
                raise Aborted(f"rank {self._rank}: {what} aborted ({exc})") from exc
            raise

    def _collective(self, call: Call, algorithm: "str | Program | None", async_op: bool,
                    timeout: float | None = None, repeat: "tuple | None" = None) -> Any:
        """Check, plan and submit ``call``; ``repeat``: (key, input, output) to remember it by
        (:mod:`pyxccl.comm.repeat`; a blocking call with the communicator's algorithm choice)."""
        self._check_open()
        timeout = calls.check_timeout(timeout)
        program = kern = None  # count 0: nothing moves; still ordered after earlier calls
        if call.count != 0 or call.agree_count:
            kern = kernels(call.op, call.dtype, call.device)  # checks the device before anything moves
            program = self._program(call, algorithm)
            if not (program.inplace if call.inplace else program.outofplace):
                raise InvalidArgument(f"algorithm={program.name!r} does not support "
                                      f"{'in' if call.inplace else 'out-of'}-place calls")
        seq = self._coll_seq = self._coll_seq + 1
        rec = None if self._flight is None else self._flight.collective(  # call site: 3 frames up
            seq, call, None if program is None else program.name, 3)
        check = self._check_call
        if repeat is not None and repeat[0] is not None and check is None and not _group.active():
            self._repeats.remember(repeat[0], repeat[1], repeat[2], call, program, kern)

        def run() -> Any:
            if rec is not None:
                rec.start()
            try:
                if check is not None:  # PYXCCL_CHECK: the ranks compare fingerprints first
                    check(self, seq, call)
                if program is not None:
                    if call.agree_count:  # v-collectives where ranks know only their own counts
                        call.count = self._agree_max(call.count)
                    self._execute(call, program, kern)
            except BaseException as exc:
                flight.failed(self, rec, exc)
                raise
            if rec is not None:
                rec.done()
            return call.result

        return self._submit(run if timeout is None else self._timed(run, timeout), call.describe(), async_op)

    def _repeat(self, rep: Repeat) -> Any:
        """Run a remembered call again (same arrays, op, root): no checks or planning to redo."""
        self._check_open()
        seq = self._coll_seq = self._coll_seq + 1
        rec = None if self._flight is None else self._flight.collective(seq, rep.call, rep.program.name, 3)
        return self._stream.run(lambda: self._run_repeat(rep, rec), rep.what)

    def _run_repeat(self, rep: Repeat, rec: Any) -> Any:
        call = rep.call
        if rec is not None:
            rec.start()
        try:
            self._seq += 1
            label = f"{rep.what} #{self._seq} algorithm {rep.program.name}"
            if rep.prun is None:  # the first repeat binds the runners, later ones reset them
                rep.prun = executor.ProgramRun(rep.program, self._rank, {Buf.INPUT: call.input, Buf.OUTPUT: call.output},
                                               call.count, rep.kern, self._slot_bytes, label)
                rep.runners = rep.prun.runners(self._connect(rep.prun.needed(), label))
            else:
                rep.prun.label = label
                rep.prun.reset(rep.runners)
            self._drive_run(rep.prun, rep.runners, call, label)
        except BaseException as exc:
            flight.failed(self, rec, exc)
            raise
        if rec is not None:
            rec.done()
        return call.result

    def _timed(self, fn, timeout: float):
        """``fn`` running with its own ``timeout`` (seconds) for every wait, instead of the communicator's."""
        def run() -> Any:
            self._call_timeout = timeout  # calls run one at a time on the stream
            try:
                return fn()
            finally:
                self._call_timeout = None
        return run

    def _execute(self, call: Call, program: Program, kern) -> None:
        """Run ``call`` with ``program`` on this thread (inside the stream)."""
        self._seq += 1
        if call.count == 0:
            return
        inp = prescale(call.input, call.op) if call.op.name == "premul_sum" else call.input
        arrays = {Buf.INPUT: inp, Buf.OUTPUT: call.output}
        label = f"{call.describe()} #{self._seq} algorithm {program.name}"
        prun = executor.ProgramRun(program, self._rank, arrays, call.count, kern, self._slot_bytes, label,
                                   call.layout)
        log.trace("%s", label, rank=self._rank)
        self._drive_run(prun, prun.runners(self._connect(prun.needed(), label)), call, label)

    def _drive_run(self, prun: executor.ProgramRun, runners: list, call: Call, label: str) -> None:
        """Run ``runners`` of ``prun`` for ``call`` (by single copy, through the slots or mixed,
        whichever measures faster, where a step may send by descriptor: :mod:`pyxccl.runtime.host.path_choice`), then average."""
        if prun.sends_direct and self._paths is not None:
            self._paths.drive(prun, call.count * call.dtype.itemsize, lambda: self._drive(runners, label))
        else:
            self._drive(runners, label)
        if call.op.name == "avg":
            for arr in call.reduced:
                postdivide(arr, self._size)

    def _agree_max(self, value: int) -> int:
        """The largest ``value`` over all ranks (an allreduce inside the running call)."""
        buf = np.array([value], dtype=np.int64)
        call = Call("allreduce", 1, DTYPES["int64"], buf, buf, True, None, MAX)
        self._execute(call, self._program(call, None), kernels(MAX, call.dtype))
        return int(buf[0])

    def _program(self, call: Call, algorithm: "str | Program | None") -> Program:
        """The IR program for ``call``: a registered algorithm (by name or the default) or the user's own."""
        root = call.root if call.root is not None else 0
        if isinstance(algorithm, Program):
            return self._own_program(call, algorithm, root)
        nbytes = call.count * call.dtype.itemsize * (self._size if COLLECTIVES[call.collective] else 1)
        key = (call.collective, algorithm, nbytes, root)
        program = self._programs.get(key)
        if program is not None:
            return program
        hosts = self._hosts
        if not algorithm:
            algorithm = tuner.select(call.collective, self._size, nbytes, hosts, self._cfg.algo)
        algo = algorithms.get(call.collective, algorithm)
        why = algo.unsupported(self._size, hosts)
        if why is not None:
            raise InvalidArgument(f"algorithm={algo.name!r}: {why}")
        if self._nslots < algo.min_slots:
            raise InvalidArgument(f"algorithm={algo.name!r} needs {algo.min_slots} slots per connection; "
                                  f"PYXCCL_NSLOTS is {self._nslots}")
        order = self._layout.ring
        if algo.host_aware or order == list(range(self._size)):
            program = algorithms.program(call.collective, algo.name, self._size, self._cfg.nchannels, root, hosts)
        else:  # a flat algorithm on interleaved hosts: build it for ring positions, then relabel
            pos = order.index(root)
            flat = algorithms.program(call.collective, algo.name, self._size, self._cfg.nchannels, pos, hosts)
            program = relabel(flat, order) or algorithms.program(
                call.collective, algo.name, self._size, self._cfg.nchannels, root, hosts)
            if program is not flat and program.name.endswith("_relabeled"):
                for inplace in (True, False):
                    if program.inplace if inplace else program.outofplace:
                        verify(program, inplace=inplace, nslots=self._nslots)
        if len(self._programs) > 1024:
            self._programs.clear()
        self._programs[key] = program
        return program

    def _own_program(self, call: Call, program: Program, root: int) -> Program:
        """Check a user's program (e.g. loaded from MSCCL XML) against the call; verify it once."""
        if program.collective != call.collective or program.nranks != self._size:
            raise InvalidArgument(f"algorithm: program {program.name!r} implements {program.collective} for "
                                  f"{program.nranks} ranks; this call is {call.collective} on {self._size}")
        if call.root is not None and (program.root or 0) != root:
            raise InvalidArgument(f"root={root}: program {program.name!r} was built for root {program.root or 0}")
        if id(program) not in self._verified:
            for inplace in (True, False):
                if program.inplace if inplace else program.outofplace:
                    verify(program, inplace=inplace, nslots=self._nslots)
            self._verified[id(program)] = program
        return program

    # ------------------------------------------------------------------ point to point
    def send(self, buf: Any, peer: int, *, async_op: bool = False, timeout: float | None = None) -> Any:
        """Send ``buf`` to ``peer``; matched in order with ``peer``'s recv from this rank."""
        self._check_open()
        b = calls.plan_p2p(buf, peer, self._size, "buf", writable=False)
        return self._p2p(("send", int(peer), b.array, None), f"send({b.count} x {b.dtype} to {peer})", async_op,
                         calls.check_timeout(timeout))

    def recv(self, buf: Any, peer: int, *, async_op: bool = False, timeout: float | None = None) -> Any:
        """Receive into ``buf`` from ``peer``; its size must equal the matching send's."""
        self._check_open()
        b = calls.plan_p2p(buf, peer, self._size, "buf", writable=True)
        return self._p2p(("recv", int(peer), b.array, b.owner), f"recv({b.count} x {b.dtype} from {peer})", async_op,
                         calls.check_timeout(timeout))

    def _p2p(self, op: tuple, what: str, async_op: bool, timeout: float | None = None) -> Any:
        if self._flight is not None:  # (kind, peer, array, result) + its flight record
            op = (*op, self._flight.p2p(op[0], op[1], op[2], 3))  # call site: 3 frames up
        if _group.active():  # a group's calls run together, under the communicator's timeout
            return _group.record(self, "p2p", op, Work(what), not async_op)
        work = Work(what)
        self._launch_p2p([op], [work], inline=not async_op, timeout=timeout)
        return work if async_op else work.result()

    def _launch_p2p(self, ops: list[tuple], works: list[Work], inline: bool = False,
                    timeout: float | None = None) -> None:
        """Run a batch of send/recv ops concurrently on the stream; each op's Work completes with the batch."""
        batch = BatchWork(f"p2p batch of {len(ops)}", works, [op[3] if op[0] == "recv" else None for op in ops])

        recs = [op[4] for op in ops if len(op) > 4]

        def run() -> None:
            self._seq += 1
            for rec in recs:
                rec.start()
            try:
                self._run_p2p(ops, f"p2p batch #{self._seq} ({len(ops)} ops)")
            except BaseException as exc:
                flight.failed(self, recs, exc)
                raise
            for rec in recs:
                rec.done()

        if timeout is not None:
            run = self._timed(run, timeout)
        if inline:
            try:
                self._stream.run(run, batch.what)
            except BaseException as exc:
                batch._finish(exc=exc)
                return
            batch._finish()
        else:
            self._stream.submit(run, batch)

    def _run_p2p(self, ops: list[tuple], what: str) -> None:
        self_sends = [o for o in ops if o[1] == self._rank and o[0] == "send"]
        self_recvs = [o for o in ops if o[1] == self._rank and o[0] == "recv"]
        if len(self_sends) != len(self_recvs):
            raise InvalidArgument(f"{len(self_sends)} send(s) to self but {len(self_recvs)} recv(s) from self in one batch")
        for s, r in zip(self_sends, self_recvs):
            if s[2].nbytes != r[2].nbytes:
                raise InvalidArgument(f"buf: send to self has {s[2].nbytes} bytes, the recv from self {r[2].nbytes}")
            r[2].reshape(-1).view(np.uint8)[:] = s[2].reshape(-1).view(np.uint8)
        lanes: dict[tuple[int, str], list[np.ndarray]] = {}
        for op in ops:
            kind, peer, arr = op[0], op[1], op[2]
            if peer != self._rank:
                lanes.setdefault((peer, kind), []).append(arr)
        needed = {(peer, _P2P_CHANNEL, kind) for peer, kind in lanes}
        conns = self._connect(needed, what)
        runners = [P2PRunner(conns[(peer, _P2P_CHANNEL, kind)], kind == "send", arrs, self._slot_bytes,
                                      self._rank, what) for (peer, kind), arrs in lanes.items()]
        self._drive(runners, what)

    # ------------------------------------------------------------------ life
    def abort(self) -> None:
        """Stop now, locally: fail pending work with Aborted and release resources. Idempotent."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
        self._health.stop()  # type: ignore[union-attr]
        self._stream.close(Aborted(f"rank {self._rank}: the communicator was aborted"), timeout=1.0)
        self._release()

    def destroy(self) -> None:
        """Finish queued work, then tear down collectively (falls back to abort after the timeout).

        On a communicator that lost a peer the teardown is local (there is nobody to agree with).
        """
        with self._lock:
            if self._closed or self._aborted:
                return
            self._closed = True
        deadline = time.monotonic() + self._timeout
        if not self._stream.drain(deadline):
            log.warn("destroy: queued work did not finish in time; aborting", rank=self._rank)
            self._aborted = True
        self._stream.close()
        lost = dict(self._health.lost)  # type: ignore[union-attr]
        self._health.stop()  # type: ignore[union-attr] # from here on, peers leaving is expected
        if lost:
            log.info("destroy: rank(s) %s are lost; releasing locally", sorted(lost), rank=self._rank)
        elif not self._aborted:
            try:  # every rank is done, so every byte in flight was delivered: safe to close
                self._bootstrap.barrier()
            except PyxcclError as exc:
                log.warn("destroy: the closing barrier failed (%s); releasing anyway", exc, rank=self._rank)
        self._release()

    def _release(self) -> None:
        for conn in list(self._conns.values()):
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
        self._conns.clear()
        for t in list(self._transports.values()):
            try:
                t.close()
            except Exception:  # noqa: BLE001
                pass
        self._transports.clear()
        self._repeats.clear()
        close_doorbell(self._bell_path)
        self._bootstrap.close()
        if self._health.lost:  # type: ignore[union-attr] # a crashed peer's files, once its process is gone
            self._health.wait_exited(1.0)  # type: ignore[union-attr]
            sweep_stale(min_age=0.0)
        _LIVE.discard(self)

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


#: communicators not yet destroyed or aborted: released at interpreter exit
_LIVE: "weakref.WeakSet[Communicator]" = weakref.WeakSet()


@atexit.register
def _release_at_exit() -> None:
    """A process that exits without destroy() still removes its shared files and sockets."""
    for comm in list(_LIVE):
        try:
            comm.abort()
        except Exception as exc:  # noqa: BLE001 - exiting anyway
            log.warn("exit: releasing %r failed: %r", comm, exc, rank=comm.rank)
