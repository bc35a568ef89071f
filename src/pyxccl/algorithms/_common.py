"""Building blocks shared by the algorithm modules (private: not an algorithm itself).

Everything here builds *one rank's* steps: an algorithm module loops over the ranks
and calls these helpers with that rank's position, peers and buffer locations, so
that the sender of every message and its receiver compute the same message list
(same order, same ``cnt``) from the same global description.

* :class:`TBs` hands out thread blocks keyed by (rank, channel, send peer, recv peer),
  so phases that talk to the same peers share one thread block (MSCCL's rule: one
  thread block per (channel, peer, direction)).
* :class:`Piece` is one message's worth of chunks at this rank: where its
  contribution is read (``src``), where a result lands (``dst``), how many chunks.
* ring schedules (reduce-scatter, allgather, fused allreduce), recursive doubling and
  recursive halving-doubling allreduce among an arbitrary list of member ranks.
* :func:`runs` merges consecutive chunk ranges into multi-chunk messages.
* :class:`Shape` describes hosts x local ranks (uneven shapes included) for the
  host-aware algorithms, and :func:`normalize_hosts` validates a ``hosts`` argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..ir.builder import TB, ProgramBuilder, StepRef
from ..ir.program import Buf

Loc = tuple[Buf, int]
Hosts = tuple[tuple[int, ...], ...]


def pow2_floor(n: int) -> int:
    """The largest power of two <= n (n >= 1)."""
    return 1 << (n.bit_length() - 1)


def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class Piece:
    """One message at this rank: ``cnt`` chunks read at ``src`` and/or written at ``dst``."""

    src: Loc
    dst: Loc
    cnt: int


class TBs:
    """Thread blocks of a :class:`ProgramBuilder`, one per (rank, channel, send, recv)."""

    def __init__(self, b: ProgramBuilder) -> None:
        self.b = b
        self._map: dict[tuple[int, int, int, int], TB] = {}

    def get(self, rank: int, send: int = -1, recv: int = -1, channel: int = 0) -> TB:
        key = (rank, channel, send, recv)
        tb = self._map.get(key)
        if tb is None:
            tb = self._map[key] = self.b.threadblock(rank, send=send, recv=recv, channel=channel)
        return tb

    def local(self, rank: int, channel: int = 0) -> TB:
        """A thread block without peers (local copies)."""
        return self.get(rank, -1, -1, channel)


def runs(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Merge (a, b) index pairs into maximal runs where both a and b go up by one: [(a0, b0, length)]."""
    out: list[list[int]] = []
    for a, b in pairs:
        if out and out[-1][0] + out[-1][2] == a and out[-1][1] + out[-1][2] == b:
            out[-1][2] += 1
        else:
            out.append([a, b, 1])
    return [(a, b, m) for a, b, m in out]


def block_pieces(blocks: Sequence[int], kb: int, src: Callable[[int], Loc], dst: Callable[[int], Loc]) -> list[Piece]:
    """Pieces moving whole blocks (``kb`` chunks each), merged where both sides are contiguous.

    ``src(block)`` / ``dst(block)`` give the location of a block's first chunk; both must
    be the same function of the block list on every rank that handles these messages
    (the merging must agree between sender and receiver).
    """
    locs = [(src(q), dst(q)) for q in blocks]
    out: list[Piece] = []
    for (sb, so), (db, do) in locs:
        if out:
            p = out[-1]
            if (p.src[0] is sb and p.dst[0] is db and p.src[1] + p.cnt == so and p.dst[1] + p.cnt == do):
                out[-1] = Piece(p.src, p.dst, p.cnt + kb)
                continue
        out.append(Piece((sb, so), (db, do), kb))
    return out


Deps = Iterable[StepRef | None]


