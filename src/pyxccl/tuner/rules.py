"""Selection rules as data: (collective, algorithm, rank predicate, size range, priority).

The default table below is what :func:`pyxccl.tuner.select` consults when neither the
call (``algorithm=``) nor ``PYXCCL_ALGO`` names an algorithm. For one call it keeps
the rules of the call's collective whose size range holds the call's size (nccl-tests'
convention: the whole buffer for allreduce/broadcast/reduce, nranks x count for the
others) and whose rank predicate holds, drops the algorithms that cannot serve the
shape (e.g. a hierarchical one on one host), and picks the lowest priority (ties:
table order). When no rule is left, the registry's preferred algorithm serves.

Rank predicates (:func:`predicate`) are small expressions over ``n`` (ranks) and
``hosts`` (number of hosts), joined with ``&``: ``any``, ``pow2`` (n is a power of
two), ``n>=8``, ``n<=4``, ``hosts>=2``, ``hosts==1``, ``uniform`` (every host has as
many ranks). The sizes and orders below come from benchmarks/algorithms.py on shared
memory (2, 4 and 8 ranks) and on two emulated hosts joined by a 1 Gbit/s link; see the
closing note of docs/algorithms.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError

KiB, MiB = 1 << 10, 1 << 20
MAX = None  # open upper end of a size range


@dataclass(frozen=True)
class Rule:
    """Use ``algorithm`` for ``collective`` on shapes where ``ranks`` holds, for lo <= nbytes <= hi."""

    collective: str
    algorithm: str
    ranks: str = "any"
    lo: int = 0
    hi: int | None = MAX
    priority: int = 100

    def size_text(self) -> str:
        return f"{fmt_size(self.lo)}-{'max' if self.hi is None else fmt_size(self.hi)}"

    def covers(self, nbytes: int) -> bool:
        return self.lo <= nbytes and (self.hi is None or nbytes <= self.hi)


#: the default selection table (edit to retune; `pyxccl plans` prints it). Measured with
#: benchmarks/algorithms.py: one host = 2, 4 and 8 ranks over shm (16 idle cores); several
#: hosts = 2 network namespaces x 2 ranks joined by a 1 Gbit/s link (docs/algorithms.md).
RULES: tuple[Rule, ...] = (
    # allreduce: few steps while latency dominates, the ring once bandwidth does; across hosts
    # the two-level algorithm keeps 2(H-1)/(H L) of the buffer per rank on the slow link
    # (the flat ring: 2(n-1)/n through every host boundary it crosses)
    Rule("allreduce", "recursive_doubling", "hosts==1", 0, 128 * KiB, 10),
    Rule("allreduce", "ring", "hosts==1", 128 * KiB + 1, MAX, 20),
    Rule("allreduce", "recursive_doubling", "hosts>=2", 0, 64 * KiB, 10),
    Rule("allreduce", "hierarchical", "hosts>=2", 64 * KiB + 1, MAX, 20),
    Rule("allreduce", "ring", "any", 0, MAX, 90),
    # allgather: the ring is hard to beat on shm below 8 ranks; across hosts MiCS' hierarchy
    Rule("allgather", "recursive_doubling", "hosts==1 & n>=8", 0, 256 * KiB, 10),
    Rule("allgather", "recursive_doubling", "hosts>=2", 0, 16 * KiB, 10),
    Rule("allgather", "hierarchical", "hosts>=2", 16 * KiB + 1, MAX, 20),
    Rule("allgather", "ring", "any", 0, MAX, 90),
    # reduce-scatter
    Rule("reducescatter", "recursive_halving", "hosts==1 & n>=8", 0, 256 * KiB, 10),
    Rule("reducescatter", "recursive_halving", "hosts>=2", 0, 16 * KiB, 10),
    Rule("reducescatter", "hierarchical", "hosts>=2", 16 * KiB + 1, MAX, 20),
    Rule("reducescatter", "ring", "any", 0, MAX, 90),
    # rooted: back-to-back calls pipeline through the chain (it won at every measured size)
    Rule("broadcast", "chain", "any", 0, MAX, 90),
    Rule("reduce", "chain", "any", 0, MAX, 90),
    # all-to-all: across hosts aggregate first (fewer, larger inter-host messages)
    Rule("alltoall", "two_step", "hosts>=2 & uniform", 0, MAX, 20),
    Rule("alltoall", "direct", "any", 0, MAX, 30),
    Rule("alltoall", "pairwise", "any", 0, MAX, 90),
    Rule("gather", "direct", "any", 0, MAX, 90),
    Rule("scatter", "direct", "any", 0, MAX, 90),
    Rule("barrier", "dissemination", "any", 0, MAX, 90),
)


# ------------------------------------------------------------------------------------ predicates
_ATOM = re.compile(r"^(n|hosts)\s*(>=|<=|==|>|<)\s*(\d+)$")
Pred = Callable[[int, "tuple[tuple[int, ...], ...] | None"], bool]


def _atom(text: str) -> Pred:
    t = text.strip()
    if t == "any":
        return lambda n, hosts: True
    if t == "pow2":
        return lambda n, hosts: n >= 1 and n & (n - 1) == 0
    if t == "uniform":
        return lambda n, hosts: hosts is None or len({len(h) for h in hosts}) == 1
    m = _ATOM.match(t)
    if not m:
        raise ConfigError(f"rank predicate {text!r}: expected any, pow2, uniform, n<op>K or hosts<op>K")
    what, op, k = m.group(1), m.group(2), int(m.group(3))
    cmp = {">=": int.__ge__, "<=": int.__le__, "==": int.__eq__, ">": int.__gt__, "<": int.__lt__}[op]
    if what == "n":
        return lambda n, hosts: cmp(n, k)
    return lambda n, hosts: cmp(1 if hosts is None else len(hosts), k)


def predicate(text: str) -> Pred:
    """The rank predicate ``text`` (atoms joined with ``&``) as a function of (nranks, hosts)."""
    atoms = [_atom(a) for a in text.split("&")]
    return lambda n, hosts: all(a(n, hosts) for a in atoms)


# ----------------------------------------------------------------------------------------- sizes
_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b?)$", re.I)


def parse_size(text: str) -> int | None:
    """``8192``, ``8K``, ``64KiB``, ``1M``, ``max`` → bytes (None for max); ConfigError otherwise."""
    t = text.strip()
    if t.lower() in ("max", "inf", ""):
        return None
    m = _SIZE.match(t)
    if not m:
        raise ConfigError(f"size {text!r}: expected a number of bytes with an optional K/M/G suffix, or max")
    mult = {"": 1, "k": KiB, "m": MiB, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(m.group(1)) * mult


def fmt_size(n: int) -> str:
    for unit, mult in (("G", 1 << 30), ("M", MiB), ("K", KiB)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)
