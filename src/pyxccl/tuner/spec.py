"""PYXCCL_ALGO: NCCL-style algorithm choices, parsed once per string and cached.

Entries are separated by ``;``. Each entry is ``<collective>:<items>`` or
``<collective>=<items>`` (the same), items separated by ``,``; an item is an algorithm
name, optionally with a size range ``name:lo-hi`` (bytes, K/M/G suffixes, ``max``),
or ``^name`` to exclude an algorithm from the default selection. An entry without a
collective (``ring``, ``^tree``) applies to every collective that has that algorithm.

    allreduce:tree;allgather:ring
    allreduce=recursive_doubling:0-8192,ring:8193-max
    allreduce:hierarchical,ring          first that can serve the call
    allreduce:^allpairs                  never pick allpairs by default
    ring                                 every collective that has a ring

Unknown collectives or algorithm names, and malformed sizes, raise ConfigError when
the string is parsed (at the first call).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .. import algorithms
from ..errors import ConfigError
from ..ir.program import COLLECTIVES
from .rules import parse_size

#: other spellings of the collectives (nccl-tests' and the communicator's method names)
ALIASES = {"all_reduce": "allreduce", "all_gather": "allgather", "reduce_scatter": "reducescatter",
           "all_to_all": "alltoall", "alltoall": "alltoall", "bcast": "broadcast"}


@dataclass(frozen=True)
class Item:
    algorithm: str
    lo: int = 0
    hi: int | None = None
    exclude: bool = False

    def covers(self, nbytes: int) -> bool:
        return self.lo <= nbytes and (self.hi is None or nbytes <= self.hi)


Spec = dict  # collective -> tuple[Item, ...]


def _collective(text: str, spec: str) -> str:
    t = text.strip().lower()
    t = ALIASES.get(t, t)
    if t not in COLLECTIVES:
        raise ConfigError(f"PYXCCL_ALGO={spec!r}: unknown collective {text.strip()!r} "
                          f"(known: {', '.join(sorted(COLLECTIVES))})")
    return t


def _item(text: str, spec: str) -> tuple[str, Item]:
    t = text.strip()
    exclude = t.startswith("^")
    if exclude:
        t = t[1:].strip()
    name, sep, rng = t.partition(":")
    name = name.strip().lower()
    lo, hi = 0, None
    if sep:
        a, dash, b = rng.partition("-")
        if not dash:
            raise ConfigError(f"PYXCCL_ALGO={spec!r}: size range {rng!r} of {name!r} must be lo-hi (e.g. 0-8192, 8K-max)")
        lo_, hi = parse_size(a), parse_size(b)
        lo = lo_ or 0
        if hi is not None and hi < lo:
            raise ConfigError(f"PYXCCL_ALGO={spec!r}: empty size range {rng!r} of {name!r}")
    if not name:
        raise ConfigError(f"PYXCCL_ALGO={spec!r}: empty algorithm name in {text!r}")
    return name, Item(name, lo, hi, exclude)


@functools.lru_cache(maxsize=64)
def _parse(spec: str) -> tuple[tuple[str, tuple[Item, ...]], ...]:
    out: dict[str, list[Item]] = {}
    for entry in spec.split(";"):
        if not entry.strip():
            continue
        cut = [i for i in (entry.find(":"), entry.find("=")) if i >= 0]
        colls: list[str] | None = None
        items = entry
        if cut:
            head = entry[:min(cut)].strip().lower()
            head = ALIASES.get(head, head)
            if head in COLLECTIVES:
                colls, items = [head], entry[min(cut) + 1:]
            elif "," not in head and head.lstrip("^").strip() not in {n for (_, n) in algorithms.REGISTRY}:
                _collective(head, spec)  # raises: neither a collective nor an algorithm
        # colls None: no collective named, the items apply to every collective with that algorithm
        for text in items.split(","):
            if not text.strip():
                continue
            name, item = _item(text, spec)
            targets = colls if colls is not None else [c for c in COLLECTIVES if (c, name) in algorithms.REGISTRY]
            if not targets:
                raise ConfigError(f"PYXCCL_ALGO={spec!r}: no collective has an algorithm {name!r}")
            for c in targets:
                if (c, name) not in algorithms.REGISTRY:
                    raise ConfigError(f"PYXCCL_ALGO={spec!r}: unknown {c} algorithm {name!r} "
                                      f"(known: {', '.join(algorithms.names(c)) or 'none'})")
                out.setdefault(c, []).append(item)
    return tuple((c, tuple(v)) for c, v in out.items())


def parse(spec: str) -> Spec:
    """``spec`` as {collective: (Item, ...)} (cached; ConfigError on unknown names)."""
    return dict(_parse(spec or ""))