# ------------------------------------------------------------------------------------------- rings
def ring_reduce_scatter(tb: TB | None, pos: int, m: int, pieces: Callable[[int], list[Piece]],
                        deps: Deps = (), local: TB | None = None) -> list[StepRef]:
    """Ring reduce-scatter of ``m`` blocks among ``m`` positions; ``tb`` sends to pos+1, receives from pos-1.

    Block ``q`` ends, fully reduced, at position ``q`` (written to its pieces' ``dst``);
    every position contributes ``src`` of every block. Blocks may be empty (no pieces)
    or several messages. The partial sum of block q starts at position q+1 and makes
    m-1 hops (hop 0 ``s``, middle hops ``rrs``, the last ``rrc`` at q). m == 1: a copy on
    ``local``. Returns the refs of the steps that wrote this position's own block.
    """
    deps = list(deps)
    if m == 1:
        assert local is not None
        return [local.copy(*p.src, *p.dst, p.cnt, deps=deps) for p in pieces(pos) if p.src != p.dst]
    assert tb is not None
    finals: list[StepRef] = []
    for hop in range(m):
        q = (pos - 1 - hop) % m
        for p in pieces(q):
            if hop == 0:
                tb.send(*p.src, p.cnt, deps=deps)
            elif hop < m - 1:
                tb.recv_reduce_send(*p.src, p.cnt, deps=deps)
            else:
                finals.append(tb.recv_reduce_copy(*p.src, *p.dst, p.cnt, deps=deps))
            deps = []
    return finals


def ring_allgather(tb: TB | None, pos: int, m: int, pieces: Callable[[int], list[Piece]],
                   deps: Deps = ()) -> list[StepRef]:
    """Ring allgather of ``m`` blocks: block ``q`` starts at position q (read at ``src``) and is
    written at every other position (``dst``). Empty blocks are skipped. Returns this
    position's receive steps (the last ones complete the gather)."""
    deps = list(deps)
    got: list[StepRef] = []
    if m == 1:
        return got
    assert tb is not None
    for hop in range(m):
        q = (pos - hop) % m
        for p in pieces(q):
            if hop == 0:
                tb.send(*p.src, p.cnt, deps=deps)
            elif hop < m - 1:
                got.append(tb.recv_copy_send(*p.dst, p.cnt, deps=deps))
            else:
                got.append(tb.recv(*p.dst, p.cnt, deps=deps))
            deps = []
    return got


def ring_allreduce(tb: TB | None, pos: int, m: int, pieces: Callable[[int], list[Piece]],
                   deps: Deps = (), local: TB | None = None) -> list[StepRef]:
    """NCCL's fused ring allreduce of ``m`` blocks (``s``, ``rrs``..., ``rrcs``, ``rcs``..., ``r``).

    Every position contributes ``src`` of every block and ends with the result in
    ``dst``. m == 1: copies on ``local``. Returns the refs of the last steps.
    """
    deps = list(deps)
    if m == 1:
        assert local is not None
        return [local.copy(*p.src, *p.dst, p.cnt, deps=deps) for q in range(m) for p in pieces(q)
                if p.src != p.dst] or []
    assert tb is not None
    last: list[StepRef] = []
    for hop in range(2 * m - 1):
        q = (pos - hop) % m
        for p in pieces(q):
            if hop == 0:
                ref = tb.send(*p.src, p.cnt, deps=deps)
            elif hop < m - 1:
                ref = tb.recv_reduce_send(*p.src, p.cnt, deps=deps)
            elif hop == m - 1:
                ref = tb.recv_reduce_copy_send(*p.src, *p.dst, p.cnt, deps=deps)
            elif hop < 2 * m - 2:
                ref = tb.recv_copy_send(*p.dst, p.cnt, deps=deps)
            else:
                ref = tb.recv(*p.dst, p.cnt, deps=deps)
            deps = []
            last = [ref]
    return last


