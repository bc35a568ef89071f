"""The algorithm catalogue: one module per ``<collective>_<algorithm>.py``.

Modules are discovered automatically: a module named ``<collective>_<name>`` (the
collective as spelled in :data:`pyxccl.ir.program.COLLECTIVES`) with a
``build(nranks, *, nchannels=1, root=0) -> Program`` function is an algorithm. It may
define ``supports(nranks) -> bool`` (default: every nranks >= 1), ``PRIORITY``
(lower is preferred by :func:`default`; default 100) and ``MIN_SLOTS`` (the FIFO
slots per connection it needs, default 1; the executor must provide at least that). Adding an algorithm is adding
one file.

Host-aware algorithms (the hierarchical ones) take the ranks of each host:
``build(nranks, *, nchannels=1, root=0, hosts=None)`` where ``hosts`` is a tuple of
tuples of ranks per host (None: all ranks on one host), and ``supports(nranks, hosts)``.
They may also define ``unsupported(nranks, hosts) -> str | None`` saying why they
cannot serve a shape (:meth:`Algorithm.unsupported`; otherwise a generic message is
derived from ``supports``). A module is host-aware when its ``build`` accepts
``hosts``; the others never see it (their programs are cached without it).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..ir.program import COLLECTIVES, Program
from ..ir.verify import ROOTED
from ._common import Hosts, normalize_hosts


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm."""

    collective: str
    name: str
    build: Callable[..., Program]
    supports_fn: Callable[..., bool]
    rooted: bool
    priority: int = 100
    min_slots: int = 1
    """FIFO slots per connection the program needs to be deadlock-free (verified)."""
    host_aware: bool = False
    """``build`` takes ``hosts`` (the ranks of each host)."""
    reason_fn: Callable[..., "str | None"] | None = None
    summary: str = ""
    """The first line of the module's docstring."""
    claims: str = ""
    """The module docstring's "Supports ..." sentence: the rank counts / shapes it claims."""

    def unsupported(self, nranks: int, hosts: "Hosts | None" = None) -> str | None:
        """Why this algorithm cannot serve ``nranks`` ranks on ``hosts`` (None: it can)."""
        if nranks < 1:
            return f"nranks must be >= 1, got {nranks}"
        try:
            hosts = normalize_hosts(nranks, hosts)
        except InvalidArgument as e:
            return str(e)
        if self.reason_fn is not None:
            return self.reason_fn(nranks, hosts)
        if self.supports(nranks, hosts):
            return None
        shape = f"nranks={nranks}" + (f" on hosts {[len(h) for h in hosts]}" if hosts else "")
        return f"{self.collective} algorithm {self.name!r} does not support {shape}"

    def supports(self, nranks: int, hosts: "Hosts | None" = None) -> bool:
        """Whether this algorithm can serve ``nranks`` ranks (on ``hosts``: ranks per host; malformed: False)."""
        if self.host_aware:
            try:
                hosts = normalize_hosts(nranks, hosts)
            except InvalidArgument:
                return False
            return bool(self.supports_fn(nranks, hosts))
        return bool(self.supports_fn(nranks))


def _all_nranks(nranks: int, hosts: object = None) -> bool:
    return nranks >= 1


def _takes_hosts(fn: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "hosts" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _claims(doc: str) -> str:
    """The "Supports ..." sentence of a module docstring, on one line."""
    text = " ".join(doc.split())
    i = text.find("Supports")
    if i < 0:
        return ""
    j = text.find(". ", i)
    return text[i:j + 1 if j >= 0 else len(text)]


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
        host_aware = _takes_hosts(build)
        supports = getattr(mod, "supports", _all_nranks)
        if host_aware and not _takes_hosts(supports) and len(inspect.signature(supports).parameters) < 2:
            plain = supports
            supports = lambda nranks, hosts=None, _f=plain: _f(nranks)  # noqa: E731
        doc = mod.__doc__ or ""
        found.append(Algorithm(coll, name, build, supports, coll in ROOTED, int(getattr(mod, "PRIORITY", 100)),
                               int(getattr(mod, "MIN_SLOTS", 1)), host_aware, getattr(mod, "unsupported", None),
                               doc.strip().split("\n")[0], _claims(doc)))
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


def default(collective: str, nranks: int, hosts: "Hosts | None" = None) -> Algorithm:
    """The preferred algorithm of ``collective`` that supports ``nranks`` ranks (on ``hosts``)."""
    for name in names(collective):
        algo = REGISTRY[(collective, name)]
        if algo.supports(nranks, hosts):
            return algo
    raise InvalidArgument(f"no {collective} algorithm supports nranks={nranks} "
                          f"(known: {', '.join(names(collective)) or 'none'})")


def program(collective: str, name: str, nranks: int, nchannels: int = 1, root: int = 0,
            hosts: "Hosts | None" = None) -> Program:
    """The cached Program of algorithm ``name`` (shared: callers must not modify it).

    ``hosts``: the ranks of each host (tuple of tuples, hosts in any order; None or a
    single host: all ranks on one host). Only host-aware algorithms use it; an
    algorithm that cannot serve the shape raises InvalidArgument saying why.
    """
    algo = get(collective, name)
    hosts = normalize_hosts(nranks, hosts)
    why = algo.unsupported(nranks, hosts)
    if why is not None:
        raise InvalidArgument(why if algo.reason_fn is not None else
                              f"{collective} algorithm {name!r} does not support nranks={nranks}")
    if nchannels < 1:
        raise InvalidArgument(f"nchannels must be >= 1, got {nchannels}")
    if algo.rooted:
        if not 0 <= root < nranks:
            raise InvalidArgument(f"root {root} out of range for nranks={nranks}")
    else:
        root = 0
    return _program(collective, name, nranks, nchannels, root, hosts if algo.host_aware else None)


@functools.lru_cache(maxsize=256)
def _program(collective: str, name: str, nranks: int, nchannels: int, root: int, hosts: "Hosts | None") -> Program:
    algo = REGISTRY[(collective, name)]
    if algo.host_aware:
        return algo.build(nranks, nchannels=nchannels, root=root, hosts=hosts)
    return algo.build(nranks, nchannels=nchannels, root=root)


__all__ = ["Algorithm", "REGISTRY", "default", "get", "names", "program", "normalize_hosts"]
program.cache_clear = _program.cache_clear  # type: ignore[attr-defined]
