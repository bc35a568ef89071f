"""The Communicator: NCCL's communicator life and every collective's entry point.

Life (NCCL's order): unique id -> bootstrap ring -> peer info allgather (host
identity, pid, doorbell) -> a transport per peer (local, shm, socket) -> connectors
made lazily, the first time a program needs them -> each call: check arguments ->
pick the algorithm -> cached IR program -> the executor, on the communicator's
ordered stream -> ``destroy()`` / ``abort()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from typing import Any

import numpy as np

from . import algorithms, calls, config, executor, group as _group, log, topo, tuner
from .bootstrap import Bootstrap, UniqueId, get_unique_id
from .calls import Call
from .dtypes import DTYPES, MAX, kernels, postdivide, prescale
from .errors import Aborted, InvalidArgument, PyxcclError
from .ir.program import COLLECTIVES, Buf, Program
from .ir.relabel import relabel
from .ir.verify import verify
from .transport import PeerInfo, TransportContext, choose, create
from .transport.doorbell import create_shared
from .work import BatchWork, Stream, Work

_TAG_CONNECT = 1 << 20  # bootstrap tags for connector set-up: + channel
_TAG_SPLIT = 1 << 21
_P2P_CHANNEL = 1 << 10  # p2p traffic uses its own channels, after any collective's


def host_identity(cfg: config.Config) -> str:
    """Ranks with equal identity share a host (and /dev/shm): hostname, boot id, network namespace."""
    if cfg.hostid:
        return cfg.hostid
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    try:
        netns = str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        netns = ""
    return f"{socket.gethostname()}/{boot}/{netns}"


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

    Every collective takes ``async_op=False``; with True it returns a :class:`Work`.
    Calls on one communicator complete in issue order.
    """

    def __init__(self, nranks: int, uid: Any, rank: int, *, timeout: float | None = None):
        if isinstance(nranks, bool) or not isinstance(nranks, int) or nranks < 1:
            raise InvalidArgument(f"nranks={nranks!r} must be a positive int")
        calls.check_rank(rank, nranks, "rank")
        uid = _as_uid(uid)
        cfg = config.get()
        self._cfg = cfg
        self._timeout = float(timeout) if timeout is not None else cfg.timeout
        self._rank, self._size = rank, nranks
        self._aborted = False
        self._closed = False
        self._lock = threading.Lock()
        self._tag = hashlib.sha256(uid.to_bytes()).hexdigest()[:16]
        self._splits = 0
        self._bootstrap = Bootstrap(uid, rank, nranks, timeout=self._timeout)
        try:
            self._setup(uid)
        except BaseException:
            self._bootstrap.close()
            raise

    def _setup(self, uid: UniqueId) -> None:
        cfg = self._cfg
        bell_path = f"/dev/shm/pyxccl-{self._tag}-bell{self._rank}"
        try:
            os.unlink(bell_path)  # a crashed earlier run with this id
        except FileNotFoundError:
            pass
        self._bell_path = bell_path
        self._doorbell = create_shared(bell_path, spin_us=cfg.spin_us)
        system = topo.local_system(cfg, dump=self._rank == 0, rank=self._rank)
        me = {"rank": self._rank, "host": host_identity(cfg), "pid": os.getpid(), "doorbell": bell_path,
              "hostname": socket.gethostname(), "slot_bytes": cfg.slot_bytes, "nslots": cfg.nslots,
              "topo": topo.summarize(system)}
        infos = [json.loads(b) for b in self._bootstrap.allgather(json.dumps(me).encode())]
        self._topo = system
        self._layout = topo.host_layout([i["host"] for i in infos])
        self._hosts = tuple(tuple(h) for h in self._layout.hosts)
        # the slot geometry must agree on every rank: rank 0's settings win
        self._slot_bytes, self._nslots = int(infos[0]["slot_bytes"]), int(infos[0]["nslots"])
        self._peers = [PeerInfo(i["rank"], i["host"], i["pid"], i["doorbell"], i["hostname"]) for i in infos]
        mine = self._peers[self._rank]
        self._kind = [choose(mine, p, cfg.transport) if p.rank != self._rank else "self" for p in self._peers]
        address = self._bootstrap.peer_addresses()[self._rank][0]
        self._ctx = TransportContext(self._rank, self._size, self._tag, self._peers, self._doorbell,
                                     self._slot_bytes, self._nslots, self._timeout, address, uid.secret, cfg)
        self._transports: dict[str, Any] = {}
        self._conns: dict[executor.ConnKey, Any] = {}
        self._stream = Stream(f"pyxccl-comm{self._tag[:6]}-r{self._rank}")
        self._seq = 0
        self._verified: dict[int, Program] = {}
        self._programs: dict[tuple, Program] = {}  # (collective, algorithm, nbytes, root) -> program
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

    def __repr__(self) -> str:
        return f"<pyxccl.Communicator rank {self._rank}/{self._size}>"

    # ------------------------------------------------------------------ connections
    def _transport(self, peer: int):
        kind = self._kind[peer]
        t = self._transports.get(kind)
        if t is None:
            t = self._transports[kind] = create(kind, self._ctx)
        return t

    def _connect(self, needed: set[executor.ConnKey]) -> dict[executor.ConnKey, Any]:
        conns = self._conns
        if all(k in conns for k in needed):
            return conns
        missing = sorted(k for k in needed if k not in conns)
        for peer, ch, direction in missing:
            if direction == "recv":
                conn, info = self._transport(peer).setup_recv(peer, ch)
                self._conns[(peer, ch, "recv")] = conn
                self._bootstrap.send(peer, _TAG_CONNECT + ch, info)
        for peer, ch, direction in missing:
            if direction == "send":
                info = self._bootstrap.recv(peer, _TAG_CONNECT + ch, timeout=self._timeout)
                self._conns[(peer, ch, "send")] = self._transport(peer).connect_send(peer, ch, info)
        return self._conns

    # ------------------------------------------------------------------ running
    def _check_open(self) -> None:
        if self._aborted:
            raise Aborted(f"rank {self._rank}: the communicator was aborted")
        if self._closed:
            raise InvalidArgument("the communicator was destroyed; create a new one")

    def _submit(self, fn, what: str, async_op: bool, kind: str = "call", payload: Any = None) -> Any:
        if _group.active():
            return _group.record(self, kind, payload if payload is not None else fn, Work(what), not async_op)
        if async_op:
            return self._stream.submit(fn, Work(what))
        return self._stream.run(fn, what)

    def _drive(self, runners: list, what: str) -> None:
        try:
            executor.drive(runners, self._doorbell, time.monotonic() + self._timeout, what, self._rank,
                           lambda: self._aborted)
        except Exception as exc:
            if self._aborted and not isinstance(exc, Aborted):  # abort() closed what this call was using
                raise Aborted(f"rank {self._rank}: {what} aborted ({exc})") from exc
            raise

    def _collective(self, call: Call, algorithm: "str | Program | None", async_op: bool) -> Any:
        self._check_open()
        if call.count == 0 and not call.agree_count:  # nothing moves; still ordered after earlier calls
            return self._submit(lambda: call.result, call.describe(), async_op)
        kern = kernels(call.op, call.dtype)  # checks the device before anything moves
        program = self._program(call, algorithm)
        if not (program.inplace if call.inplace else program.outofplace):
            raise InvalidArgument(f"algorithm={program.name!r} does not support "
                                  f"{'in' if call.inplace else 'out-of'}-place calls")

        def run() -> Any:
            if call.agree_count:  # v-collectives where ranks know only their own counts
                call.count = self._agree_max(call.count)
            self._execute(call, program, kern)
            return call.result

        return self._submit(run, call.describe(), async_op)

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
        conns = self._connect(prun.needed())
        log.trace("%s", label, rank=self._rank)
        self._drive(prun.runners(conns), label)
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

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, input: Any, output: Any = None, op: Any = "sum", *, algorithm: "str | Program | None" = None,
                   async_op: bool = False) -> Any:
        """Reduce ``input`` over all ranks into ``output`` on every rank (in place when output is None)."""
        return self._collective(calls.plan_elementwise("allreduce", self._rank, self._size, input, output, op),
                                algorithm, async_op)

    def broadcast(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
                  async_op: bool = False) -> Any:
        """Copy the root's ``input`` into ``output`` on every rank (in place when output is None)."""
        return self._collective(calls.plan_elementwise("broadcast", self._rank, self._size, input, output, None, root),
                                algorithm, async_op)

    def reduce(self, input: Any, output: Any = None, op: Any = "sum", *, root: int = 0,
               algorithm: "str | Program | None" = None, async_op: bool = False) -> Any:
        """Reduce ``input`` over all ranks into the root's ``output`` (in place when output is None)."""
        return self._collective(calls.plan_elementwise("reduce", self._rank, self._size, input, output, op, root),
                                algorithm, async_op)

    def all_gather(self, input: Any, output: Any, *, algorithm: "str | Program | None" = None, async_op: bool = False) -> Any:
        """Concatenate every rank's ``input`` (count elements) into ``output`` (size * count) on every rank.

        In place: pass ``input=None`` (or output's block of this rank) with the data in that block.
        """
        return self._collective(calls.plan_gatherlike("allgather", self._rank, self._size, input, output),
                                algorithm, async_op)

    def reduce_scatter(self, input: Any, output: Any = None, op: Any = "sum", *, algorithm: "str | Program | None" = None,
                       async_op: bool = False) -> Any:
        """Reduce ``input`` (size * count) over ranks; rank r gets block r in ``output`` (count).

        In place (output None): the result is the rank's block of ``input``, which is returned.
        """
        return self._collective(calls.plan_scatterlike("reducescatter", self._rank, self._size, input, output, op),
                                algorithm, async_op)

    def all_to_all(self, input: Any, output: Any = None, *, algorithm: "str | Program | None" = None,
                   async_op: bool = False) -> Any:
        """Block q of ``input`` goes to rank q, into block r (this rank) of its ``output``."""
        return self._collective(calls.plan_alltoall(self._rank, self._size, input, output), algorithm, async_op)

    def gather(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
               async_op: bool = False) -> Any:
        """Concatenate every rank's ``input`` into the root's ``output`` (size * count)."""
        return self._collective(calls.plan_gatherlike("gather", self._rank, self._size, input, output, root),
                                algorithm, async_op)

    def scatter(self, input: Any, output: Any = None, *, root: int = 0, algorithm: "str | Program | None" = None,
                async_op: bool = False) -> Any:
        """Block r of the root's ``input`` (size * count) goes to rank r's ``output`` (count)."""
        return self._collective(calls.plan_scatterlike("scatter", self._rank, self._size, input, output, None, root),
                                algorithm, async_op)

    def all_gatherv(self, input: Any, output: Any, counts: Any, displs: Any = None, *,
                    algorithm: "str | Program | None" = None, async_op: bool = False) -> Any:
        """Rank q's ``counts[q]`` elements land at ``displs[q]`` (default: packed) of every rank's output.

        In place: ``input=None``, with this rank's data already at its place in ``output``.
        """
        return self._collective(calls.plan_allgatherv(self._rank, self._size, input, output, counts, displs),
                                algorithm, async_op)

    def reduce_scatterv(self, input: Any, output: Any = None, counts: Any = (), op: Any = "sum", *,
                        algorithm: "str | Program | None" = None, async_op: bool = False) -> Any:
        """Reduce ``input`` (``sum(counts)`` elements, packed blocks) over ranks; rank r gets block r."""
        return self._collective(calls.plan_reducescatterv(self._rank, self._size, input, output, counts, op),
                                algorithm, async_op)

    def all_to_allv(self, input: Any, output: Any, send_counts: Any, recv_counts: Any, send_displs: Any = None,
                    recv_displs: Any = None, *, algorithm: "str | Program | None" = None,
                    async_op: bool = False) -> Any:
        """MPI_Alltoallv: ``send_counts[q]`` elements at ``send_displs[q]`` go to rank q's ``recv_displs[r]``."""
        return self._collective(calls.plan_alltoallv(self._rank, self._size, input, output, send_counts,
                                                     recv_counts, send_displs, recv_displs), algorithm, async_op)

    def gatherv(self, input: Any, output: Any = None, counts: Any = None, displs: Any = None, *, root: int = 0,
                algorithm: "str | Program | None" = None, async_op: bool = False) -> Any:
        """Rank q's input lands at ``displs[q]`` of the root's output; ``counts``/``displs`` matter on the root."""
        return self._collective(calls.plan_gatherv(self._rank, self._size, input, output, counts, displs, root),
                                algorithm, async_op)

    def scatterv(self, input: Any, output: Any, counts: Any = None, displs: Any = None, *, root: int = 0,
                 algorithm: "str | Program | None" = None, async_op: bool = False) -> Any:
        """``counts[q]`` elements at ``displs[q]`` of the root's input go to rank q's output."""
        return self._collective(calls.plan_scatterv(self._rank, self._size, input, output, counts, displs, root),
                                algorithm, async_op)

    def barrier(self, *, async_op: bool = False) -> Any:
        """Return once every rank has entered the barrier."""
        token = np.zeros(1, dtype=np.uint8)
        call = Call("barrier", 1, DTYPES["uint8"], token, token, True, None, MAX)
        return self._collective(call, None, async_op)

    # ------------------------------------------------------------------ point to point
    def send(self, buf: Any, peer: int, *, async_op: bool = False) -> Any:
        """Send ``buf`` to ``peer``; matched in order with ``peer``'s recv from this rank."""
        self._check_open()
        b = calls.plan_p2p(buf, peer, self._size, "buf", writable=False)
        return self._p2p(("send", int(peer), b.array, None), f"send({b.count} x {b.dtype} to {peer})", async_op)

    def recv(self, buf: Any, peer: int, *, async_op: bool = False) -> Any:
        """Receive into ``buf`` from ``peer``; its size must equal the matching send's."""
        self._check_open()
        b = calls.plan_p2p(buf, peer, self._size, "buf", writable=True)
        return self._p2p(("recv", int(peer), b.array, b.obj), f"recv({b.count} x {b.dtype} from {peer})", async_op)

    def _p2p(self, op: tuple, what: str, async_op: bool) -> Any:
        if _group.active():
            return _group.record(self, "p2p", op, Work(what), not async_op)
        work = Work(what)
        self._launch_p2p([op], [work], inline=not async_op)
        return work if async_op else work.result()

    def _launch_p2p(self, ops: list[tuple], works: list[Work], inline: bool = False) -> None:
        """Run a batch of send/recv ops concurrently on the stream; each op's Work completes with the batch."""
        batch = BatchWork(f"p2p batch of {len(ops)}", works, [op[3] if op[0] == "recv" else None for op in ops])

        def run() -> None:
            self._seq += 1
            self._run_p2p(ops, f"p2p batch #{self._seq} ({len(ops)} ops)")

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
        for kind, peer, arr, _ in ops:
            if peer != self._rank:
                lanes.setdefault((peer, kind), []).append(arr)
        needed = {(peer, _P2P_CHANNEL, kind) for peer, kind in lanes}
        conns = self._connect(needed)
        runners = [executor.P2PRunner(conns[(peer, _P2P_CHANNEL, kind)], kind == "send", arrs, self._slot_bytes,
                                      self._rank, what) for (peer, kind), arrs in lanes.items()]
        self._drive(runners, what)

    # ------------------------------------------------------------------ life
    def split(self, color: int | None, key: int = 0) -> "Communicator | None":
        """A new communicator of the ranks with the same ``color``, ordered by (key, rank).

        Collective over this communicator. ``color=None`` (or negative) takes no part and gets None.
        """
        self._check_open()
        mine = json.dumps([-1 if color is None else int(color), int(key)]).encode()
        entries = [json.loads(b) for b in self._stream.run(lambda: self._bootstrap.allgather(mine), "split")]
        self._splits += 1
        if color is None or int(color) < 0:
            return None
        members = sorted((k, r) for r, (c, k) in enumerate(entries) if c == int(color))
        ranks = [r for _, r in members]
        new_rank = ranks.index(self._rank)
        tag = _TAG_SPLIT + self._splits
        if new_rank == 0:
            uid = get_unique_id()
            for r in ranks[1:]:
                self._bootstrap.send(r, tag, uid.to_bytes())
        else:
            uid = UniqueId.from_bytes(self._bootstrap.recv(ranks[0], tag, timeout=self._timeout))
        return Communicator(len(ranks), uid, new_rank, timeout=self._timeout)

    def abort(self) -> None:
        """Stop now, locally: fail pending work with Aborted and release resources. Idempotent."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
        self._stream.close(Aborted(f"rank {self._rank}: the communicator was aborted"), timeout=1.0)
        self._release()

    def destroy(self) -> None:
        """Finish queued work, then tear down collectively (falls back to abort after the timeout)."""
        with self._lock:
            if self._closed or self._aborted:
                return
            self._closed = True
        deadline = time.monotonic() + self._timeout
        if not self._stream.drain(deadline):
            log.warn("destroy: queued work did not finish in time; aborting", rank=self._rank)
            self._aborted = True
        self._stream.close()
        if not self._aborted:
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
        try:
            os.unlink(self._bell_path)
        except FileNotFoundError:
            pass
        self._bootstrap.close()

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