# ------------------------------------------------------------------- recursive doubling / halving
def _fold(m: int, me: int) -> tuple[int, int, int]:
    """The standard non-power-of-two fold: (p, rem, virtual rank or -1 for a folded-away extra rank)."""
    p = pow2_floor(m)
    rem = m - p
    if me < 2 * rem:
        return p, rem, (me // 2 if me % 2 else -1)
    return p, rem, me - rem


def _real(v: int, rem: int) -> int:
    """Member index of virtual rank v."""
    return 2 * v + 1 if v < rem else v + rem


def rd_allreduce(get_tb: Callable[[int], TB], members: Sequence[int], me: int, off: int, cnt: int,
                 src: Buf, out: Buf, deps: Deps = ()) -> list[StepRef]:
    """Recursive-doubling allreduce of chunks off..off+cnt-1 among ``members`` (``me`` = my index).

    log2(p) exchanges of the whole range with the member at distance 1, 2, 4, ...
    (p = largest power of two <= m); the first 2(m-p) members fold pairwise first (the
    even one sends its input to the odd one, which gets the result back at the end).
    ``get_tb(peer)`` gives this rank's thread block towards ``peer`` (send and recv).
    """
    m = len(members)
    p, rem, v = _fold(m, me)
    deps = list(deps)
    if v < 0:  # folded away
        tb = get_tb(members[me + 1])
        tb.send(src, off, cnt, deps=deps)
        return [tb.recv(out, off, cnt)]
    cur, post = src, None
    if me < 2 * rem:
        post = get_tb(members[me - 1])
        deps = [post.recv_reduce_copy(src, off, out, off, cnt, deps=deps)]
        cur = out
    d = 1
    while d < p:
        tb = get_tb(members[_real(v ^ d, rem)])
        tb.send(cur, off, cnt, deps=deps)
        deps = [tb.recv_reduce_copy(cur, off, out, off, cnt)]
        cur = out
        d *= 2
    if post is not None:
        deps = [post.send(out, off, cnt, deps=deps)]
    return deps


def rhd_chunks(m: int) -> int:
    """Chunks :func:`rhd_allreduce` cuts its range into for m members."""
    return pow2_floor(m)


def rhd_allreduce(get_tb: Callable[[int], TB], members: Sequence[int], me: int, off: int,
                  src: Buf, out: Buf, deps: Deps = ()) -> list[StepRef]:
    """Rabenseifner's allreduce of chunks off..off+p-1 (p = :func:`rhd_chunks`) among ``members``.

    Reduce-scatter by distance doubling (step k: exchange half of the current range with
    the member at distance 2^k, keep the lower half when bit k of the virtual rank is 0,
    so the fully reduced chunk of virtual rank v is bitreverse(v)), then allgather by
    distance halving; the first 2(m-p) members fold pairwise before and after.
    """
    m = len(members)
    p, rem, v = _fold(m, me)
    deps = list(deps)
    if v < 0:
        tb = get_tb(members[me + 1])
        tb.send(src, off, p, deps=deps)
        return [tb.recv(out, off, p)]
    cur, post = src, None
    if me < 2 * rem:
        post = get_tb(members[me - 1])
        deps = [post.recv_reduce_copy(src, off, out, off, p, deps=deps)]
        cur = out
    lo, ln = 0, p
    done: list[tuple[TB, int]] = []
    d = 1
    while d < p:
        tb = get_tb(members[_real(v ^ d, rem)])
        half = ln // 2
        keep, give = (lo + half, lo) if v & d else (lo, lo + half)
        tb.send(cur, off + give, half, deps=deps)
        deps = [tb.recv_reduce_copy(cur, off + keep, out, off + keep, half)]
        cur = out
        lo, ln = keep, half
        done.append((tb, give))
        d *= 2
    for tb, give in reversed(done):
        tb.send(out, off + lo, ln, deps=deps)
        deps = [tb.recv(out, off + give, ln)]
        lo, ln = min(lo, give), ln * 2
    if post is not None:
        deps = [post.send(out, off, p, deps=deps)]
    return deps


# ----------------------------------------------------------------------------------------- hosts
def normalize_hosts(nranks: int, hosts: object) -> Hosts | None:
    """Validate ``hosts`` (ranks per host; a partition of 0..nranks-1) and return it as a tuple of
    tuples, or None for a single host (or hosts=None)."""
    if hosts is None:
        return None
    try:
        hs = tuple(tuple(int(r) for r in h) for h in hosts)  # type: ignore[union-attr]
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"hosts must be a sequence of sequences of ranks, got {hosts!r}") from e
    flat = sorted(r for h in hs for r in h)
    if flat != list(range(nranks)) or any(not h for h in hs):
        raise InvalidArgument(f"hosts {hs!r} is not a partition of ranks 0..{nranks - 1} into non-empty hosts")
    return hs if len(hs) > 1 else None


