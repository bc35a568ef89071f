"""The tuner: which algorithm serves a call.

:func:`select` decides, in this order:

1. ``PYXCCL_ALGO`` (``spec``), when it names algorithms for the call's collective
   (:mod:`.spec`): the first listed algorithm whose size range holds the call and that
   can serve the shape; if it names some for this size but none can serve the shape,
   InvalidArgument says so and names the variable (never a silent substitute);
2. the rule table (:mod:`.rules`): the lowest-priority rule for the collective whose
   size range and rank predicate hold and whose algorithm can serve the shape, minus
   algorithms the spec excludes (``^name``);
3. the registry's preferred algorithm for the shape.

A per-call ``algorithm=`` bypasses the tuner (the communicator checks it directly).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import algorithms
from ..errors import InvalidArgument
from .rules import RULES, Rule, predicate
from .spec import Spec, parse

Hosts = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Choice:
    """What :func:`explain` found: the algorithm and why."""

    algorithm: str
    source: str
    """"PYXCCL_ALGO", "rule" or "default"."""
    rule: Rule | None = None


def explain(collective: str, nranks: int, nbytes: int, hosts: Hosts | None = None, spec: str = "",
            rules: tuple[Rule, ...] = RULES) -> Choice:
    """The algorithm for one call and where the choice came from (see the module docstring)."""
    hosts = algorithms.normalize_hosts(nranks, hosts)
    parsed: Spec = parse(spec)
    items = parsed.get(collective)
    if items:
        wanted = [it for it in items if not it.exclude and it.covers(nbytes)]
        why = []
        for it in wanted:
            reason = algorithms.get(collective, it.algorithm).unsupported(nranks, hosts)
            if reason is None:
                return Choice(it.algorithm, "PYXCCL_ALGO")
            why.append(f"{it.algorithm}: {reason}")
        if wanted:
            raise InvalidArgument(
                f"PYXCCL_ALGO={spec!r} selects {collective} algorithm "
                f"{' or '.join(it.algorithm for it in wanted)} for {nbytes} bytes on {nranks} ranks"
                f"{f' on {len(hosts)} hosts' if hosts else ''}, but it cannot serve this call ({'; '.join(why)}); "
                "change PYXCCL_ALGO or pass algorithm= to the call")
    excluded = {it.algorithm for it in items or () if it.exclude}
    best: Rule | None = None
    for rule in rules:
        if (rule.collective != collective or rule.algorithm in excluded or not rule.covers(nbytes)
                or (best is not None and rule.priority >= best.priority)):
            continue
        algo = algorithms.REGISTRY.get((collective, rule.algorithm))
        if algo is None or not predicate(rule.ranks)(nranks, hosts) or not algo.supports(nranks, hosts):
            continue
        best = rule
    if best is not None:
        return Choice(best.algorithm, "rule", best)
    for name in algorithms.names(collective):
        if name not in excluded and algorithms.REGISTRY[(collective, name)].supports(nranks, hosts):
            return Choice(name, "default")
    if excluded:
        raise InvalidArgument(f"PYXCCL_ALGO={spec!r} excludes every {collective} algorithm that supports "
                              f"{nranks} ranks")
    return Choice(algorithms.default(collective, nranks, hosts).name, "default")


def select(collective: str, nranks: int, nbytes: int, hosts: Hosts | None = None, spec: str = "") -> str:
    """The algorithm name for one call: ``nbytes`` in nccl-tests' size convention, ``hosts`` the ranks per
    host (None: one host), ``spec`` the PYXCCL_ALGO string."""
    return explain(collective, nranks, nbytes, hosts, spec).algorithm


__all__ = ["Choice", "RULES", "Rule", "explain", "parse", "select"]
