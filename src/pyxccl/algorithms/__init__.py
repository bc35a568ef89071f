"""The algorithm catalogue: one module per ``<collective>_<algorithm>.py``.

Modules are discovered automatically: a module named ``<collective>_<name>`` (the
collective as spelled in :data:`pyxccl.ir.program.COLLECTIVES`) with a
``build(nranks, *, nchannels=1, root=0) -> Program`` function is an algorithm. It may
define ``supports(nranks) -> bool`` (default: every nranks >= 1), ``PRIORITY``
(lower is preferred by :func:`default`; default 100) and ``MIN_SLOTS`` (the FIFO
slots per connection it needs, default 1; the executor must provide at least that). Adding an algorithm is adding
one file.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..ir.program import COLLECTIVES, Program
from ..ir.verify import ROOTED


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm."""

    collective: str
    name: str
    build: Callable[..., Program]
    supports: Callable[[int], bool]
    rooted: bool
    priority: int = 100
    min_slots: int = 1
    """FIFO slots per connection the program needs to be deadlock-free (verified)."""


def _all_nranks(nranks: int) -> bool:
    return nranks >= 1


def _discover() -> dict[tuple[str, str], Algorithm]:
    found: list[Algorithm] = []
    for info in pkgutil.iter_modules(__path__):
        coll, sep, name = info.name.partition("_")
        if not sep or coll not in COLLECTIVES or info.ispkg:
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        build = getattr(mod, "build", None)
        if not callable(build):
            continue
        found.append(Algorithm(coll, name, build, getattr(mod, "supports", _all_nranks),
                               coll in ROOTED, int(getattr(mod, "PRIORITY", 100)),
                               int(getattr(mod, "MIN_SLOTS", 1))))
    found.sort(key=lambda a: (a.collective, a.priority, a.name))
    return {(a.collective, a.name): a for a in found}


#: (collective, name) -> Algorithm, in preference order per collective
REGISTRY: dict[tuple[str, str], Algorithm] = _discover()


def names(collective: str) -> list[str]:
    """The algorithm names registered for ``collective``, preferred first."""
    return [name for (coll, name) in REGISTRY if coll == collective]


def get(collective: str, name: str) -> Algorithm:
    """The algorithm ``name`` of ``collective``; InvalidArgument lists the known ones."""
    algo = REGISTRY.get((collective, name))
    if algo is None:
        if collective not in COLLECTIVES:
            raise InvalidArgument(f"unknown collective {collective!r} (known: {', '.join(sorted(COLLECTIVES))})")
        raise InvalidArgument(f"unknown {collective} algorithm {name!r} (known: {', '.join(names(collective)) or 'none'})")
    return algo


def default(collective: str, nranks: int) -> Algorithm:
    """The preferred algorithm of ``collective`` that supports ``nranks`` ranks."""
    for name in names(collective):
        algo = REGISTRY[(collective, name)]
        if algo.supports(nranks):
            return algo
    raise InvalidArgument(f"no {collective} algorithm supports nranks={nranks} "
                          f"(known: {', '.join(names(collective)) or 'none'})")


def program(collective: str, name: str, nranks: int, nchannels: int = 1, root: int = 0) -> Program:
    """The cached Program of algorithm ``name`` (shared: callers must not modify it)."""
    algo = get(collective, name)
    if not algo.supports(nranks):
        raise InvalidArgument(f"{collective} algorithm {name!r} does not support nranks={nranks}")
    if nchannels < 1:
        raise InvalidArgument(f"nchannels must be >= 1, got {nchannels}")
    if algo.rooted:
        if not 0 <= root < nranks:
            raise InvalidArgument(f"root {root} out of range for nranks={nranks}")
    else:
        root = 0
    return _program(collective, name, nranks, nchannels, root)


@functools.lru_cache(maxsize=256)
def _program(collective: str, name: str, nranks: int, nchannels: int, root: int) -> Program:
    return REGISTRY[(collective, name)].build(nranks, nchannels=nchannels, root=root)


__all__ = ["Algorithm", "REGISTRY", "default", "get", "names", "program"]
program.cache_clear = _program.cache_clear  # type: ignore[attr-defined]
