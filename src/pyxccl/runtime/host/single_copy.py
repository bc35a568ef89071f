"""The single-copy strategy of a thread block runner (:class:`pyxccl.runtime.host.executor.TBRunner` owns one
where its plan lets a step go direct).

Where a connector takes descriptors (the shm transport with ``PYXCCL_CMA``), a step may post
where its bytes lie instead of copying them into a slot, and the peer reads them itself with
``process_vm_readv`` (:mod:`pyxccl.ir.passes.direct` decides statically which steps may,
:mod:`pyxccl.runtime.host.path_choice` per call whether they do). Three forms:

* one slice per descriptor (the receiver reads it into its destination, or into the slot
  before a reduction);
* the rest of the call in one descriptor (``SPAN_REST``), from a plain send to a plain
  receive: both skip the step afterwards; a receiver whose call aliases otherwise reads it
  into a private buffer and copies each slice at its turn;
* the same, split (``SPAN_SPLIT``): a root that only sends writes the first part itself with
  ``process_vm_writev`` into the destination the receiver offered (see
  :mod:`pyxccl.transport.shm.connectors`), while the receiver reads the rest;
* the same, all written by the sender (the put path, :data:`pyxccl.runtime.host.path_choice.PUT`): a rank that
  also receives writes each slice into the offered destination at the step's turn in that
  slice (:class:`SlicePut`), right after its earlier steps of the slice (a local copy of the same
  bytes leaves them in the cache), and the receiver only waits for the last.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ...ir.passes.direct import DIRECT_RECV, SPAN_REST, SPAN_SPLIT
from ..kernels import trim_pair
from ...errors import MismatchError, TransportError
from ...ir.program import Op
from ...transport.base import overlap

from ...memory import host as hostmem

if TYPE_CHECKING:
    from ..plan import TBPlan

#: the runner that owns a strategy (:class:`pyxccl.runtime.host.executor.TBRunner`: its position
#: ``it``/``s``, ``call``, connectors, ``_steps`` and ``span_done``) and the pieces of its steps
#: (:class:`pyxccl.runtime.host.executor.Piece`); not imported: the executor imports this module
Runner = Any
Pieces = list

#: how long a sender that only sends waits for the receiver's answer to an offer (seconds)
_OFFER_WAIT_S = 0.005


class SlicePut:
    """A send step on the put path that writes every slice into its receiver's offered destination:
    the slot ``seq`` (a head value) announced it; ``offer`` the receiver's regions; logical byte
    ``j * rest_bytes + (o - o0) * itemsize`` is element ``o`` of chunk ``j``; ``srcs`` the pieces
    it writes from (its source, or the destination of a copy of it)."""

    __slots__ = ("seq", "offer", "o0", "rest_bytes", "srcs")

    def __init__(self, seq: int, offer: list[tuple[int, int, int]], o0: int, rest_bytes: int, srcs):
        self.seq, self.offer, self.o0, self.rest_bytes, self.srcs = seq, offer, o0, rest_bytes, srcs


def _clip(regions: list[tuple[int, int, int]], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """The parts of (logical offset, address, length) regions inside logical bytes [lo, hi)."""
    out = []
    for off, addr, n in regions:
        a, b = max(off, lo), min(off + n, hi)
        if b > a:
            out.append((a, addr + a - off, b - a))
    return out


class SingleCopy:
    """The single-copy steps of one runner: descriptors, offers, puts and what they leave to do.

    It works at its runner's position (``runner.it``, ``runner.s``) on its connectors, and keeps
    the state of the call's descriptors: whether one is still being read (``posted_remote``),
    whether the peer still writes into this rank (``await_put``), the last offer answered."""

    def __init__(self, runner: Runner, tp: "TBPlan"):
        self.r = runner
        self.call = runner.call
        self.tb, self.index = tp.tb, tp.index
        self.sendc, self.recvc = runner.sendc, runner.recvc
        self.rmin, self.rread = tp.rmin, tp.rread
        self.offers, self.wants_offer, self.span_ok = tp.offers, tp.wants_offer, tp.span_ok
        self.early = tp.early
        # put steps that write from the destination of the copy before them (the same bytes, in the cache)
        self.put_src = {i: runner._steps[j][2] for i, j in (tp.put_src or {}).items()}
        self.offered = -1  # the tail value of the last answer given
        self.offer_since: float | None = None
        self.reset()

    def reset(self) -> None:
        """A new call over the same arrays: nothing posted, nothing awaited."""
        self.posted_remote = False
        self.await_put: int | None = None  # a slot (tail value) whose sender still writes its part
        self.early_due = self.early >= 0

    def pending(self) -> bool:
        """Whether the runner must wait after its last step (a descriptor out, a put coming in)."""
        return self.posted_remote or self.await_put is not None

    def drained(self) -> bool:
        """After the last step: True once the peers finished reading and writing this call's memory."""
        if self.await_put is not None and not self._put_arrived():
            return False
        return self.sendc is None or not self.sendc.remote_pending()

    def describe_wait(self) -> str:
        tb = self.tb
        if self.await_put is not None:
            return (f"tb {tb.id} (channel {tb.channel}) waits for rank {tb.recv} to write "
                    f"its part of the data into this rank (single copy)")
        return (f"tb {tb.id} (channel {tb.channel}) waits for rank {tb.send} to read "
                f"its last data (single copy)")

    def offer_early(self) -> None:
        """The call starts: tell the sender where the early receive's bytes go."""
        self.early_due = False
        self.offer(self.r._steps[self.early][2], self.early, 0, early=True)

    def awaits_offer(self, mode: int) -> bool:
        """True while a step of ``mode`` must wait for the receiver's answer before it sends."""
        if mode == 3 or self.wants_offer:
            return self._awaits_offer()
        return False

    def finish_slice(self, how, cnt: int, dsts) -> None:
        """This slice of a step that moved every slice at once: write it into the receiver (a put)
        or copy it from the private buffer it was read into."""
        if type(how) is SlicePut:
            self._put_slice(how, cnt)
        else:
            self._copy_staged(cnt, dsts, how)

    def execute(self, op: Op, cnt: int, srcs, dsts, direct: int, o: int, m: int, nbytes: int) -> bool:
        """Run the step on the single-copy path when it applies; False: the slot path runs it.
        ``direct``: 0 slots, 1 a descriptor of this slice, 2 one of every slice still to come."""
        run = self.call
        if nbytes < self.rmin:
            direct = 0
        if op is Op.SEND:
            if not direct:
                return False
            if direct == 3 and self._put_rest(cnt, srcs, o):
                return True
            if direct >= 2:  # every slice still to come (maybe just this one: then only a root's split differs)
                rest = run.geo.ce - o
                self._send_rest(cnt * rest * run.dtype.itemsize, srcs, o, rest)
                self.r.span_done(True)
            else:
                self._post_regions(nbytes, srcs, o, m)
            return True
        recvc = self.recvc
        if op is Op.RECV_REDUCE_COPY_SEND:  # only with ``direct``: reduce into dst, then post dst
            return direct and self._reduce_then_post(cnt, srcs, dsts, o, m, nbytes)
        desc = recvc.remote() if self.rread and op in DIRECT_RECV else None  # type: ignore[union-attr]
        copy = run.kernels.copy
        if desc is None:  # a plain slot in: an rcs still forwards by descriptor when it may
            if not direct or op is not Op.RECV_COPY_SEND:
                return False
            raw = recvc.buffer()  # type: ignore[union-attr]
            if raw.size != nbytes:
                return False  # the slot path raises the MismatchError
            rv = raw.view(run.dtype)
            for j in range(cnt):
                dst = dsts[j].view(o, m)
                copy(dst, rv[j * m:j * m + dst.size])
            self._post_regions(nbytes, dsts, o, m)
            recvc.release()  # type: ignore[union-attr]
            return True
        staged = None
        split = 0
        if desc[1] & SPAN_REST:  # the rest of the call at once (only ever towards a plain receive)
            if op is not Op.RECV:
                raise MismatchError(f"{run.label}: rank {self.tb.recv} sent the rest of the call at once where rank "
                                    f"{run.rank} forwards it (channel {self.tb.channel}); do the ranks run the same program?")
            m = run.geo.ce - o
            nbytes = cnt * m * run.dtype.itemsize
            if self.r.it + 1 < run.geo.niters and not self.span_ok[self.r.s]:
                # later slices are not ours to write yet
                staged = hostmem.empty(cnt * m, run.dtype)
            self.r.span_done(True if staged is None else (staged, o))
            if desc[1] & SPAN_SPLIT:  # the sender writes [0, split) into our offer: we read the rest
                if staged is not None:
                    raise MismatchError(f"{run.label}: rank {self.tb.recv} wrote into a destination rank {run.rank} "
                                        f"did not offer (channel {self.tb.channel})")
                split = desc[1] >> 8
        if desc[0] != nbytes:
            raise MismatchError(
                f"{run.label}: rank {self.tb.recv} sent {desc[0]} bytes where rank {run.rank} expects "
                f"{nbytes} (channel {self.tb.channel}, slice {self.r.it + 1}); do the ranks agree on count and dtype?")
        targets = self._regions(dsts, o, m)
        if split:
            self.await_put = recvc.tail  # type: ignore[union-attr]
            targets = _clip(targets, split, nbytes)
        elif staged is not None:
            base = hostmem.address(staged)
            targets = [(off, base + off, n) for off, _, n in targets]
        recvc.read_remote(targets)  # type: ignore[union-attr]
        if staged is not None:
            self._copy_staged(cnt, dsts, (staged, o))
        if op is Op.RECV_COPY_SEND:
            if direct:
                self._post_regions(nbytes, dsts, o, m)
            else:
                sv = self.sendc.buffer()[:nbytes].view(run.dtype)  # type: ignore[union-attr]
                for j in range(cnt):
                    dst = dsts[j].view(o, m)
                    copy(sv[j * m:j * m + dst.size], dst)
                self.sendc.post(nbytes)  # type: ignore[union-attr]
        recvc.release()  # type: ignore[union-attr]
        return True

    def _reduce_then_post(self, cnt: int, srcs, dsts, o: int, m: int, nbytes: int) -> bool:
        """``rrcs`` on the single-copy path: reduce what arrived (a descriptor is read into the
        slot first) with the source into the destination, and post the destination."""
        run = self.call
        recvc = self.recvc
        raw = recvc.buffer()  # type: ignore[union-attr]
        if raw.size != nbytes:
            return False  # the slot path raises the MismatchError
        rv = raw.view(run.dtype)
        reduce = run.kernels.reduce
        for j in range(cnt):
            dst, src = trim_pair(dsts[j].view(o, m), srcs[j].view(o, m))
            reduce(rv[j * m:j * m + dst.size], src, dst)
        self._post_regions(nbytes, dsts, o, m)
        recvc.release()  # type: ignore[union-attr]
        return True

    def _put_rest(self, cnt: int, srcs, o: int) -> bool:
        """The put path's send of every slice still to come: where the receiver offered its
        destination, write this slice into it, announce the rest (the receiver reads nothing)
        and write each later slice at the step's turn; False where it did not offer or the
        kernel refuses the write (the caller posts the rest to be read)."""
        run, sendc = self.call, self.sendc
        offer = sendc.destination()  # type: ignore[union-attr]
        if not offer:
            return False
        rest = run.geo.ce - o
        put = SlicePut(sendc.head, offer, o, rest * run.dtype.itemsize, self.put_src.get(self.r.s, srcs))  # type: ignore[union-attr]
        if not sendc.write_remote(self._slice_pieces(put, put.srcs, cnt)):  # type: ignore[union-attr]
            return False  # refused: nothing was written
        nbytes = cnt * put.rest_bytes
        sendc.post_remote(nbytes, self._regions(srcs, o, rest), SPAN_REST | SPAN_SPLIT | (nbytes << 8))  # type: ignore[union-attr]
        self.posted_remote = True
        if self.r.it + 1 == run.geo.niters:
            sendc.put_finished(put.seq, True)  # type: ignore[union-attr]
            self.r.span_done(True)
        else:
            self.r.span_done(put)
        return True

    def _slice_pieces(self, put: SlicePut, srcs, cnt: int) -> list[tuple[int, int, int]]:
        """(local address, receiver's address, length) of this slice of every chunk of a put."""
        run, g = self.call, self.call.geo
        isz = run.dtype.itemsize
        o = self.r.it * g.n
        m = min(g.n, g.ce - o)
        mine = []
        for j in range(cnt):
            p = srcs[j]
            vl = min(m, p.valid - o)
            if vl > 0:
                mine.append((j * put.rest_bytes + (o - put.o0) * isz, run.addr_of(p.array) + (p.start + o) * isz, vl * isz))
        return overlap(mine, put.offer)

    def _put_slice(self, put: SlicePut, cnt: int) -> None:
        """Write this slice of a put step into the receiver; after the last, tell it all arrived."""
        sendc = self.sendc
        last = self.r.it + 1 == self.call.geo.niters
        try:
            ok = sendc.write_remote(self._slice_pieces(put, put.srcs, cnt))  # type: ignore[union-attr]
        except BaseException:
            sendc.put_finished(put.seq, False)  # type: ignore[union-attr]
            raise
        if not ok:
            sendc.put_finished(put.seq, False)  # type: ignore[union-attr]
            raise TransportError(f"{self.call.label}: writing into rank {self.tb.send} was refused after it was allowed")
        if last:
            sendc.put_finished(put.seq, True)  # type: ignore[union-attr]

    def _copy_staged(self, cnt: int, dsts, staged: tuple) -> None:
        """Copy this slice of a receive from the private buffer a spanning descriptor was read into."""
        g = self.call.geo
        buf, o0 = staged
        o = self.r.it * g.n
        m = min(g.n, g.ce - o)
        rest = g.ce - o0
        for j in range(cnt):
            dst = dsts[j].view(o, m)
            lo = j * rest + o - o0
            self.call.kernels.copy(dst, buf[lo:lo + dst.size])

    def _regions(self, pieces: Pieces, o: int, m: int) -> list[tuple[int, int, int]]:
        """(logical offset, address, length) of elements ``o``..``o + m`` of every piece: piece ``j``
        at logical byte ``j * m * itemsize``, as descriptors and offers lay them out."""
        run = self.call
        isz = run.dtype.itemsize
        mb = m * isz
        regions = []
        for j, p in enumerate(pieces):
            vl = min(m, p.valid - o)
            if vl > 0:
                regions.append((j * mb, run.addr_of(p.array) + (p.start + o) * isz, vl * isz))
        return regions

    def _post_regions(self, nbytes: int, pieces: Pieces, o: int, m: int, aux: int = 0) -> None:
        """Post a descriptor of elements ``o``..``o + m`` of every piece (where they lie in this rank's memory)."""
        self.sendc.post_remote(nbytes, self._regions(pieces, o, m), aux)  # type: ignore[union-attr]
        self.posted_remote = True

    def _send_rest(self, nbytes: int, pieces: Pieces, o: int, m: int) -> None:
        """Post every slice still to come at once; where the receiver offered its destination, write
        the first half into it meanwhile (both processes copy: ``process_vm_writev`` here,
        ``process_vm_readv`` there), else the receiver reads it all."""
        sendc = self.sendc
        mine = self._regions(pieces, o, m)
        offer = sendc.destination() if self.wants_offer else None  # type: ignore[union-attr]
        split = (nbytes // 2) & ~63
        pieces_out = overlap(mine, offer, split) if offer is not None and split else []
        # a first small write tells whether the kernel lets this process write into the receiver
        if not pieces_out or not sendc.write_remote([pieces_out[0][:2] + (min(8, pieces_out[0][2]),)]):  # type: ignore[union-attr]
            self._post_regions(nbytes, pieces, o, m, SPAN_REST)
            return
        seq = sendc.head  # type: ignore[union-attr]
        sendc.post_remote(nbytes, mine, SPAN_REST | SPAN_SPLIT | (split << 8))  # type: ignore[union-attr]
        self.posted_remote = True
        try:
            ok = sendc.write_remote(pieces_out)  # type: ignore[union-attr]
        except BaseException:
            sendc.put_finished(seq, False)  # type: ignore[union-attr]
            raise
        sendc.put_finished(seq, ok)  # type: ignore[union-attr]
        if not ok:
            raise TransportError(f"{self.call.label}: writing into rank {self.tb.send} was refused after it was allowed")

    def offer(self, dsts: Pieces, s: int, it: int, early: bool = False) -> None:
        """Offer the sender the destination of step ``s`` for every slice from ``it`` on, or decline
        when later slices are not ours to write yet (once per slot). ``early``: at the call's start,
        where no earlier step of this rank ran yet: only a destination nothing else touches."""
        recvc = self.recvc
        tail = recvc.tail  # type: ignore[union-attr]
        if tail != self.offered:
            self.offered = tail
            run, g = self.call, self.call.geo
            o = it * g.n
            ok = (not early and it + 1 == g.niters) or self.span_ok[s]
            recvc.offer_destination(self._regions(dsts, o, g.ce - o) if ok else [])  # type: ignore[union-attr]

    def _awaits_offer(self) -> bool:
        """True while a sender that will send the rest of the call at once still waits (at most
        ``_OFFER_WAIT_S``) for the receiver's answer to its wish to write part of it."""
        if self.sendc.destination() is not None:  # type: ignore[union-attr]
            self.offer_since = None
            return False
        now = time.monotonic()
        if self.offer_since is None:
            self.offer_since = now
        if now - self.offer_since < _OFFER_WAIT_S:
            return True
        self.offer_since = None  # no answer: the receiver reads it all
        return False

    def _put_arrived(self) -> bool:
        """Whether the sender finished writing its part of a split slot (raises when it could not)."""
        state = self.recvc.put_state(self.await_put)  # type: ignore[union-attr]
        if state is None:
            return False
        if not state:
            raise TransportError(f"{self.call.label}: rank {self.tb.recv} could not write its part of the data "
                                 f"into rank {self.call.rank} (channel {self.tb.channel})")
        self.await_put = None
        return True
