"""The Communicator: NCCL's communicator life and every call's entry point.

Life (NCCL's order): unique id -> bootstrap ring -> peer info allgather (host identity,
pid, doorbell: :mod:`pyxccl.comm.connections`) -> a transport per peer (local, shm,
socket) -> connectors made lazily, the first time a call needs them -> each call: check
and lay out the arguments (:mod:`pyxccl.comm.checks`) -> the program
(:mod:`pyxccl.comm.programs`) -> the runtime, on the communicator's ordered call queue
(:mod:`pyxccl.comm.engine`); sends and receives beside it (:mod:`pyxccl.comm.p2p`) ->
``destroy()`` / ``abort()``.

Each public method only checks its arguments and hands over; the parts around the
communicator see it through its read-only :attr:`Communicator.context`.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import time
import weakref
from typing import Any

import numpy as np

from .. import config, log, topo
from ..bootstrap import Bootstrap, UniqueId
from ..dtypes import DTYPES, MAX
from ..bootstrap.patience import Patience
from ..errors import Aborted, CollectiveTimeout, InvalidArgument, PeerLostError, PyxcclError, TransportError
from ..ir.program import Program
from ..memory import as_buffer
from ..reliability import flight
from ..reliability.health import Health
from ..transport import TransportContext, close_doorbell, create_device, open_doorbell, sweep_stale
from . import checks
from . import membership
from . import registration
from . import repeat as repeats
from . import staging
from .call_queue import CallQueue, Work
from .checks import Call
from .connections import TAG_DEVICE_CONNECT, Connections, meet_peers
from .context import CommContext
from .engine import Engine
from .liveness import Liveness
from .p2p import P2P, check_tag
from .programs import Programs


#: seconds destroy()'s closing handshake waits for the other ranks (at most the communicator's timeout)
DESTROY_SECONDS = 10.0


def _as_uid(uid: Any) -> UniqueId:
    if isinstance(uid, UniqueId):
        return uid
    if isinstance(uid, (bytes, bytearray)):
        return UniqueId.from_bytes(bytes(uid))
    if isinstance(uid, str):
        return UniqueId.from_string(uid)
    raise InvalidArgument(f"uid: expected a pyxccl UniqueId (or its bytes/string), got {type(uid).__name__}")


class Communicator:
    """A group of ``nranks`` ranks; this object is rank ``rank`` of it.

    Every collective (and send/recv) takes ``async_op=False``; with True it returns a
    :class:`Work`. Collectives on one communicator complete in issue order; sends and
    receives progress on their own, matched per (peer, tag) in the order they were posted
    (MPI's rules: see :meth:`send`). ``timeout`` (seconds;
    default PYXCCL_TIMEOUT) bounds every wait of this communicator, and a call's own
    ``timeout=`` keyword bounds the waits of that call (calls inside ``group()`` use the
    communicator's); a wait that passes it raises CollectiveTimeout naming the call, the
    step and channel, and the peer. A lost peer makes every call raise PeerLostError
    (see :mod:`pyxccl.reliability.health`); :meth:`shrink` goes on with the survivors.
    """

    def __init__(self, nranks: int, uid: Any, rank: int, *, timeout: float | None = None):
        if isinstance(nranks, bool) or not isinstance(nranks, int) or nranks < 1:
            raise InvalidArgument(f"nranks={nranks!r} must be a positive int")
        checks.check_rank(rank, nranks, "rank")
        uid = _as_uid(uid)
        self._secret = uid.secret
        cfg = config.get()
        self._timeout = float(timeout) if timeout is not None else cfg.timeout
        self._rank, self._size = rank, nranks
        self._tag = hashlib.sha256(uid.to_bytes()).hexdigest()[:16]
        self._splits = 0
        self._shrinks = 0
        self._live = Liveness(rank)
        self._bell_path = ""
        self._bootstrap = Bootstrap(uid, rank, nranks, timeout=self._timeout)
        try:
            with Patience(self._waiting, rank=rank, name="pyxccl-init-patience"):
                self._setup(uid, cfg)
        except BaseException as exc:
            err = self._init_error(exc)
            self._bootstrap.close()
            if self._live.health is not None:
                self._live.health.stop()
            if self._bell_path:
                close_doorbell(self._bell_path)
            if err is not None and err is not exc:
                raise err from exc
            raise
        _LIVE.add(self)

    def _waiting(self, elapsed: float) -> str:
        """The WARN line of an init that lasts after the bootstrap is up (:mod:`pyxccl.bootstrap.patience`)."""
        return (f"rank {self._rank}: init after {elapsed:.0f} s (bootstrap up, every rank joined) still waiting "
                f"for the other ranks to exchange their peer info and finish their set-up (a rank stopped or "
                f"busy before init?)")

    def _init_error(self, exc: BaseException) -> PyxcclError | None:
        """The error an init that failed on ``exc`` raises instead: a raw OSError (a peer's file gone
        because its process left) becomes the PeerLostError naming it, or a TransportError."""
        if isinstance(exc, PeerLostError):
            return self._live.lost_error(exc, "init")
        if not isinstance(exc, OSError) or isinstance(exc, PyxcclError):
            return None
        lost = self._live.wait_error("init")
        return lost or TransportError(f"rank {self._rank}: init failed: {exc}")

    def _setup(self, uid: UniqueId, cfg: config.Config) -> None:
        rank, size, boot = self._rank, self._size, self._bootstrap
        self._doorbell, self._bell_path = open_doorbell(self._tag, rank, cfg.spin_us)
        peers = meet_peers(boot, rank, cfg, self._bell_path)
        self._kinds = peers.kinds
        self._layout = peers.layout
        infos = peers.infos
        loss_bell = self._doorbell.handle(0)

        def on_loss(peer: int, why: str) -> None:  # any thread: fail bootstrap waits, wake the executor
            boot.mark_lost(peer, why)
            loss_bell.ring()
            engine = getattr(self, "_engine", None)  # release the device waits on the peer (no engine
            if engine is not None:                   # yet while the communicator is being set up)
                engine.peer_lost(peer)

        health = self._live.health = Health(rank, infos, peers.watch, on_loss, boot.notify_lost)
        boot.on_lost = lambda peer, why, seen_by: health.report(peer, why, seen_by=seen_by, notify=seen_by == rank)
        address = boot.peer_addresses()[rank][0]
        tctx = TransportContext(rank, size, self._tag, infos, self._doorbell, peers.slot_bytes, peers.nslots,
                                self._timeout, address, uid.secret, cfg)
        self._connections = Connections(rank, peers.kinds, tctx, boot, self._live, self._timeout)
        self._conns, self._transports = self._connections.conns, self._connections.transports  # (tests look)
        self._queue = CallQueue(f"pyxccl-comm{self._tag[:6]}-r{rank}")
        recorder = flight.FlightRecorder(cfg.trace_size) if cfg.trace_size else None
        self._context = CommContext(rank=rank, size=size, tag=self._tag, config=cfg, timeout=self._timeout,
                                    hosts=peers.hosts, bootstrap=boot, call_queue=self._queue, flight=recorder,
                                    liveness=self._live, launch_p2p=lambda ops, works: p2p.launch(ops, works))
        p2p = self._p2p = P2P(self._context, self._live, self._connections, self._doorbell, peers.slot_bytes)
        programs = Programs(size, peers.hosts, self._layout.ring, peers.nslots, cfg)
        def device_connections(device: Any) -> Connections:  # the first call on a device makes them
            kinds = [k if k in ("self", "socket") else "cuda_ipc" for k in peers.kinds]
            return Connections(rank, kinds, tctx, boot, self._live, self._timeout, tag=TAG_DEVICE_CONNECT,
                               make_transport=lambda kind: create_device(kind, tctx, device, cfg.cuda_slot_bytes,
                                                                         peers.nslots))

        engine = self._engine = Engine(self._context, self._live, self._connections, programs, self._doorbell,
                                       [p.doorbell for p in infos], peers.kinds, peers.slot_bytes, device_connections)
        self._repeats, self._paths = engine.repeats, engine.paths  # (tests look)
        flight.register(self._context)  # for SIGUSR1 dumps (PYXCCL_TRACE_DIR)
        # the last step: no rank returns before every rank opened what it needs of the others (their
        # doorbells and boards), so a rank that exits right after init() is a lost peer, never a missing file
        try:
            boot.barrier()
        except CollectiveTimeout as exc:
            raise CollectiveTimeout(f"rank {rank}: init timed out in its closing barrier, waiting for the other "
                                    f"ranks to finish their set-up: {exc}") from None
        if rank == 0:
            log.info("init: %d ranks on %d host(s) %s, slot %d B x %d, channels %d, timeout %.0f s",
                     size, self._layout.nhosts, self._layout.hosts, peers.slot_bytes, peers.nslots,
                     cfg.nchannels, self._timeout, rank=0)
            if cfg.graph_dump_file and peers.system.gpus:
                topo.dump_graphs(topo.search(peers.system, inter_host=self._layout.nhosts > 1), peers.system,
                                 cfg.graph_dump_file)
        log.info("init: host %d (%s) pid %d; transports per peer: %s", self._layout.host_of[rank],
                 infos[rank].hostname, infos[rank].pid,
                 " ".join(f"{p}:{k}" for p, k in enumerate(peers.kinds) if k != "self"), rank=rank)

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

    @property
    def context(self) -> CommContext:
        """The read-only view of this communicator that ``group()``, the flight recorder, the mismatch
        check and the torch backend use (:class:`~pyxccl.comm.context.CommContext`)."""
        return self._context

    def transport_of(self, peer: int) -> str:
        """The transport used towards ``peer`` ("local", "shm", "socket"; "self" for this rank)."""
        return self._kinds[checks.check_rank(peer, self._size, "peer")]

    def pending_ops(self) -> list[dict[str, Any]]:
        """The flight recorder's records of this communicator's last operations, oldest first.

        Every kept record (the last ``PYXCCL_TRACE_SIZE``, default 1000; finished ones
        included, not only those still pending), as a dict: ``seq`` (collectives are
        numbered 1, 2, ... and must match across ranks; sends/recvs have their own
        numbers), ``kind`` ("collective" or "p2p"), ``op`` ("allreduce", "gatherv", "send",
        "recv", ...), ``dtype``, ``count`` (elements; per rank or block as the call
        counts them), ``root``, ``peers`` ("all" or ``[peer]``), ``tag`` (a send's or recv's
        message tag; None for collectives), ``algorithm``,
        ``reduce_op``, ``state`` ("queued", "running", "done" or "failed: <Type>: message"),
        ``enqueued``/``started``/``ended`` (``time.time()``), ``duration`` (s) and
        ``call_site`` ("file:line in function", the first frame outside pyxccl).
        Empty when ``PYXCCL_TRACE_SIZE=0``. See :mod:`pyxccl.reliability.flight`.
        """
        rec = self._context.flight
        return rec.records() if rec is not None else []

    def __repr__(self) -> str:
        return f"<pyxccl.Communicator rank {self._rank}/{self._size}>"

    # ------------------------------------------------------------------ collectives
    # Each method lays out its arguments (checks.plan_*: InvalidArgument on the rank that made
    # the mistake) and hands the call to the engine, which checks that the communicator is
    # open; the eight fixed-size ones first look for a remembered repeat (comm/repeat.py).
    # The flight recorder finds the call site a fixed number of frames up: keep these methods
    # calling the engine (or _repeat) directly.

    def _repeat(self, rep: repeats.Repeat) -> Any:
        """Run a remembered call again (same arrays, op, root): no checks or planning to redo."""
        self._live.check_open()
        rec = self._engine.record_repeat(rep)
        return self._queue.run(lambda: self._run_repeat(rep, rec), rep.what)

    def _run_repeat(self, rep: repeats.Repeat, rec: Any) -> Any:
        return self._engine.run_repeat(rep, rec)

    def all_reduce(self, input: Any, output: Any = None, op: Any = "sum", *, algorithm: "str | Program | None" = None,
                   async_op: bool = False, timeout: float | None = None) -> Any:
        """Reduce ``input`` over all ranks into ``output`` on every rank (in place when output is None)."""
        key, rep = repeats.lookup(self._repeats, "allreduce", input, output, op, None, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._engine.collective(checks.plan_elementwise("allreduce", self._rank, self._size, input, output, op),
                                       algorithm, async_op, timeout, (key, input, output))

    def broadcast(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
                  async_op: bool = False, timeout: float | None = None) -> Any:
        """Copy the root's ``input`` into ``output`` on every rank (in place when output is None)."""
        key, rep = repeats.lookup(self._repeats, "broadcast", input, output, None, root, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._engine.collective(
            checks.plan_elementwise("broadcast", self._rank, self._size, input, output, None, root),
            algorithm, async_op, timeout, (key, input, output))

    def reduce(self, input: Any, output: Any = None, op: Any = "sum", *, root: int = 0,
               algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """Reduce ``input`` over all ranks into the root's ``output`` (in place when output is None)."""
        key, rep = repeats.lookup(self._repeats, "reduce", input, output, op, root, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._engine.collective(
            checks.plan_elementwise("reduce", self._rank, self._size, input, output, op, root),
            algorithm, async_op, timeout, (key, input, output))

    def all_gather(self, input: Any, output: Any, *, algorithm: "str | Program | None" = None, async_op: bool = False,
                   timeout: float | None = None) -> Any:
        """Concatenate every rank's ``input`` (count elements) into ``output`` (size * count) on every rank.

        In place: pass ``input=None`` (or output's block of this rank) with the data in that block.
        """
        key, rep = repeats.lookup(self._repeats, "allgather", input, output, None, None, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._engine.collective(checks.plan_gatherlike("allgather", self._rank, self._size, input, output),
                                       algorithm, async_op, timeout, (key, input, output))

    def reduce_scatter(self, input: Any, output: Any = None, op: Any = "sum", *,
                       algorithm: "str | Program | None" = None, async_op: bool = False,
                       timeout: float | None = None) -> Any:
        """Reduce ``input`` (size * count) over ranks; rank r gets block r in ``output`` (count).

        In place (output None): the result is the rank's block of ``input``, which is returned.
        """
        key, rep = repeats.lookup(self._repeats, "reducescatter", input, output, op, None, algorithm, async_op,
                                  timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._engine.collective(
            checks.plan_scatterlike("reducescatter", self._rank, self._size, input, output, op),
            algorithm, async_op, timeout, (key, input, output))

    def all_to_all(self, input: Any, output: Any = None, *, algorithm: "str | Program | None" = None,
                   async_op: bool = False, timeout: float | None = None) -> Any:
        """Block q of ``input`` goes to rank q, into block r (this rank) of its ``output``."""
        key, rep = repeats.lookup(self._repeats, "alltoall", input, output, None, None, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._engine.collective(checks.plan_alltoall(self._rank, self._size, input, output), algorithm,
                                       async_op, timeout, (key, input, output))

    def gather(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
               async_op: bool = False, timeout: float | None = None) -> Any:
        """Concatenate every rank's ``input`` into the root's ``output`` (size * count)."""
        key, rep = repeats.lookup(self._repeats, "gather", input, output, None, root, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._engine.collective(checks.plan_gatherlike("gather", self._rank, self._size, input, output, root),
                                       algorithm, async_op, timeout, (key, input, output))

    def scatter(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
                async_op: bool = False, timeout: float | None = None) -> Any:
        """Block r of the root's ``input`` (size * count) goes to rank r's ``output`` (count)."""
        key, rep = repeats.lookup(self._repeats, "scatter", input, output, None, root, algorithm, async_op, timeout)
        if rep is not None:
            return self._repeat(rep)
        return self._engine.collective(
            checks.plan_scatterlike("scatter", self._rank, self._size, input, output, None, root),
            algorithm, async_op, timeout, (key, input, output))

    def all_gatherv(self, input: Any, output: Any, counts: Any, displs: Any = None, *,
                    algorithm: "str | Program | None" = None, async_op: bool = False,
                    timeout: float | None = None) -> Any:
        """Rank q's ``counts[q]`` elements land at ``displs[q]`` (default: packed) of every rank's output.

        In place: ``input=None``, with this rank's data already at its place in ``output``.
        """
        return self._engine.collective(checks.plan_allgatherv(self._rank, self._size, input, output, counts, displs),
                                       algorithm, async_op, timeout)

    def reduce_scatterv(self, input: Any, output: Any = None, counts: Any = (), op: Any = "sum", *,
                        algorithm: "str | Program | None" = None, async_op: bool = False,
                        timeout: float | None = None) -> Any:
        """Reduce ``input`` (``sum(counts)`` elements, packed blocks) over ranks; rank r gets block r."""
        return self._engine.collective(checks.plan_reducescatterv(self._rank, self._size, input, output, counts, op),
                                       algorithm, async_op, timeout)

    def all_to_allv(self, input: Any, output: Any, send_counts: Any, recv_counts: Any, send_displs: Any = None,
                    recv_displs: Any = None, *, algorithm: "str | Program | None" = None,
                    async_op: bool = False, timeout: float | None = None) -> Any:
        """MPI_Alltoallv: ``send_counts[q]`` elements at ``send_displs[q]`` go to rank q's ``recv_displs[r]``."""
        return self._engine.collective(
            checks.plan_alltoallv(self._rank, self._size, input, output, send_counts, recv_counts, send_displs,
                                  recv_displs), algorithm, async_op, timeout)

    def gatherv(self, input: Any, output: Any = None, counts: Any = None, displs: Any = None, *, root: int = 0,
                algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """Rank q's input lands at ``displs[q]`` of the root's output; ``counts``/``displs`` matter on the root."""
        return self._engine.collective(checks.plan_gatherv(self._rank, self._size, input, output, counts, displs, root),
                                       algorithm, async_op, timeout)

    def scatterv(self, input: Any, output: Any, counts: Any = None, displs: Any = None, *, root: int = 0,
                 algorithm: "str | Program | None" = None, async_op: bool = False, timeout: float | None = None) -> Any:
        """``counts[q]`` elements at ``displs[q]`` of the root's input go to rank q's output."""
        return self._engine.collective(
            checks.plan_scatterv(self._rank, self._size, input, output, counts, displs, root),
            algorithm, async_op, timeout)

    def barrier(self, *, async_op: bool = False, timeout: float | None = None) -> Any:
        """Return once every rank has entered the barrier."""
        token = np.zeros(1, dtype=np.uint8)
        call = Call("barrier", 1, DTYPES["uint8"], token, token, True, None, MAX)
        return self._engine.collective(call, None, async_op, timeout)

    # ------------------------------------------------------------------ point to point
    # Sends and receives do not wait for the call queue: they start at once and progress on their
    # own (comm/p2p.py); wait for an asynchronous collective before sending its output.

    def send(self, buf: Any, peer: int, *, tag: int = 0, async_op: bool = False, timeout: float | None = None) -> Any:
        """Send ``buf`` to ``peer`` as a message with ``tag`` (an int, default 0).

        Matched with ``peer``'s recv from this rank with the same tag; messages of one tag
        match in the order they were sent. Complete (blocking: returns) once the data has
        left ``buf``, which may be before ``peer`` received it.
        """
        self._live.check_open()
        b = checks.plan_p2p(buf, peer, self._size, "buf", writable=False)
        what, tag, timeout = f"send({b.count} x {b.dtype} to {peer})", check_tag(tag), checks.check_timeout(timeout)
        if not b.on_host:  # through host memory (:mod:`pyxccl.comm.staging`), complete when it returns
            staging.send(b, lambda host: self._p2p.call("send", int(peer), tag, host, None, what, False, timeout))
            return Work.completed(what) if async_op else None
        return self._p2p.call("send", int(peer), tag, b.array, None, what, async_op, timeout)

    def recv(self, buf: Any, peer: int, *, tag: int = 0, async_op: bool = False, timeout: float | None = None) -> Any:
        """Receive into ``buf`` the next message from ``peer`` with ``tag`` (an int, default 0).

        Its size must equal that message's (MismatchError names both otherwise). A receive
        that waits holds up no other call: not sends or receives with other peers or tags,
        nor collectives.
        """
        self._live.check_open()
        b = checks.plan_p2p(buf, peer, self._size, "buf", writable=True)
        what, tag, timeout = f"recv({b.count} x {b.dtype} from {peer})", check_tag(tag), checks.check_timeout(timeout)
        if not b.on_host:  # through host memory (:mod:`pyxccl.comm.staging`), complete when it returns
            staging.recv(b, lambda host: self._p2p.call("recv", int(peer), tag, host, None, what, False, timeout))
            return Work.completed(what, b.owner) if async_op else b.owner
        return self._p2p.call("recv", int(peer), tag, b.array, b.owner, what, async_op, timeout)

    # ------------------------------------------------------------------ membership
    def split(self, color: int | None, key: int = 0) -> "Communicator | None":
        """A new communicator of the ranks with the same ``color``, ordered by (key, rank).

        Collective over this communicator. ``color=None`` (or negative) takes no part and gets None.
        """
        self._live.check_open()
        ranks = membership.split_members(self._context, color, key)
        self._splits += 1
        if ranks is None:
            return None
        return self._child(ranks, membership.TAG_SPLIT + self._splits, b"split")

    def shrink(self, exclude: Any) -> "Communicator":
        """A new communicator of every rank not in ``exclude``, in the same order; no new unique id needed.

        Collective over the survivors: each rank not excluded calls it with the same ranks.
        This is how to go on after a :class:`PeerLostError`: ``comm.shrink(exclude=[err.rank])``
        (lost peers need not be listed twice; list every rank that is gone). The old
        communicator is left as it is: abort or destroy it afterwards.
        """
        survivors, excluded = membership.shrink_members(self._context, exclude)
        self._shrinks += 1
        return self._child(survivors, membership.TAG_SHRINK + self._shrinks, json.dumps(excluded).encode())

    def _child(self, ranks: list[int], tag: int, agreement: bytes) -> "Communicator":
        uid = membership.child_uid(self._context, self._secret, ranks, tag, agreement)
        return type(self)(len(ranks), uid, ranks.index(self._rank), timeout=self._timeout)

    # ------------------------------------------------------------------ registered buffers
    def register(self, buffer: Any) -> "registration.Registration":
        """Register a CUDA buffer for zero copy (NCCL's ``ncclCommWindowRegister``); collective: every
        rank registers one buffer, in the same order. Its ``.deregister()`` (collective too) forgets it.

        The ranks of a host map each other's registered buffers once; a device call of at least
        ``PYXCCL_CUDA_REGISTERED_MIN_BYTES`` whose buffers lie in registered buffers then reads the
        peers' bytes where they are (one copy instead of two through the slots). Memory of
        :func:`pyxccl.cuda.empty` (NCCL's ``ncclMemAlloc``) and of ``cuMemAlloc`` (torch's and CuPy's
        default allocators) can be registered; keep the buffer alive and unchanged in place until
        deregistered. A rank that passes something else raises ``InvalidArgument`` saying what to
        fix, and the others raise it naming that rank.
        """
        self._live.check_open()
        buf = as_buffer(buffer, "buffer")
        return registration.register(self._engine, buf, f"register({buf!r})")

    # ------------------------------------------------------------------ life
    def abort(self) -> None:
        """Stop now, locally: fail pending work with Aborted and release resources. Idempotent.

        Device calls already enqueued are released (no stream waits on a peer any more; their
        data is garbage, as after NCCL's ncclCommAbort) and drained before their memory is freed.
        """
        if not self._live.mark_aborted():
            return
        self._live.health.stop()  # type: ignore[union-attr]
        self._engine.release_device_waits()  # no stream of ours waits on a peer any more
        aborted = Aborted(f"rank {self._rank}: the communicator was aborted")
        self._p2p.close(aborted)
        self._queue.close(aborted, timeout=1.0)
        self._release()

    def destroy(self) -> None:
        """Finish this rank's queued work, then tear down: collective, every rank calls it.

        The teardown ends with a closing handshake (a barrier over the bootstrap) so that no
        rank frees memory a peer may still read. That handshake waits at most
        :data:`DESTROY_SECONDS` (10 s, or the communicator's timeout when shorter): a peer that
        is gone, or still calling, or has not reached ``destroy()`` by then cannot hold this rank
        up; it releases locally with a WARN (that peer's next call raises PeerLostError). Queued
        work of this rank is waited for up to the timeout, then aborted. On a communicator that
        lost a peer the teardown is local (there is nobody to agree with).
        """
        live = self._live
        if not live.mark_closed():
            return
        deadline = time.monotonic() + self._timeout
        if not (self._queue.drain(deadline) and self._p2p.drain(deadline)
                and self._engine.drain_device(max(0.0, deadline - time.monotonic()))):
            log.warn("destroy: queued work did not finish in time; aborting", rank=self._rank)
            live.aborted = True
        self._p2p.close(Aborted(f"rank {self._rank}: the communicator was destroyed"))
        self._queue.close()
        lost = live.lost
        live.health.stop()  # type: ignore[union-attr] # from here on, peers leaving is expected
        if lost:
            log.info("destroy: rank(s) %s are lost; releasing locally", sorted(lost), rank=self._rank)
        elif not live.aborted:
            seconds = min(self._timeout, DESTROY_SECONDS)
            try:  # every rank is done, so every byte in flight was delivered: safe to close
                self._bootstrap.barrier(timeout=seconds)
            except CollectiveTimeout:
                log.warn("destroy: not every rank reached destroy() within %g s (a peer still calling, "
                         "stopped or gone?); releasing locally: their calls raise PeerLostError naming this rank",
                         seconds, rank=self._rank)
                self._bootstrap.notify_lost(self._rank, f"it left: its destroy() waited {seconds:g} s for the other "
                                            f"ranks to reach destroy() and released the communicator", 0.5)
            except PyxcclError as exc:
                log.warn("destroy: the closing barrier failed (%s); releasing locally", exc, rank=self._rank)
        self._release()

    def _release(self) -> None:
        self._connections.close()
        self._engine.close()
        close_doorbell(self._bell_path)
        self._bootstrap.close()
        health = self._live.health
        if health is not None and health.lost:  # a crashed peer's files, once its process is gone
            health.wait_exited(1.0)
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
