"""The tuner: which algorithm serves a call (placeholder until the selection rules land)."""

from __future__ import annotations

from .. import algorithms


def select(collective: str, nranks: int, nbytes: int, hosts: tuple[tuple[int, ...], ...] | None = None,
           spec: str = "") -> str:
    """The algorithm name for one call: ``nbytes`` in nccl-tests' size convention, ``hosts`` the ranks per host."""
    return algorithms.default(collective, nranks).name