def uniform_hosts(nranks: int, nhosts: int) -> Hosts:
    """nhosts hosts of nranks/nhosts consecutive ranks (the first hosts take one more when uneven)."""
    if not 1 <= nhosts <= nranks:
        raise InvalidArgument(f"cannot place {nranks} ranks on {nhosts} hosts")
    base, extra = divmod(nranks, nhosts)
    out, r = [], 0
    for h in range(nhosts):
        size = base + (1 if h < extra else 0)
        out.append(tuple(range(r, r + size)))
        r += size
    return tuple(out)


class Shape:
    """Hosts x local ranks, uneven shapes included.

    ``hosts[h][l]`` is the rank with local rank l on host h. *Columns* c = 0..Lmax-1
    generalise local ranks to uneven hosts; on host h column c is served by one rank
    (:meth:`member`), the columns of local rank l are :meth:`cols`, and inter-host
    phases of column c run on IR channel :meth:`channel` (a rank serving several columns
    gets them on different channels). Two assignments:

    * ``contiguous=False`` (blocked collectives): column c is local rank c's own column
      (*owned* on host h iff c < L[h]) and local rank ``c % L[h]`` relays it on smaller
      hosts, so local rank l serves l, l + L[h], ...; channel ``c // Lmin``.
    * ``contiguous=True`` (allreduce): local rank l serves the contiguous columns c with
      ``c * L[h] // Lmax == l`` (so one message carries them all); channel
      ``c % ceil(Lmax / Lmin)``.

    On uniform shapes both give column l to local rank l, on channel 0.
    """

    def __init__(self, hosts: Hosts, contiguous: bool = False) -> None:
        self.hosts = hosts
        self.contiguous = contiguous
        self.H = len(hosts)
        self.L = [len(h) for h in hosts]
        self.Lmax, self.Lmin = max(self.L), min(self.L)
        self.where = {r: (h, l) for h, ranks in enumerate(hosts) for l, r in enumerate(ranks)}
        self.uniform = self.Lmax == self.Lmin

    @property
    def nranks(self) -> int:
        return sum(self.L)

    @property
    def inter_channels(self) -> int:
        """IR channels the inter-host phases use."""
        return -(-self.Lmax // self.Lmin)

    def cols(self, h: int, l: int) -> range:
        if self.contiguous:
            lo = -(-l * self.Lmax // self.L[h])
            hi = -(-(l + 1) * self.Lmax // self.L[h])
            return range(lo, hi)
        return range(l, self.Lmax, self.L[h])

    def member(self, h: int, c: int) -> int:
        if self.contiguous:
            return self.hosts[h][c * self.L[h] // self.Lmax]
        return self.hosts[h][c % self.L[h]]

    def owns(self, h: int, c: int) -> bool:
        return c < self.L[h]

    def channel(self, c: int) -> int:
        return c % self.inter_channels if self.contiguous else c // self.Lmin

    def column_blocks(self, h: int, l: int) -> list[int]:
        """Ranks (blocks) whose data local rank l of host h handles across hosts: the owners of its columns."""
        return sorted(self.hosts[g][c] for c in self.cols(h, l) for g in range(self.H) if self.owns(g, c))


def host_shape(nranks: int, hosts: object, *, uniform: bool = False, what: str = "this algorithm",
               contiguous: bool = False) -> Shape:
    """A :class:`Shape` for ``hosts``; InvalidArgument saying why when it cannot serve ``what``."""
    hs = normalize_hosts(nranks, hosts)
    if hs is None:
        raise InvalidArgument(f"{what} needs ranks on at least 2 hosts (hosts={hosts!r}: one host); "
                              "use a flat algorithm on one host")
    shape = Shape(hs, contiguous)
    if uniform and not shape.uniform:
        raise InvalidArgument(f"{what} needs the same number of ranks on every host, got {shape.L}")
    return shape


def reason(fn: Callable[[], object]) -> str | None:
    """The InvalidArgument message ``fn()`` raises, or None when it does not."""
    try:
        fn()
    except InvalidArgument as e:
        return str(e)
    return None


__all__ = ["Piece", "TBs", "Shape", "runs", "block_pieces", "ring_reduce_scatter", "ring_allgather",
           "ring_allreduce", "rd_allreduce", "rhd_allreduce", "rhd_chunks", "normalize_hosts",
           "uniform_hosts", "host_shape", "pow2_floor", "is_pow2", "reason"]
